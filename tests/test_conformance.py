"""The conformance kit: every built-in optimizer and schedule passes it, and it catches broken ones."""

from __future__ import annotations

import numpy as np
import pytest
from test_schedules import EXAMPLES

import optlab
from optlab.hparams import Hyper
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


@pytest.mark.parametrize(
    ("cls", "prop"),
    [
        (WrongSign, "progress"),
        (Allocating, "in_place"),
        (HiddenState, "resume"),
        (Float64Scalars, "dtypes"),
        (Unstable, "finite"),
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


def test_broken_schedule_is_caught():
    with pytest.raises(ConformanceError, match="schedule_values"):
        check_schedule(NegativeSchedule)
