"""From a study's run records to its results: tuned settings, seed statistics, time to target, profiles.

Plain data in, plain data out (no plotting, no tracking), following
``reference/comparison-methods.md``:

- a setting's **score** is the mean over its tuning seeds of the metric's final (or best)
  value; a seed that diverged makes the score NaN, which ranks last;
- the **tuned setting** is the best score; it is flagged when it lies on the edge of the space;
- the tuned setting and the defaults, rerun on the final seeds: mean, standard deviation and
  a 95% percentile bootstrap interval of the mean (:func:`seed_stats`); the leader on each
  problem against each other optimizer by a rank-sum test, Holm-corrected over the whole study;
- **time to target** for each level of the ladder, per final seed (steps, examples and training
  seconds; a miss is infinite, never dropped), and its median over seeds;
- the **performance profile** of the tuned optimizers over the problems, with the median
  time to the declared target as the cost, and AlgoPerf's score (its area up to tau = 4).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np

from . import measures
from .spec import EDGE, Spec

UNITS = ("steps", "examples", "seconds")


def _value(record: dict, score: str) -> float:
    value = record.get(score, math.nan)
    return value if isinstance(value, (int, float)) else math.nan


def _rank(score: float, direction: str) -> float:
    """Smaller is better; NaN last."""
    if not math.isfinite(score):
        return math.inf
    return score if direction == "min" else -score


def _points(record: dict) -> list[dict]:
    return [{"step": p[0], "examples": p[1], "seconds": p[2], "value": p[3]} for p in record["points"]]


def tuning_table(spec: Spec, records: list[dict]) -> dict:
    """``{(problem, optimizer): [{"hparams", "seeds", "values" (per seed, in that order), "score"}, ...]}``
    in design order."""
    grouped: dict = defaultdict(dict)
    for r in records:
        key = (r["problem"], r["optimizer"])
        setting = tuple(sorted(r["hparams"].items()))
        grouped[key].setdefault(setting, []).append(r)
    table = {}
    for key, settings in grouped.items():
        rows = []
        for setting, runs in settings.items():
            runs = sorted(runs, key=lambda r: r["seed"])
            values = [_value(r, spec.score) for r in runs]
            score = float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan
            rows.append(
                {"hparams": dict(setting), "seeds": [r["seed"] for r in runs], "values": values, "score": score}
            )
        table[key] = rows
    return table


def choose(spec: Spec, table: dict) -> dict:
    """The tuned setting of each (problem, optimizer): its hparams, score, and edge warnings."""
    directions = {p.label: p.direction for p in spec.problems}
    chosen = {}
    for (problem, optimizer), rows in table.items():
        best = min(rows, key=lambda row: _rank(row["score"], directions[problem]))
        spaces = spec.spaces(optimizer)
        edges = [n for n, v in best["hparams"].items() if n in spaces and spaces[n].on_edge(v, EDGE)]
        chosen[(problem, optimizer)] = {
            "hparams": best["hparams"],
            "score": best["score"],
            "edge": edges,
            "all_failed": not math.isfinite(best["score"]),
        }
    return chosen


def edge_notes(spec: Spec, optimizer: str, best: dict) -> list[str]:
    """What to say of each hyperparameter of ``optimizer``'s tuned setting ``best`` that lies on an
    edge of its space (:func:`choose`): which end, and the override that widens it there."""
    from ... import optimizers
    from ...spaces import widened

    cls = optimizers.registry.get(optimizer)
    spaces = spec.spaces(optimizer)
    notes = []
    for name in best["edge"]:
        value, space = best["hparams"][name], spaces[name]
        end, wider = widened(cls, name, space, value, EDGE) or ("", None)
        where = f"the tuned {name}={value:g} lies at the {end} end of its search space {space}"
        if wider is None:
            notes.append(f"{where}, which is the end of what {name} accepts: its best may lie there")
        else:
            override = f'space.{optimizer}.{name}="{wider}"'
            notes.append(f"{where}: widen it there ({override}) or the comparison is about the space")
    return notes


def final_runs(spec: Spec, chosen: dict) -> list[dict]:
    """The reruns: each tuned setting, and each optimizer's defaults, on every final seed."""
    runs = []
    problems = {p.label: p for p in spec.problems}
    for (problem, optimizer), best in chosen.items():
        arms = [("final", best["hparams"])] + ([("defaults", {})] if spec.one_shot else [])
        for arm, hparams in arms:
            runs += [spec.run(arm, optimizer, problems[problem], hparams, s) for s in spec.final_seed_list()]
    return runs


def arm_summary(spec: Spec, problem, runs: list[dict]) -> dict:
    """Seed statistics and times to target of one optimizer's runs in one arm on one problem."""
    runs = sorted(runs, key=lambda r: r["seed"])
    values = [_value(r, spec.score) for r in runs]
    ttt = []
    for factor, level in measures.ladder(problem.target, problem.direction, spec.ladder):
        times = [measures.time_to_target(_points(r), level, problem.direction) for r in runs]
        ttt.append(
            {
                "level": level,
                "factor": factor,
                "reached": sum(math.isfinite(t["step"]) for t in times),
                **{f"median_{u}": measures.censored_median([t[_unit(u)] for t in times]) for u in UNITS},
                **{u: [t[_unit(u)] for t in times] for u in UNITS},
            }
        )
    return {
        "values": values,
        "seeds": [r["seed"] for r in runs],
        "stats": seed_stats(values),
        "diverged": sum(bool(r.get("diverged")) for r in runs),
        "ttt": ttt,
        "budget_steps": runs[0]["budget_steps"] if runs else 0,
        "train_seconds": float(sum(r["train_seconds"] for r in runs)),
    }


def seed_stats(values) -> dict:
    """Mean and standard deviation of the final seeds' values, with a 95% percentile bootstrap
    interval of the mean (``measures.bootstrap_ci``, 2,000 resamples of the seeds, seeded): it
    stays within the values' range, where a Student-t interval of a skewed positive quantity (one
    seed's loss 1e-4, nine at 1e-12) went below zero. A diverged seed leaves it NaN, as the mean."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return measures.mean_ci(values)  # its NaNs and infinities, as documented there
    low, high = measures.bootstrap_ci(values)
    x = np.asarray(values, dtype=float)
    return {"mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)), "low": low, "high": high, "n": int(x.size)}


def _unit(unit: str) -> str:
    """measures.time_to_target's keys: step, examples, seconds."""
    return "step" if unit == "steps" else unit


def declared(summary: dict) -> dict:
    """The ladder's entry for the declared target (factor 1)."""
    return next(t for t in summary["ttt"] if t["factor"] == 1.0)


def reduce(spec: Spec, tuning: list[dict], finals: list[dict], chosen: dict) -> dict:
    """The study's results as plain data (see the module's docs)."""
    problems = {p.label: p for p in spec.problems}
    by_arm: dict = defaultdict(list)
    for r in finals:
        by_arm[(r["problem"], r["optimizer"], r["arm"])].append(r)
    summaries = {key: arm_summary(spec, problems[key[0]], runs) for key, runs in by_arm.items()}
    # the leader on each problem (best final mean) against every other optimizer, Holm over the study
    tests = []
    for label, problem in problems.items():
        tuned = {opt: summaries[(label, opt, "final")] for opt in spec.optimizers if (label, opt, "final") in summaries}
        if not tuned:
            continue
        leader = min(tuned, key=lambda o: _rank(tuned[o]["stats"]["mean"], problem.direction))
        best = tuned[leader]["stats"]["mean"]
        for opt, s in tuned.items():
            if opt != leader:
                p = measures.rank_sum_p(tuned[leader]["values"], s["values"], problem.direction)
                tied = s["stats"]["mean"] == best  # (the leader is then the first listed of them)
                tests.append({"problem": label, "leader": leader, "other": opt, "p": p, "tied": tied})
    for test, adjusted in zip(tests, measures.holm([t["p"] for t in tests])):
        test["p_holm"] = adjusted
    costs = {
        label: {
            opt: declared(summaries[(label, opt, "final")])[f"median_{spec.profile}"]
            for opt in spec.optimizers
            if (label, opt, "final") in summaries
        }
        for label in problems
    }
    taus = np.concatenate([np.linspace(1, 4, 61), np.geomspace(4, 64, 41)[1:]])
    profile = measures.performance_profile(costs, taus)
    return {
        "study": spec.study_id,
        "tuning": {f"{p}|{o}": rows for (p, o), rows in tuning_table(spec, tuning).items()},
        "chosen": {f"{p}|{o}": c for (p, o), c in chosen.items()},
        "summaries": {"|".join(k): s for k, s in summaries.items()},
        "tests": tests,
        "costs": costs,
        "ratios": measures.performance_ratios(costs),
        "profile": {"taus": taus.tolist(), **{s: v.tolist() for s, v in profile.items()}},
        "algoperf": measures.algoperf_score(costs),
        "ecdf": ecdf_data(spec, finals),
        "environments": environments(tuning + finals),
    }


def environments(records: list[dict]) -> list[dict]:
    """Where the runs ran (each record's ``environment``), each with how many runs ran there, most
    first; runs stored by an optlab that did not record it are counted apart (``environment`` None)."""
    counts: dict = {}
    for r in records:
        env = r.get("environment")
        key = json.dumps(env, sort_keys=True)
        counts.setdefault(key, {"environment": env, "runs": 0})["runs"] += 1
    return sorted(counts.values(), key=lambda e: -e["runs"])


def ecdf_data(spec: Spec, finals: list[dict]) -> dict:
    """Each optimizer's runtimes (steps as a fraction of the problem's budget; inf = missed) over
    problems x ladder levels x final seeds of its tuned setting, with the ECDF and a bootstrap band."""
    problems = {p.label: p for p in spec.problems}
    budgets = np.geomspace(1e-3, 1.0, 61)
    out = {"budgets": budgets.tolist()}
    for opt in spec.optimizers:
        runtimes = []
        for r in finals:
            if r["optimizer"] != opt or r["arm"] != "final":
                continue
            p = problems[r["problem"]]
            for level in measures.target_ladder(p.target, p.direction, spec.ladder):
                t = measures.time_to_target(_points(r), level, p.direction)["step"]
                runtimes.append(t / max(r["budget_steps"], 1))
        if runtimes:
            low, high = measures.ecdf_band(np.array(runtimes), budgets)
            out[opt] = {
                "ecdf": measures.ecdf(np.array(runtimes), budgets).tolist(),
                "low": low.tolist(),
                "high": high.tolist(),
                "n": len(runtimes),
            }
    return out


def significance_note(spec: Spec) -> str | None:
    """What to say when the study's final seeds are too few for any difference to be significant:
    the rank-sum test's smallest p-value (two samples of ``final_seeds``, wholly apart), Holm-adjusted
    over the study's comparisons (each problem's leader against every other optimizer), at 0.05 or
    above. None when the study can find a difference, or compares nothing."""
    comparisons = (len(spec.optimizers) - 1) * len(spec.problems)
    if comparisons <= 0:
        return None

    def smallest(n: int) -> float:  # (two samples of n wholly apart)
        return measures.rank_sum_p(range(n), range(n, 2 * n), "min")

    n = spec.final_seeds
    if smallest(n) * comparisons < 0.05:
        return None
    enough = next((k for k in range(n + 1, 200) if smallest(k) * comparisons < 0.05), None)
    held = f", Holm-adjusted over {comparisons} comparisons {min(smallest(n) * comparisons, 1.0):.2g}"
    return (
        f"with {n} final seeds the rank-sum test's smallest p-value is {smallest(n):.2g}"
        f"{held if comparisons > 1 else ''}: no difference in this study can be significant at 0.05"
        + (f"; final_seeds={enough} would allow it" if enough else "")
    )


def worse_than_defaults(spec: Spec, summaries: dict) -> list[tuple[str, str, str]]:
    """``(problem, optimizer, what)`` for each tuned setting that did worse on the final seeds than the
    optimizer's defaults: diverging where they did not, or a mean past theirs in the metric's
    direction that the seeds separate (two-sided rank-sum p < 0.05; a difference within the seeds'
    spread is not said). The tuning then missed the defaults' level, which says more about its budget
    or space than about the optimizer."""
    out = []
    for problem in spec.problems:
        for opt in spec.optimizers:
            tuned = summaries.get(f"{problem.label}|{opt}|final")
            defaults = summaries.get(f"{problem.label}|{opt}|defaults")
            if tuned is None or defaults is None or defaults["diverged"]:
                continue
            a, b = tuned["stats"]["mean"], defaults["stats"]["mean"]
            if tuned["diverged"]:
                what = f"diverged on {tuned['diverged']} of {len(tuned['values'])} seeds, the defaults on none"
            elif math.isfinite(a) and math.isfinite(b) and _rank(a, problem.direction) > _rank(b, problem.direction):
                p = measures.rank_sum_p(tuned["values"], defaults["values"], problem.direction)
                if not p < 0.05:
                    continue
                what = f"mean {a:.4g} against the defaults' {b:.4g}, rank-sum p = {p:.2g}"
            else:
                continue
            out.append((problem.label, opt, what))
    return out
