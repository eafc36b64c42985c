"""The problem protocol: something to optimize, with analytic gradients.

A problem owns its data and its parameters' layout. The trainer asks it for:

- ``init(seed, dtype)``: the initial parameters, as views of one flat buffer
  (``optlab.FlatArrays``), so the optimizer updates them all in one kernel call;
- ``batches(rng, batch_size)``: the batches of one epoch (index arrays, shuffled with ``rng``;
  full-batch problems yield ``None`` once), ``steps_per_epoch(batch_size)`` of them;
- ``loss_and_grad(params, grads, batch, rng)``: the loss on a batch, with the gradient written
  into ``grads`` (same layout as ``params``); ``rng`` is for problems with gradient noise. A
  problem with ``sparse_gradients = True`` gets ``grads`` as a list and may replace an entry by
  an :class:`~optlab.sparse.IndexedSlices` (the rows a batch touched), which the optimizer
  steps row by row where its rule allows;
- ``evaluate(params)``: metrics after an epoch (``val_loss``, ``val_accuracy``,
  ``distance_to_optimum``, ...), a dict of floats; ``metric(params, name)`` one of them alone
  (a study evaluates its metric between epochs too; by default it calls ``evaluate``);
- ``metric_directions`` (class attribute): which way each of its metrics improves, for the
  callbacks' ``mode="auto"`` and the reports (Keras asks the metric's ``_direction``).

And it declares, for comparisons (the trainer, ``python -m optlab.problems``, studies and
plugins read them; checked when the class is defined):

- ``target``: a :class:`Target`, the level a run "solves" it at (``val_accuracy >= 0.97``), for
  time-to-target; chosen from measured tuned runs at the default arguments (and applied only
  there: :meth:`Problem.declared_target`), and ``Target.measured`` says how;
- ``budget``: a :class:`Budget`, the default epochs and batch size (``trainer.epochs=auto``);
- ``size_class``: ``"tiny"`` (a run under 1 s), ``"small"`` (10 s) or ``"medium"`` (1 min on 2 cores).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from ..flat import FlatArrays, flat_parameters
from ..hparams import Configurable

#: how a built-in target was chosen (``python -m optlab.baselines``; docs/problems.md has the figures)
MEASURED = "the worst seed's best of tuned {opt} (lr={lr}), seeds 0-4 at the budget: python -m optlab.baselines {name}"
#: a run's upper bound in seconds, on 2 cores, at the problem's default budget
SIZE_CLASSES = {"tiny": 1.0, "small": 10.0, "medium": 60.0}
_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Target:
    """The level at which a run has solved a problem: ``metric op value``, e.g. ``val_accuracy >= 0.97``.

    ``measured`` says how the level was chosen (the tuned runs it came from), for the docs and
    the reports. ``Target.parse("val_loss <= 0.1")`` reads the printed form back.
    """

    metric: str
    op: str
    value: float
    measured: str = ""

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"Target: `metric` must be a logged name; received {self.metric!r}")
        if self.op not in _COMPARE:
            raise ValueError(f"Target: `op` must be '>=' or '<='; received {self.op!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or self.value != self.value:
            raise ValueError(f"Target: `value` must be a number; received {self.value!r}")

    @property
    def direction(self) -> str:
        """``"max"`` for ``>=`` (higher is better), ``"min"`` for ``<=``."""
        return "max" if self.op == ">=" else "min"

    def reached(self, value) -> bool:
        """Whether a logged ``value`` of the metric is at the target (NaN never is)."""
        return bool(_COMPARE[self.op](float(value), self.value))

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"val_accuracy >= 0.97"`` as a Target (``ValueError`` naming the expected form)."""
        found = re.fullmatch(r"\s*(\S+?)\s*(>=|<=)\s*(\S+)\s*", str(text))
        try:
            return cls(found[1], found[2], float(found[3]))
        except (TypeError, ValueError):
            raise ValueError(f"a target reads 'METRIC >= VALUE' or 'METRIC <= VALUE'; received {text!r}") from None


@dataclass(frozen=True)
class Budget:
    """A problem's default budget: ``epochs``, and ``batch_size`` (None: full batch)."""

    epochs: int
    batch_size: int | None = None

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"Budget: `epochs` must be an integer >= 1; received {self.epochs!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(f"Budget: `batch_size` must be an integer >= 1 or None; received {self.batch_size!r}")


class Problem(Configurable):
    """Base class of the problems; subclasses declare ``Hyper`` arguments and implement the protocol."""

    #: the 2-D test functions set this: the trainer records the parameters after every step
    record_path: bool = False
    #: ``loss_and_grad`` may put ``IndexedSlices`` in its ``grads`` list (embedding-like parameters)
    sparse_gradients: bool = False
    #: which way each metric improves, ``{"accuracy": "max", "excess": "min"}`` (a ``val_`` prefix
    #: is matched without it): read by ``EarlyStopping``/``ReduceLROnPlateau``/``ModelCheckpoint`` in
    #: ``mode="auto"`` and by the reports; metrics not listed fall back to Keras's metric names
    metric_directions: ClassVar[dict[str, str]] = {}
    #: the best value each metric can take, where it is known (``{"loss": 0.0, "accuracy": 1.0}``; a
    #: ``val_`` prefix is matched without it): a study refuses a target beyond it, which no run can reach
    metric_best: ClassVar[dict[str, float]] = {}
    #: the level a run solves the problem at (its default arguments), or None
    target: ClassVar[Target | None] = None
    #: default epochs and batch size
    budget: ClassVar[Budget] = Budget(epochs=20, batch_size=32)
    #: ``"tiny"``, ``"small"`` or ``"medium"`` (``SIZE_CLASSES``: a run's seconds at the default budget)
    size_class: ClassVar[str] = "tiny"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._check_metadata()
        best = cls.__dict__.get("metric_best", {})
        if not isinstance(best, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for k, v in best.items()
        ):
            raise TypeError(
                f"{cls.__name__}.metric_best must be a dict of metric name -> finite number; received {best!r}"
            )
        directions = cls.__dict__.get("metric_directions")
        if directions is None:
            return
        if not isinstance(directions, dict):
            raise TypeError(
                f"{cls.__name__}.metric_directions must be a dict of metric name -> 'min' or 'max'; "
                f"received {directions!r}"
            )
        for key, way in directions.items():
            if not isinstance(key, str) or way not in ("min", "max"):
                raise ValueError(
                    f"{cls.__name__}.metric_directions[{key!r}] must be 'min' or 'max' (keyed by a metric "
                    f"name); received {way!r}"
                )

    @classmethod
    def _check_metadata(cls) -> None:
        name = cls.__name__
        if cls.target is not None and not isinstance(cls.target, Target):
            raise TypeError(f"{name}.target must be an optlab.problems.Target or None; received {cls.target!r}")
        if not isinstance(cls.budget, Budget):
            raise TypeError(f"{name}.budget must be an optlab.problems.Budget; received {cls.budget!r}")
        if cls.size_class not in SIZE_CLASSES:
            raise ValueError(f"{name}.size_class must be one of {', '.join(SIZE_CLASSES)}; received {cls.size_class!r}")
        target = cls.target
        if target is not None:
            from ..callbacks.base import direction

            declared = direction(target.metric, cls.metric_directions)
            if declared is not None and declared != target.direction:
                raise ValueError(
                    f"{name}.target {target} asks for {target.metric} to be "
                    f"{'high' if target.op == '>=' else 'low'}, but it is {declared}imized "
                    f"(metric_directions or its name says so)"
                )

    @classmethod
    def metadata(cls) -> dict:
        """What the problem declares, as plain data: ``metric_directions``, ``target`` (with its
        printed form and how it was measured), ``budget`` and ``size_class``."""
        target = cls.target
        return {
            "metric_directions": dict(cls.metric_directions),
            "target": None if target is None else {**asdict(target), "text": str(target)},
            "budget": asdict(cls.budget),
            "size_class": cls.size_class,
        }

    def declared_target(self) -> Target | None:
        """The class's ``target`` where it applies: the problem built with the arguments the
        target was measured at (every argument at its default); None otherwise (a 10-D instance
        of a function is another problem)."""
        target = type(self).target
        if target is None:
            return None
        for name, hyper in self.hyperparameters().items():
            if getattr(self, name) != hyper.default:
                return None
        return target

    def metrics(self) -> dict[str, str | None]:
        """The names an epoch's logs hold for this problem (its ``loss`` and ``evaluate``'s metrics),
        each with its direction (``"min"``, ``"max"``, or None: a position, say)."""
        from ..callbacks.base import direction

        names = ["loss", *self.evaluate(self.init(0, np.float64))]
        return {name: direction(name, self.metric_directions) for name in names}

    # -- the protocol -------------------------------------------------------------------------
    def shapes(self) -> list[tuple[int, ...]]:
        """The parameters' shapes."""
        raise NotImplementedError

    def parameter_names(self) -> list[str] | None:
        """Each parameter's name, Keras-style (``dense/kernel``), or None: the trainer hands the
        optimizer named parameters, for its name rules (``exclude_from_weight_decay(var_names=)``,
        Muon's ``exclude_layers``, ``OptimizerMap`` patterns)."""
        return None

    def initial_values(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The initial parameters (float64); ``rng`` is seeded by the trainer."""
        raise NotImplementedError

    def init(self, seed: int = 0, dtype=np.float32) -> FlatArrays:
        """Seeded initial parameters as views of one flat buffer of ``dtype``."""
        params = flat_parameters(self.shapes(), dtype)
        for view, value in zip(params, self.initial_values(np.random.default_rng(seed))):
            view[...] = value
        return params

    @property
    def num_examples(self) -> int | None:
        """Training examples per epoch, or None for a full-batch problem (one step per epoch)."""
        return None

    def steps_per_epoch(self, batch_size: int | None = None) -> int:
        """Batches in one epoch: ``ceil(num_examples / batch_size)``, or 1 (full batch, or no data)."""
        n = self.num_examples
        if n is None or batch_size is None:
            return 1
        return max(1, -(-n // batch_size))

    def batches(self, rng: np.random.Generator, batch_size: int | None = None) -> Iterator[np.ndarray | None]:
        """The batches of one epoch: shuffled index arrays, or ``None`` once for full-batch problems."""
        n = self.num_examples
        if n is None or batch_size is None or batch_size >= n:
            if n is None:
                yield None
            else:
                yield rng.permutation(n)
            return
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]

    def loss_and_grad(self, params, grads, batch=None, rng=None) -> float:
        """Loss on ``batch``; writes the gradient into ``grads``."""
        raise NotImplementedError

    def loss(self, params, batch=None) -> float:
        """The loss alone (a gradient is computed into a scratch buffer)."""
        grads = [np.empty_like(p) for p in params]
        return self.loss_and_grad(params, grads, batch, None)

    def evaluate(self, params) -> dict[str, float]:
        """Metrics of the current parameters (after each epoch)."""
        return {}

    def metric(self, params, name: str) -> float | None:
        """One of ``evaluate``'s metrics (None if it has no such metric). A study's probes ask for
        one metric between epochs; a problem whose metrics cost apart answers without the others."""
        return self.evaluate(params).get(name)

    def datasets(self) -> list[dict]:
        """The data the problem trains and validates on, described for the records (MLflow's
        dataset inputs): ``[{"name", "split", "size", "seed", "source", "generated"}]``; none
        for a problem without data (a test function)."""
        return []

    def optimum(self) -> list[np.ndarray] | None:
        """The known minimiser, if there is one (for ``distance_to_optimum``)."""
        return None

    def best_possible(self, metric: str) -> tuple[float, str] | None:
        """The best value ``metric`` can take on this problem, where it is known, and what it is
        (``(0.0, "its minimum loss")``): declared (``metric_best``), an accuracy's 1, a distance's 0,
        or a full-batch function's loss at its known minimiser. A target beyond it is never reached."""
        bare = metric.removeprefix("val_")
        declared = self.metric_best.get(metric, self.metric_best.get(bare))
        if declared is not None:
            return float(declared), f"{metric}'s best possible value"
        if bare == "accuracy":
            return 1.0, "an accuracy's best"
        if metric == "distance_to_optimum":
            return 0.0, "the distance's least"
        optimum = self.optimum()
        if metric == "loss" and optimum is not None and self.num_examples is None:
            try:  # a full-batch function: its loss at its known minimiser
                with np.errstate(all="ignore"):
                    value = self.loss([np.array(o, dtype=np.float64) for o in optimum])
            except Exception:  # (a problem whose loss needs more than its parameters: no bound)
                return None
            if np.isfinite(value):
                return float(value), "its minimum loss"
        return None


def distance(params, optimum) -> float:
    return float(np.sqrt(sum(np.sum((np.asarray(p, np.float64) - o) ** 2) for p, o in zip(params, optimum))))
