"""Learning-rate schedules: plain callables ``step -> learning rate``.

Keras 3's set (``keras.optimizers.schedules``) with Keras's formulas, plus
``Constant`` and ``LinearWarmup`` (a linear warmup in front of any schedule).
Steps count optimizer updates, not epochs. A schedule also accepts a numpy
array of steps and returns an array, which is handy for plotting.

>>> s = ExponentialDecay(0.1, decay_steps=100, decay_rate=0.9)
>>> round(s(100), 6)
0.09
"""

from __future__ import annotations

import math

import numpy as np

from .hparams import Configurable, Hyper
from .plugins import REGISTRIES

REQUIRED = Hyper.REQUIRED


class LearningRateSchedule(Configurable):
    """Base class: subclasses declare hyperparameters and implement ``value(step)``.

    ``value`` receives the step as a float64 numpy array and returns an array;
    ``__call__`` accepts an int, a float or an array.
    """

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)  # Keras's display name; the registry name identifies a schedule here
        leftovers = self._assign_hypers(args, kwargs)
        if leftovers:
            raise self._unknown_arguments(leftovers)
        self.check()

    def check(self) -> None:
        """Cross-argument validation (optional)."""

    def value(self, step: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, step):
        out = self.value(np.asarray(step, dtype=np.float64))
        return float(out) if np.ndim(out) == 0 else out


def _positive_steps(doc):
    return Hyper(REQUIRED, low=0.0, low_open=True, fill="run_steps", doc=doc)


def _initial_rate():
    return Hyper(REQUIRED, low=0.0, fill="learning_rate", doc="learning rate at step 0")


class Constant(LearningRateSchedule):
    """lr(step) = learning_rate at every step."""

    registry_name = "constant"
    learning_rate = Hyper(REQUIRED, low=0.0, doc="the learning rate")

    def value(self, step):
        return np.full_like(step, self.learning_rate)


class ExponentialDecay(LearningRateSchedule):
    r"""lr(step) = initial_learning_rate * decay_rate ^ (step / decay_steps), the exponent floored if ``staircase``."""

    registry_name = "exponential_decay"
    initial_learning_rate = _initial_rate()
    decay_steps = _positive_steps("steps per decay by decay_rate")
    decay_rate = Hyper(REQUIRED, low=0.0, doc="factor applied every decay_steps")
    staircase = Hyper(False, kind=bool, doc="decay in discrete steps")

    def value(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = np.floor(p)
        return self.initial_learning_rate * np.power(self.decay_rate, p)


class PiecewiseConstantDecay(LearningRateSchedule):
    """Constant pieces: values[i] while boundaries[i-1] < step <= boundaries[i].

    values[0] up to and including boundaries[0], values[-1] after the last boundary (a
    boundary step belongs to the piece before it, as in Keras).
    """

    registry_name = "piecewise_constant_decay"
    aliases = ("piecewise_constant",)
    boundaries = Hyper(REQUIRED, kind=list, doc="increasing step boundaries")
    values = Hyper(REQUIRED, kind=list, doc="one more value than boundaries")

    def check(self):
        if len(self.boundaries) != len(self.values) - 1:
            raise ValueError(
                "PiecewiseConstantDecay: `values` must have one more element than `boundaries`; received "
                f"{len(self.boundaries)} boundaries and {len(self.values)} values"
            )
        if any(not (b < a) for b, a in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"PiecewiseConstantDecay: `boundaries` must increase; received {self.boundaries}")

    def value(self, step):
        index = np.searchsorted(np.asarray(self.boundaries, dtype=np.float64), step, side="left")
        return np.asarray(self.values, dtype=np.float64)[index]


class PolynomialDecay(LearningRateSchedule):
    r"""lr = (initial - end) * (1 - min(step, decay_steps) / decay_steps) ^ power + end.

    With ``cycle``, decay_steps is stretched to ``decay_steps * ceil(step / decay_steps)`` (1 at step 0).
    """

    registry_name = "polynomial_decay"
    initial_learning_rate = _initial_rate()
    decay_steps = _positive_steps("steps to reach end_learning_rate")
    end_learning_rate = Hyper(0.0001, low=0.0, doc="final learning rate")
    power = Hyper(1.0, low=0.0, doc="power of the polynomial")
    cycle = Hyper(False, kind=bool, doc="restart beyond decay_steps")

    def value(self, step):
        decay_steps = np.full_like(step, self.decay_steps)
        if self.cycle:
            multiplier = np.where(step == 0, 1.0, np.ceil(step / self.decay_steps))
            decay_steps = decay_steps * multiplier
        else:
            step = np.minimum(step, decay_steps)
        p = step / decay_steps
        return (self.initial_learning_rate - self.end_learning_rate) * np.power(
            1 - p, self.power
        ) + self.end_learning_rate


class InverseTimeDecay(LearningRateSchedule):
    r"""lr = initial_learning_rate / (1 + decay_rate * step / decay_steps), the ratio floored if ``staircase``."""

    registry_name = "inverse_time_decay"
    initial_learning_rate = _initial_rate()
    decay_steps = _positive_steps("steps per unit of decay")
    decay_rate = Hyper(REQUIRED, low=0.0, doc="decay rate")
    staircase = Hyper(False, kind=bool, doc="decay in discrete steps")

    def value(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = np.floor(p)
        return self.initial_learning_rate / (1.0 + self.decay_rate * p)


class CosineDecay(LearningRateSchedule):
    r"""Cosine decay (Loshchilov and Hutter, SGDR), with an optional linear warmup.

    Without warmup: lr = initial * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha).
    With ``warmup_target``: lr rises linearly from initial_learning_rate to warmup_target over
    warmup_steps, then decays from warmup_target as above over decay_steps.
    """

    registry_name = "cosine_decay"
    initial_learning_rate = _initial_rate()
    decay_steps = _positive_steps("steps of the cosine decay")
    alpha = Hyper(0.0, low=0.0, high=1.0, doc="final learning rate as a fraction of the decayed-from value")
    warmup_target = Hyper(None, low=0.0, doc="learning rate at the end of warmup (None: no warmup)")
    warmup_steps = Hyper(0, kind=int, low=0, doc="steps of linear warmup")

    def _decay(self, step, start):
        cosine = 0.5 * (1.0 + np.cos(math.pi * step / self.decay_steps))
        return start * ((1 - self.alpha) * cosine + self.alpha)

    def value(self, step):
        if self.warmup_target is None:
            return self._decay(np.minimum(step, self.decay_steps), self.initial_learning_rate)
        step = np.minimum(step, self.decay_steps + self.warmup_steps)
        warm = self.warmup_steps
        with np.errstate(divide="ignore", invalid="ignore"):
            rising = (self.warmup_target - self.initial_learning_rate) * (step / warm) + self.initial_learning_rate
        return np.where(step < warm, rising, self._decay(step - warm, self.warmup_target))


class CosineDecayRestarts(LearningRateSchedule):
    r"""Cosine decay with warm restarts (SGDR).

    Period i lasts ``first_decay_steps * t_mul^i`` steps and starts from
    ``initial_learning_rate * m_mul^i``; within a period lr follows the cosine of
    ``CosineDecay`` down to alpha times that start.
    Reference: Loshchilov and Hutter, 2016, "SGDR: Stochastic Gradient Descent with Warm Restarts".
    """

    registry_name = "cosine_decay_restarts"
    initial_learning_rate = _initial_rate()
    first_decay_steps = _positive_steps("length of the first period")
    t_mul = Hyper(2.0, low=0.0, low_open=True, doc="period length multiplier")
    m_mul = Hyper(1.0, low=0.0, doc="restart value multiplier")
    alpha = Hyper(0.0, low=0.0, high=1.0, doc="minimum learning rate as a fraction")

    def value(self, step):
        fraction = step / self.first_decay_steps
        if self.t_mul == 1.0:
            i_restart = np.floor(fraction)
            fraction = fraction - i_restart
        else:
            i_restart = np.floor(np.log(1.0 - fraction * (1.0 - self.t_mul)) / math.log(self.t_mul))
            sum_r = (1.0 - np.power(self.t_mul, i_restart)) / (1.0 - self.t_mul)
            fraction = (fraction - sum_r) / np.power(self.t_mul, i_restart)
        cosine = 0.5 * np.power(self.m_mul, i_restart) * (1.0 + np.cos(math.pi * fraction))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)


class LinearWarmup(LearningRateSchedule):
    r"""A linear warmup in front of any schedule.

    lr rises linearly from ``initial_learning_rate`` at step 0 to ``schedule(0)`` at
    ``warmup_steps``; from there on lr = schedule(step - warmup_steps), so the wrapped
    schedule runs unchanged after the warmup.
    """

    registry_name = "linear_warmup"
    schedule = Hyper(REQUIRED, kind=object, doc="the schedule to warm up into (a schedule or its config)")
    warmup_steps = Hyper(REQUIRED, kind=int, low=1, doc="steps of linear warmup")
    initial_learning_rate = Hyper(0.0, low=0.0, doc="learning rate at step 0")

    def check(self):
        self.schedule = get(self.schedule)

    def value(self, step):
        target = self.schedule(0)
        inner = self.schedule.value(np.maximum(step - self.warmup_steps, 0.0))
        rising = self.initial_learning_rate + (target - self.initial_learning_rate) * step / self.warmup_steps
        return np.where(step < self.warmup_steps, rising, inner)


BUILTIN = (
    Constant,
    ExponentialDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
    InverseTimeDecay,
    CosineDecay,
    CosineDecayRestarts,
    LinearWarmup,
)

#: schedule names (filled by the plugin hooks on first use: the built-ins and installed plugins)
registry = REGISTRIES["schedules"]


def get(identifier, **overrides) -> LearningRateSchedule | None:
    """A schedule from a name, a config dict (``{"name": ..., **arguments}``), a number or an instance."""
    if identifier is None or isinstance(identifier, LearningRateSchedule):
        return identifier
    if isinstance(identifier, (int, float)) and not isinstance(identifier, bool):
        return Constant(float(identifier))
    return registry.create(identifier, **overrides)


def serialize(schedule: LearningRateSchedule) -> dict:
    return schedule.get_config()


def deserialize(config: dict) -> LearningRateSchedule:
    return get(config)


__all__ = ["LearningRateSchedule", "get", "serialize", "deserialize", "registry", *(c.__name__ for c in BUILTIN)]
