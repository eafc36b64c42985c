"""A study's specification: what is compared, under which protocol, and the runs that follow from it.

A spec is plain data (a study's YAML, composed by Hydra): optimizers, problems and the
protocol's settings, each with a documented default (docs/studies.md). From it follow, with no
randomness left to chance:

- the **tuning design** of each optimizer on each problem: ``budget`` settings drawn from its
  search space (declared by the optimizer, :mod:`optlab.spaces`, or replaced by the study);
- the **seeds**, derived per axis from the study's ``seed``: the ``seeds`` tuning repeats and
  the ``final_seeds`` final repeats are the same for every optimizer and every setting (common
  random numbers: repeat j sees the same initial point, minibatch order and gradient noise
  whichever optimizer runs), and tuning and final seeds never overlap;
- each **run**'s key, a hash of everything that determines its result, under which it is
  stored: a run found in the study's store is reused, never run twice.

The spec's own hash (of the protocol, not of the launcher or the tracking) names the study.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: what a study reads from its config, with the defaults a preset may change
DEFAULTS = {
    "name": "study",
    "optimizers": ["sgd", "adam"],
    "problems": ["seed_linear"],
    "budget": 8,
    "search": "grid",
    "seeds": 2,
    "final_seeds": 10,
    "score": "final",
    "one_shot": True,
    "ladder": [10.0, 3.0, 1.0, 0.5],
    "space": {},
    "seed": 0,
    "dtype": "float32",
    "runs_per_job": 256,
    "profile": "steps",
}
SEARCHES = ("grid", "random")
SCORES = ("final", "best")
PROFILE_COSTS = ("steps", "examples", "seconds")
ARMS = ("tuning", "final", "defaults")
#: a tuned setting this close to an end of its range (a fraction of the range, in its own scale) is on the edge
EDGE = 0.05
#: bumped when a run's record changes meaning, so that older stored runs are not reused
RECORD_VERSION = 1


class SpecError(ValueError):
    """A study's config that cannot be run: the message names the field and what it allows."""


@dataclass(frozen=True)
class ProblemSpec:
    """One problem of a study: its registry name, its arguments, and the target it is timed to."""

    name: str
    args: dict
    metric: str
    direction: str
    target: float

    @property
    def label(self) -> str:
        if not self.args:
            return self.name
        return self.name + "(" + ", ".join(f"{k}={v}" for k, v in sorted(self.args.items())) + ")"

    def config(self) -> dict:
        return {"name": self.name, **self.args}


@dataclass
class Spec:
    name: str
    optimizers: list[str]
    problems: list[ProblemSpec]
    budget: int
    search: str
    seeds: int
    final_seeds: int
    score: str
    one_shot: bool
    ladder: list[float]
    space: dict[str, dict[str, str]] = field(default_factory=dict)
    seed: int = 0
    dtype: str = "float32"
    runs_per_job: int = 256
    profile: str = "steps"

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, conf: dict) -> Spec:
        """Validate a study's config (a plain dict); :class:`SpecError` names the first bad field."""
        from ... import optimizers
        from ...spaces import search_space

        unknown = sorted(set(conf) - set(DEFAULTS))
        if unknown:
            from ...names import did_you_mean

            hint = did_you_mean(unknown[0], list(DEFAULTS))
            raise SpecError(f"study: unknown setting {unknown[0]!r}{hint}; the settings are {', '.join(DEFAULTS)}")
        c = {**DEFAULTS, **{k: v for k, v in conf.items() if v is not None}}
        name = c["name"]
        if not isinstance(name, str) or not name.strip() or any(ch in name for ch in "/\\ "):
            raise SpecError(f"study: `name` must be a word (letters, digits, - and _); received {name!r}")
        names = _names("optimizers", c["optimizers"])
        chosen = []
        for opt in names:
            try:
                chosen.append(optimizers.registry.canonical(opt))
            except (KeyError, ValueError) as error:
                raise SpecError(f"study: optimizers: {_message(error)}") from None
        if len(set(chosen)) < len(chosen):
            raise SpecError(f"study: `optimizers` lists one twice: {chosen}")
        entries = _nonempty("problems", c["problems"], " (python -m optlab.problems lists them)")
        probs = [_problem(entry) for entry in entries]
        if len({p.label for p in probs}) < len(probs):
            raise SpecError("study: `problems` lists one twice")
        budget = _int("budget", c["budget"], 1)
        seeds = _int("seeds", c["seeds"], 1)
        final_seeds = _int("final_seeds", c["final_seeds"], 2, "the report's intervals and rank tests need two seeds")
        search = _choice("search", c["search"], SEARCHES)
        score = _choice("score", c["score"], SCORES)
        profile = _choice("profile", c["profile"], PROFILE_COSTS)
        if not isinstance(c["one_shot"], bool):
            raise SpecError(f"study: `one_shot` (the defaults arm) must be true or false; got {c['one_shot']!r}")
        ladder = _list("ladder", c["ladder"])
        if not ladder or not all(_number(f) and 0 < f < math.inf for f in ladder):
            raise SpecError(f"study: `ladder` must list factors > 0 (1 is the declared target); received {ladder!r}")
        ladder = sorted({float(f) for f in ladder} | {1.0}, reverse=True)
        space = c["space"] or {}
        if not isinstance(space, dict):
            raise SpecError(f"study: `space` must map optimizers to {{hyperparameter: space}}; received {space!r}")
        for opt, override in space.items():
            if opt not in chosen:
                raise SpecError(f"study: `space` names {opt!r}, not one of the optimizers ({', '.join(chosen)})")
            if not isinstance(override, dict) or not override:
                raise SpecError(f"study: space.{opt} must map hyperparameters to spaces; received {override!r}")
        for opt in chosen:
            try:
                search_space(optimizers.registry.get(opt), space.get(opt))
            except ValueError as error:
                raise SpecError(f"study: space: {error}") from None
        dtype = _choice("dtype", c["dtype"], ("float32", "float64"))
        return cls(
            name=name,
            optimizers=chosen,
            problems=probs,
            budget=budget,
            search=search,
            seeds=seeds,
            final_seeds=final_seeds,
            score=score,
            one_shot=c["one_shot"],
            ladder=ladder,
            space={k: {h: str(v) for h, v in o.items()} for k, o in space.items()},
            seed=_int("seed", c["seed"], 0),
            dtype=dtype,
            runs_per_job=_int("runs_per_job", c["runs_per_job"], 1),
            profile=profile,
        )

    def protocol(self) -> dict:
        """Everything that decides the study's result, as plain data (what its hash is of)."""
        data = asdict(self)
        data.pop("runs_per_job")  # how runs are grouped into jobs changes no result
        data["record_version"] = RECORD_VERSION
        # the spaces tuned over, as declared by the optimizers (a plugin's or optlab's may change) or replaced
        data["spaces"] = {opt: {n: str(v) for n, v in self.spaces(opt).items()} for opt in self.optimizers}
        return data

    @property
    def digest(self) -> str:
        text = json.dumps(self.protocol(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def study_id(self) -> str:
        """The study's name and hash: ``quick-1a2b3c4d`` (its folder, its MLflow tag)."""
        return f"{self.name}-{self.digest}"

    # -- the design ------------------------------------------------------------------------
    def spaces(self, optimizer: str) -> dict:
        from ... import optimizers
        from ...spaces import search_space

        return search_space(optimizers.registry.get(optimizer), self.space.get(optimizer))

    def settings(self, optimizer: str, problem: ProblemSpec) -> list[dict]:
        """The ``budget`` hyperparameter settings tried for ``optimizer`` on ``problem``.

        ``grid``: in one dimension ``budget`` values evenly spread over the range in its own
        scale (log-spaced for a step size), both ends included; in more dimensions a scrambled
        Halton sequence (a quasi-random design that fills the box evenly). ``random``:
        independent uniform draws. The draws are seeded per optimizer and problem from the
        study's seed, so every optimizer gets its own design and reruns get the same one.
        """
        spaces = self.spaces(optimizer)
        names = list(spaces)
        rng = np.random.default_rng(self._stream("design", optimizer, problem.label))
        if self.search == "grid" and len(names) == 1:
            return [{names[0]: v} for v in spaces[names[0]].grid(self.budget)]
        if self.search == "grid":
            from scipy.stats import qmc

            units = qmc.Halton(d=len(names), scramble=True, seed=rng).random(self.budget)
        else:
            units = rng.random((self.budget, len(names)))
        return [{n: spaces[n].from_unit(float(u)) for n, u in zip(names, row)} for row in units]

    def tuning_seeds(self) -> list[int]:
        return [self._seed("tuning", j) for j in range(self.seeds)]

    def final_seed_list(self) -> list[int]:
        return [self._seed("final", j) for j in range(self.final_seeds)]

    def _stream(self, *axis) -> list[int]:
        return [self.seed, *(int.from_bytes(hashlib.sha256(str(a).encode()).digest()[:4], "little") for a in axis)]

    def _seed(self, arm: str, repeat: int) -> int:
        """Repeat ``repeat``'s seed in ``arm``: derived from the study's seed, the same for every
        optimizer and setting (common random numbers), different between tuning and final."""
        return int(np.random.SeedSequence(self._stream(arm, repeat)).generate_state(1)[0] % (2**31))

    def run(self, arm: str, optimizer: str, problem: ProblemSpec, hparams: dict, seed: int) -> dict:
        """One run as plain data, with its key (a hash of what determines its result)."""
        what = {
            "problem": problem.config(),
            "optimizer": {"name": optimizer, **hparams},
            "seed": seed,
            "dtype": self.dtype,
            "metric": problem.metric,
            "record_version": RECORD_VERSION,
        }
        key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {
            "key": key,
            "arm": arm,
            "optimizer": optimizer,
            "problem": problem.label,
            "problem_config": problem.config(),
            "metric": problem.metric,
            "direction": problem.direction,
            "hparams": dict(hparams),
            "seed": seed,
            "dtype": self.dtype,
        }

    def tuning_runs(self) -> list[dict]:
        """Every tuning run: each optimizer x problem x setting x tuning seed."""
        return [
            self.run("tuning", opt, prob, setting, seed)
            for prob in self.problems
            for opt in self.optimizers
            for setting in self.settings(opt, prob)
            for seed in self.tuning_seeds()
        ]


def _message(error: BaseException) -> str:
    return str(error.args[0]) if error.args else str(error)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _list(name: str, value) -> list:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"study: `{name}` must be a list; received {value!r}")
    return list(value)


def _nonempty(name: str, value, hint: str = "") -> list:
    items = _list(name, value)
    if not items:
        raise SpecError(f"study: `{name}` is empty: name at least one{hint}")
    return items


def _names(name: str, value) -> list[str]:
    items = _nonempty(name, value)
    for item in items:
        if not isinstance(item, str):
            raise SpecError(f"study: `{name}` must list names; received {item!r}")
    return items


def _int(name: str, value, low: int, why: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        why = f" ({why})" if why else ""
        raise SpecError(f"study: `{name}` must be an integer >= {low}{why}; received {name}={value!r}")
    return value


def _choice(name: str, value, allowed: tuple) -> str:
    if value not in allowed:
        raise SpecError(f"study: `{name}` must be one of {', '.join(allowed)}; received {name}={value!r}")
    return value


def _problem(entry) -> ProblemSpec:
    """A problem entry: its name, or ``{name: ..., <argument>: ..., target: "metric <= value"}``."""
    from ... import problems
    from ...trainer import Trainer

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise SpecError(f"study: a problem is a name or {{name: ..., target: ...}}; received {entry!r}")
    args = {k: v for k, v in entry.items() if k not in ("name", "target")}
    if entry["name"] not in problems.registry:  # (the registry's message for a config adds what a study has not)
        raise SpecError(f"study: problems: {problems.registry.unknown(entry['name'])}")
    try:
        problem = problems.get({"name": entry["name"], **args})
    except (KeyError, ValueError, TypeError) as error:
        raise SpecError(f"study: problems: {_message(error)}") from None
    try:
        target = Trainer.parse_target(entry.get("target"), problem)
    except ValueError as error:
        raise SpecError(f"study: problems: {entry['name']}: {_message(error).removeprefix('Trainer: ')}") from None
    if target is None:
        why = "declares no target" if type(problem).target is None else "has its target only at its default arguments"
        raise SpecError(
            f"study: problem {entry['name']!r} {why}: a study times every run to a target; "
            f"give one: {{name: {entry['name']}, target: 'METRIC <= VALUE'}} (python -m optlab.problems lists them)"
        )
    return ProblemSpec(problem.registry_name, args, target.metric, target.direction, float(target.value))
