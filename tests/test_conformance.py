"""The conformance kit: every built-in optimizer and schedule passes it, and it catches broken ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_schedules import EXAMPLES

import optlab
from optlab.hparams import Hyper
from optlab.kernels import kernel
from optlab.optimizers import BUILTIN, SGD, Optimizer
from optlab.testing import (
    ConformanceError,
    check_optimizer,
    check_schedule,
    optimizer_checks,
    schedule_checks,
)

# arguments at which each method makes progress on a quadratic in 300 steps: Adadelta with
# Zeiler's own settings (learning rate 1, epsilon 1e-6; Keras's 1e-3 and 1e-7 start far slower)
KWARGS = {"Adadelta": {"learning_rate": 1.0, "epsilon": 1e-6}}
# every registered optimizer: the built-ins and any installed plugin's
OPTIMIZER_CASES = [
    check
    for _name, cls, _source in optlab.optimizers.registry.items()
    for check in optimizer_checks(cls, **KWARGS.get(cls.__name__, {"learning_rate": 0.05}))
]


def test_the_table_covers_the_builtins():
    covered = {str(check).split(":")[0] for check in OPTIMIZER_CASES}
    assert {cls.__name__ for cls in BUILTIN} <= covered


@pytest.mark.parametrize("check", OPTIMIZER_CASES, ids=str)
def test_registered_optimizers_conform(check):
    check()


SCHEDULE_KWARGS = {  # test_schedules' examples, with the options that exercise more of the code
    **EXAMPLES,
    "PolynomialDecay": {"initial_learning_rate": 0.1, "decay_steps": 10, "cycle": True},
    "CosineDecay": {"initial_learning_rate": 0.1, "decay_steps": 10, "warmup_target": 0.2, "warmup_steps": 5},
    "LinearWarmup": {"schedule": {"name": "constant", "learning_rate": 0.1}, "warmup_steps": 5},
}


@pytest.mark.parametrize(
    "check",
    [c for cls in optlab.schedules.BUILTIN for c in schedule_checks(cls, **SCHEDULE_KWARGS[cls.__name__])],
    ids=str,
)
def test_builtin_schedules_conform(check):
    check()


# -- broken optimizers are caught, each by the property it breaks -----------------------------------


class WrongSign(SGD):
    registry_name = "wrong_sign"

    def update(self, param, grad, state, lr, step, seg):
        param += lr * grad


class Allocating(SGD):
    registry_name = "allocating"

    def update(self, param, grad, state, lr, step, seg):
        self.history = [*getattr(self, "history", []), grad.copy()]
        param -= lr * grad


class HiddenState(Optimizer):
    """Keeps its momentum in a plain attribute: not saved, so a resumed run differs."""

    registry_name = "hidden_state"
    beta = Hyper(0.9, low=0.0, high=1.0)

    def slots(self):
        return {}

    def update(self, param, grad, state, lr, step, seg):
        key = id(param)
        store = self.__dict__.setdefault("_hidden", {})
        m = store.setdefault(key, np.zeros_like(param))
        m *= self.beta
        m += grad
        param -= lr * m


class Float64Scalars(SGD):
    """Computes in float64 and writes back: fine, but this one also rounds float32 badly."""

    registry_name = "float64_scalars"

    def update(self, param, grad, state, lr, step, seg):
        if param.dtype == np.float32:
            param -= np.float32(0.9) * lr * grad  # a different rule in float32
        else:
            param -= lr * grad


class Unstable(SGD):
    registry_name = "unstable"

    def update(self, param, grad, state, lr, step, seg):
        with np.errstate(divide="ignore", invalid="ignore"):
            param -= lr * grad / np.abs(grad)


class RewritesConfig(optlab.optimizers.Adam):
    """Writes a constant of its own into the config: the round trip of the config alone held."""

    registry_name = "rewrites_config"

    def get_config(self):
        return {**super().get_config(), "beta_1": 0.5}


class DropsEpsilon(optlab.optimizers.Adam):
    registry_name = "drops_epsilon"

    def get_config(self):
        config = super().get_config()
        config.pop("epsilon")
        return config


class IgnoresDecay(SGD):
    """Declares the fused weight decay (``decay`` in update's signature) and never applies it."""

    registry_name = "ignores_decay"

    def update(self, param, grad, state, lr, step, seg, decay=None):
        param -= lr * grad


@kernel(elementwise=True)
def _normalized_step(x, g, lr):
    total = 0.0
    for i in range(g.shape[0]):
        total += g[i] * g[i]
    scale = lr / math.sqrt(total + 1e-12)
    for i in range(x.shape[0]):
        x[i] -= scale * g[i]


class DeclaredElementwise(SGD):
    """Normalises by the norm of what its kernel is given, declared element-wise: it is not."""

    registry_name = "declared_elementwise"
    elementwise_update = True

    def update(self, param, grad, state, lr, step, seg):
        _normalized_step(param, grad, lr)


class Noisy(SGD):
    """Unseeded randomness: a resumed run differs too, but that is not what to fix."""

    registry_name = "noisy"

    def update(self, param, grad, state, lr, step, seg):
        param -= lr * grad * param.dtype.type(1.0 + 1e-3 * np.random.default_rng().random())


@pytest.mark.parametrize(
    ("cls", "prop"),
    [
        (WrongSign, "progress"),
        (Allocating, "in_place"),
        (HiddenState, "resume"),
        (Float64Scalars, "dtypes"),
        (Unstable, "finite"),
        # a plugin author's trial: each passed the kit, or was reported under another property
        (RewritesConfig, "config_round_trip"),
        (DropsEpsilon, "config_round_trip"),
        (IgnoresDecay, "option:weight_decay"),
        (DeclaredElementwise, "elementwise"),
        (Noisy, "deterministic"),
    ],
    ids=lambda x: x if isinstance(x, str) else x.__name__,
)
def test_broken_optimizers_fail_the_property_they_break(cls, prop):
    with pytest.raises(ConformanceError) as err:
        check_optimizer(cls, learning_rate=0.05)
    assert err.value.property == prop
    assert "how to fix:" in str(err.value)


def test_kit_rejects_non_optimizers():
    with pytest.raises(TypeError, match="Optimizer subclass"):
        optimizer_checks(object)


class NegativeSchedule(optlab.schedules.LearningRateSchedule):
    registry_name = "negative"

    def value(self, step):
        return 0.1 - 0.001 * step


class BranchingSchedule(optlab.schedules.LearningRateSchedule):
    registry_name = "branching"

    def value(self, step):
        return 0.1 if step < 3 else 0.01  # (Python's if: an array of steps has no truth value)


def test_broken_schedule_is_caught():
    with pytest.raises(ConformanceError, match="schedule_values"):
        check_schedule(NegativeSchedule)
    with pytest.raises(ConformanceError) as err:  # (it was numpy's own ValueError, naming no check)
        check_schedule(BranchingSchedule)
    assert err.value.property == "schedule_values" and "The truth value of an array" in str(err.value)
