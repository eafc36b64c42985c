"""Learning-rate schedules: plain callables ``step -> learning rate``.

Keras 3's set (``keras.optimizers.schedules``) with Keras's formulas, plus
``Constant`` and ``LinearWarmup`` (a linear warmup in front of any schedule), and the
schedules users bring from optax and torch (sequences of schedules, one-cycle, multi-step,
cyclical, warmup-stable-decay, inverse square root), each checked against its peer.
Steps count optimizer updates, not epochs. A schedule also accepts a numpy
array of steps and returns an array, which is handy for plotting.

>>> s = ExponentialDecay(0.1, decay_steps=100, decay_rate=0.9)
>>> round(s(100), 6)
0.09
"""

from __future__ import annotations

import itertools
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
        super().__init__(*args, **kwargs)

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
    r"""lr(step) = initial_learning_rate * decay_rate ^ (step / decay_steps), the exponent floored if ``staircase``.

    With ``staircase`` it is torch's ``StepLR(step_size=decay_steps, gamma=decay_rate)`` and optax's
    ``exponential_decay(init_value, transition_steps, decay_rate, staircase=True)``.
    """

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


def _run_length(doc):
    return Hyper(REQUIRED, kind=int, low=1, fill="run_steps", doc=doc)


def _peak_rate(doc):
    return Hyper(REQUIRED, low=0.0, fill="learning_rate", doc=doc)


def _ramp(step, start, end):
    """The fraction of the way from ``start`` to ``end`` (steps), clipped to [0, 1]; 1 for an empty ramp."""
    if end <= start:
        return np.ones_like(step)
    return np.clip((step - start) / (end - start), 0.0, 1.0)


def _increasing(owner, field, values, strict=True):
    """One-line error unless ``values`` increase (``strict``) or never decrease."""
    if any(b < a or (strict and b == a) for a, b in itertools.pairwise(values)):
        word = "increase" if strict else "never decrease"
        raise ValueError(f"{owner}: `{field}` must {word}; received {field}={values}")


class SequentialSchedule(LearningRateSchedule):
    r"""lr = schedules[i](step - boundaries[i-1]) while boundaries[i-1] <= step < boundaries[i] (from step 0 for i = 0).

    Each schedule runs in turn, seeing the steps counted from its own boundary (a boundary
    step is the next schedule's step 0), as optax's ``join_schedules(schedules, boundaries)``
    does, and as torch's ``SequentialLR(optimizer, schedulers, milestones)`` does for
    schedulers with a closed form (``StepLR``, ``MultiStepLR``, ``ConstantLR``, ``LinearLR``,
    ``ExponentialLR``, ``PolynomialLR``, ``CosineAnnealingLR``). Where they differ: each
    schedule here gives its own learning rate, while torch's schedulers scale the optimizer's
    rate (``LinearLR(start_factor=0.1)`` on a rate of 0.1 is ``polynomial_decay`` from 0.01 to
    0.1 here); and a torch scheduler without a closed form (``MultiplicativeLR``) continues from
    the rate the previous one left, which has no counterpart here. The schedules are given as
    configs (``{"name": ..., **arguments}``), schedules or numbers (a constant); the command
    line fills in none of their arguments.
    """

    registry_name = "sequential_schedule"
    schedules = Hyper(REQUIRED, kind=list, doc="the schedules in order (configs, schedules or numbers)")
    boundaries = Hyper(
        REQUIRED, kind=list, item=Hyper(kind=int, low=0), doc="increasing steps at which the next schedule starts"
    )

    def check(self):
        owner = type(self).__name__
        if not self.schedules:
            raise ValueError(f"{owner}: `schedules` must list at least one schedule; received schedules=[]")
        if len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError(
                f"{owner}: `boundaries` must have one element fewer than `schedules`; received "
                f"{len(self.boundaries)} boundaries and {len(self.schedules)} schedules"
            )
        _increasing(owner, "boundaries", self.boundaries)
        self.schedules = [_sub_schedule(owner, i, s) for i, s in enumerate(self.schedules)]

    def get_config(self):
        # the sub-schedules as their own configs: the config stays plain JSON
        return {**super().get_config(), "schedules": [s.get_config() for s in self.schedules]}

    def value(self, step):
        out = self.schedules[0].value(step)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            # clamped: a schedule is never asked for a step before its own start
            out = np.where(step < boundary, out, schedule.value(np.maximum(step - boundary, 0.0)))
        return out


def _sub_schedule(owner, index, item):
    """A schedule of a list, built from its config; an error names its place in the list."""
    if item is None:
        raise ValueError(
            f"{owner}: `schedules[{index}]` must be a schedule's config, a schedule or a number; received None"
        )
    try:
        return get(item)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{owner}: `schedules[{index}]`: {error}") from None


class MultiStepDecay(LearningRateSchedule):
    r"""lr = initial_learning_rate * gamma ^ (number of milestones <= step).

    torch's ``MultiStepLR(milestones, gamma)``, and optax's
    ``piecewise_constant_schedule(init_value, {milestone: gamma, ...})``: the rate drops *at*
    each milestone step (a milestone listed twice multiplies by gamma twice, as in torch).
    Keras's ``PiecewiseConstantDecay`` instead keeps the old value at a boundary step, so
    optax's ``piecewise_constant_schedule`` with different scales per boundary is
    ``piecewise_constant_decay`` with each boundary one step earlier. torch's
    ``StepLR(step_size, gamma)`` (a drop every ``step_size`` steps) is
    ``exponential_decay(initial_learning_rate, step_size, gamma, staircase=True)``.
    """

    registry_name = "multi_step_decay"
    initial_learning_rate = _initial_rate()
    milestones = Hyper(REQUIRED, kind=list, item=Hyper(kind=int, low=0), doc="steps at which the rate drops")
    gamma = Hyper(0.1, low=0.0, doc="factor applied at each milestone")

    def check(self):
        _increasing(type(self).__name__, "milestones", self.milestones, strict=False)

    def value(self, step):
        passed = np.searchsorted(np.asarray(self.milestones, dtype=np.float64), step, side="right")
        return self.initial_learning_rate * np.power(self.gamma, passed)


class OneCycle(LearningRateSchedule):
    r"""lr rises from peak/div_factor to peak, then anneals to peak/(div_factor*final_div_factor) (Smith's one-cycle).

    The phases interpolate by cosine (``anneal_strategy="cos"``: end + (start - end) *
    (1 + cos(pi * fraction)) / 2) or linearly. With ``pct_final`` a third phase is added: the
    rate falls back to peak/div_factor at ``pct_final`` of the cycle before annealing to the
    final value. The final value is held after the cycle. On the command line the optimizer's
    learning rate is the peak and the run's length the cycle.

    ``convention`` places the phase ends, the one thing optax and torch disagree on:

    - ``"optax"`` (``cosine_onecycle_schedule``, ``linear_onecycle_schedule``): the peak at
      step floor(pct_start * total_steps), the third phase from floor(pct_final * total_steps),
      the final value at step total_steps;
    - ``"torch"`` (``OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy, div_factor,
      final_div_factor, three_phase)``): the peak at pct_start * total_steps - 1 (a fraction is
      kept), the third phase from pct_final * total_steps - 2 (``three_phase=True`` is
      ``pct_final = 2 * pct_start``), the final value at total_steps - 1, the last of the
      total_steps rates torch gives. torch raises past that step (and extrapolates at step
      total_steps itself); here the final value is held. A peak exactly at step 0 (torch
      divides by zero there) starts at the peak.

    Reference: Smith and Topin, 2017, "Super-Convergence: Very Fast Training of Neural Networks
    Using Large Learning Rates".
    """

    registry_name = "one_cycle"
    peak_learning_rate = _peak_rate("the learning rate at the top of the cycle")
    total_steps = _run_length("length of the cycle")
    pct_start = Hyper(0.3, low=0.0, high=1.0, doc="fraction of the cycle spent rising")
    pct_final = Hyper(None, low=0.0, high=1.0, doc="end of the fall back to peak/div_factor (None: two phases)")
    div_factor = Hyper(25.0, low=0.0, low_open=True, doc="initial rate = peak / div_factor")
    final_div_factor = Hyper(1e4, low=0.0, low_open=True, doc="final rate = initial rate / final_div_factor")
    anneal_strategy = Hyper("cos", kind=str, choices=("cos", "linear"), doc="interpolation within a phase")
    convention = Hyper("optax", kind=str, choices=("optax", "torch"), doc="where the phases end (see above)")

    def check(self):
        if self.pct_final is not None and self.pct_final < self.pct_start:
            raise ValueError(
                f"OneCycle: `pct_final` must be at least pct_start ({self.pct_start:g}) or None; "
                f"received pct_final={self.pct_final!r}"
            )

    def _knots(self):
        """(end step, value at the end) of each phase, in order."""
        total = self.total_steps
        initial = self.peak_learning_rate / self.div_factor
        final = initial / self.final_div_factor
        if self.convention == "optax":
            peak_at, back_at, end_at = math.floor(self.pct_start * total), None, total
            if self.pct_final is not None:
                back_at = math.floor(self.pct_final * total)
        else:
            peak_at, back_at, end_at = self.pct_start * total - 1, None, total - 1
            if self.pct_final is not None:
                back_at = self.pct_final * total - 2
        middle = [] if back_at is None else [(back_at, initial)]
        return initial, [(peak_at, self.peak_learning_rate), *middle, (end_at, final)]

    def _anneal(self, start, end, fraction):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (np.cos(math.pi * fraction) + 1.0)
        return (end - start) * fraction + start

    def value(self, step):
        start_value, knots = self._knots()
        out = np.empty_like(step)
        pending = np.ones(step.shape, dtype=bool)
        start = 0.0
        for i, (end, end_value) in enumerate(knots):
            # a step belongs to the first phase whose end it has not passed (the last takes the rest)
            here = pending & ((step <= end) | (i == len(knots) - 1))
            out = np.where(here, self._anneal(start_value, end_value, _ramp(step, start, end)), out)
            pending &= ~here
            start, start_value = end, end_value
        return out


class CyclicalLearningRate(LearningRateSchedule):
    r"""lr = initial + (maximal - initial) * scale * triangle(step), rising over step_size, falling over step_size_down.

    torch's ``CyclicLR(base_lr, max_lr, step_size_up, step_size_down, mode, gamma)`` (its
    ``base_lr`` is ``initial_learning_rate`` here). ``mode`` sets the scale: ``"triangular"`` 1,
    ``"triangular2"`` halved every cycle (1/2^k in cycle k = 0, 1, ...), ``"exp_range"``
    gamma^step. torch's custom ``scale_fn`` (a Python function) has no counterpart: a config
    is plain data. On the command line the optimizer's learning rate is the lower bound.
    Reference: Smith, 2017, "Cyclical Learning Rates for Training Neural Networks".
    """

    registry_name = "cyclical_learning_rate"
    initial_learning_rate = Hyper(REQUIRED, low=0.0, fill="learning_rate", doc="the lower bound of the cycle")
    maximal_learning_rate = Hyper(REQUIRED, low=0.0, doc="the upper bound of the cycle")
    step_size = Hyper(2000.0, low=0.0, low_open=True, doc="steps rising from the lower to the upper bound")
    step_size_down = Hyper(None, low=0.0, low_open=True, doc="steps falling back (None: step_size)")
    mode = Hyper("triangular", kind=str, choices=("triangular", "triangular2", "exp_range"), doc="the scale")
    gamma = Hyper(1.0, low=0.0, high=1.0, low_open=True, doc="amplitude factor per step in exp_range mode")

    def value(self, step):
        up = self.step_size
        down = up if self.step_size_down is None else self.step_size_down
        period = up + down
        cycle = np.floor(step / period)
        position = step - cycle * period
        triangle = np.where(position <= up, position / up, (period - position) / down)
        if self.mode == "triangular2":
            triangle = triangle * np.power(0.5, cycle)
        elif self.mode == "exp_range":
            triangle = triangle * np.power(self.gamma, step)
        return self.initial_learning_rate + (self.maximal_learning_rate - self.initial_learning_rate) * triangle


class WarmupStableDecay(LearningRateSchedule):
    r"""lr: linear warmup to the peak, constant, then a decay to end_learning_rate over the last decay_fraction.

    In the decay phase, with p the fraction of it done, lr = end + (peak - end) * f(p), f one of
    ``"linear"`` 1 - p, ``"cosine"`` (1 + cos(pi p)) / 2, or ``"1-sqrt"`` 1 - sqrt(p), the
    cooldown Hägele et al. found to match a cosine schedule tuned to the run's length. The end
    value is held after total_steps. optax has the pieces (``linear_schedule`` warmup,
    ``constant_schedule``, ``linear_schedule`` or ``cosine_decay_schedule`` decay, joined by
    ``join_schedules``), torch the same through ``SequentialLR`` (``LinearLR``, ``ConstantLR``,
    ``LinearLR`` or ``CosineAnnealingLR``); the 1-sqrt decay has no peer. On the command line
    the optimizer's learning rate is the peak and the run's length total_steps.
    Reference: Hägele et al., 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
    Training Durations".
    """

    registry_name = "warmup_stable_decay"
    peak_learning_rate = _peak_rate("the learning rate of the stable phase")
    total_steps = _run_length("step at which the decay ends")
    warmup_steps = Hyper(0, kind=int, low=0, doc="steps of linear warmup")
    decay_fraction = Hyper(0.2, low=0.0, high=1.0, doc="fraction of total_steps spent decaying, at the end")
    decay_type = Hyper("linear", kind=str, choices=("linear", "cosine", "1-sqrt"), doc="shape of the decay")
    initial_learning_rate = Hyper(0.0, low=0.0, doc="learning rate at step 0 (the warmup's start)")
    end_learning_rate = Hyper(0.0, low=0.0, doc="learning rate at the end of the decay")

    def _decay_start(self):
        return self.total_steps - self.decay_fraction * self.total_steps

    def check(self):
        if self.warmup_steps > self._decay_start():
            raise ValueError(
                f"WarmupStableDecay: `warmup_steps` must end before the decay starts (at step {self._decay_start():g}"
                f" = total_steps * (1 - decay_fraction)); received warmup_steps={self.warmup_steps}"
            )

    def value(self, step):
        start = self._decay_start()
        p = _ramp(step, start, self.total_steps)
        shape = {"linear": 1.0 - p, "cosine": 0.5 * (1.0 + np.cos(math.pi * p)), "1-sqrt": 1.0 - np.sqrt(p)}
        decayed = self.end_learning_rate + (self.peak_learning_rate - self.end_learning_rate) * shape[self.decay_type]
        out = np.where(step < start, self.peak_learning_rate, decayed)
        if self.warmup_steps:
            rise = self.peak_learning_rate - self.initial_learning_rate
            out = np.where(step < self.warmup_steps, self.initial_learning_rate + rise * step / self.warmup_steps, out)
        return out


class InverseSqrtDecay(LearningRateSchedule):
    r"""lr = peak * sqrt(warmup_steps / step) from warmup_steps on, after a linear warmup from initial_learning_rate.

    fairseq's ``inverse_sqrt`` (``--lr`` is the peak, ``--warmup-updates`` warmup_steps,
    ``--warmup-init-lr`` initial_learning_rate; its update count is the step here). With
    initial_learning_rate = peak it is T5's lr = 1 / sqrt(max(step, warmup_steps)) scaled to
    the peak (T5: peak 0.01, warmup_steps 10^4). The Transformer's schedule is ``noam_decay``.
    """

    registry_name = "inverse_sqrt_decay"
    peak_learning_rate = _peak_rate("the learning rate at the end of warmup")
    warmup_steps = Hyper(4000, kind=int, low=1, doc="steps of linear warmup")
    initial_learning_rate = Hyper(0.0, low=0.0, doc="learning rate at step 0")

    def value(self, step):
        warm = self.warmup_steps
        rising = self.initial_learning_rate + (self.peak_learning_rate - self.initial_learning_rate) * step / warm
        decayed = self.peak_learning_rate * np.sqrt(warm / np.maximum(step, warm))
        return np.where(step < warm, rising, decayed)


class NoamDecay(LearningRateSchedule):
    r"""lr = scale * d_model^-0.5 * min(n^-0.5, n * warmup_steps^-1.5) with n = step + 1 (the Transformer's schedule).

    Vaswani et al. count training steps from 1 (as tensor2tensor's ``noam`` schedule and
    OpenNMT's ``noam`` decay do); the optimizer's first update is step 0 here, hence n = step + 1.
    The rate rises linearly to scale * (d_model * warmup_steps)^-0.5 at n = warmup_steps, then
    decays as n^-0.5: ``inverse_sqrt_decay`` with that peak, evaluated one step later.
    Reference: Vaswani et al., 2017, "Attention Is All You Need", eq. (3).
    """

    registry_name = "noam_decay"
    d_model = Hyper(REQUIRED, kind=int, low=1, doc="the model's width (sets the peak)")
    warmup_steps = Hyper(4000, kind=int, low=1, doc="steps of linear warmup")
    scale = Hyper(1.0, low=0.0, doc="multiplier of the whole schedule")

    def value(self, step):
        n = step + 1.0
        return self.scale * self.d_model**-0.5 * np.minimum(n**-0.5, n * self.warmup_steps**-1.5)


BUILTIN = (
    Constant,
    ExponentialDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
    InverseTimeDecay,
    CosineDecay,
    CosineDecayRestarts,
    LinearWarmup,
    SequentialSchedule,
    MultiStepDecay,
    OneCycle,
    CyclicalLearningRate,
    WarmupStableDecay,
    InverseSqrtDecay,
    NoamDecay,
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
