"""Schedules: hand-computed values, validation, lookup and configs (Keras's values are in test_keras_equivalence.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import optlab
from optlab import schedules
from optlab.schedules import BUILTIN

EXAMPLES = {
    "Constant": {"learning_rate": 0.3},
    "ExponentialDecay": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5},
    "PiecewiseConstantDecay": {"boundaries": [10, 20], "values": [1.0, 0.5, 0.1]},
    "PolynomialDecay": {"initial_learning_rate": 0.1, "decay_steps": 10},
    "InverseTimeDecay": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5},
    "CosineDecay": {"initial_learning_rate": 0.1, "decay_steps": 10},
    "CosineDecayRestarts": {"initial_learning_rate": 0.1, "first_decay_steps": 10},
    "LinearWarmup": {
        "schedule": {"name": "cosine_decay", "initial_learning_rate": 0.1, "decay_steps": 10},
        "warmup_steps": 5,
    },
    # optax's and torch's schedules: checked against the peers in test_peer_schedules.py
    "SequentialSchedule": {"schedules": [0.05, {"name": "constant", "learning_rate": 0.1}], "boundaries": [5]},
    "MultiStepDecay": {"initial_learning_rate": 0.1, "milestones": [10, 20]},
    "OneCycle": {"peak_learning_rate": 0.1, "total_steps": 30},
    "CyclicalLearningRate": {"initial_learning_rate": 0.01, "maximal_learning_rate": 0.1, "step_size": 5},
    "WarmupStableDecay": {"peak_learning_rate": 0.1, "total_steps": 30, "warmup_steps": 5},
    "InverseSqrtDecay": {"peak_learning_rate": 0.1, "warmup_steps": 5},
    "NoamDecay": {"d_model": 64, "warmup_steps": 5},
}


def test_examples_cover_every_builtin():
    assert set(EXAMPLES) == {c.__name__ for c in BUILTIN}


@pytest.mark.parametrize("cls", BUILTIN, ids=[c.__name__ for c in BUILTIN])
def test_lookup_and_config_round_trip(cls):
    schedule = schedules.get({"name": cls.registry_name, **EXAMPLES[cls.__name__]})
    assert type(schedule) is cls
    assert type(schedules.get({"name": cls.__name__, **EXAMPLES[cls.__name__]})) is cls
    config = schedule.get_config()
    assert json.loads(json.dumps(config)) == config
    again = cls.from_config(config)
    steps = np.arange(40)
    np.testing.assert_array_equal(again(steps), schedule(steps))
    assert schedules.deserialize(schedules.serialize(schedule)).get_config() == config


def test_numbers_become_constants_and_unknown_names_list_known_ones():
    assert schedules.get(0.5)(1000) == 0.5
    assert isinstance(schedules.get(2), schedules.Constant)
    with pytest.raises(ValueError, match="Did you mean 'cosine_decay'") as err:
        schedules.get({"name": "cosine_decy", "initial_learning_rate": 1.0, "decay_steps": 2})
    assert "exponential_decay" in str(err.value)


def test_exponential_decay_by_hand():
    s = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert s(0) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.05)
    assert s(5) == pytest.approx(0.1 * 0.5**0.5)
    staircase = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert staircase(19) == pytest.approx(0.05) and staircase(20) == pytest.approx(0.025)


def test_piecewise_constant_boundaries_belong_to_the_left_piece():
    s = schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    assert [s(t) for t in (0, 10, 11, 20, 21, 1000)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]


def test_polynomial_decay_by_hand():
    s = schedules.PolynomialDecay(1.0, decay_steps=10, end_learning_rate=0.0, power=2.0)
    assert s(5) == pytest.approx(0.25)
    assert s(10) == 0.0 and s(50) == 0.0
    cyc = schedules.PolynomialDecay(1.0, decay_steps=10, end_learning_rate=0.0, power=1.0, cycle=True)
    # cycle: decay_steps grows to 10 * ceil(step / 10): at step 15 the horizon is 20
    assert cyc(15) == pytest.approx(0.25)


def test_inverse_time_decay_by_hand():
    s = schedules.InverseTimeDecay(1.0, decay_steps=10, decay_rate=0.5)
    assert s(10) == pytest.approx(1 / 1.5)
    st = schedules.InverseTimeDecay(1.0, decay_steps=10, decay_rate=0.5, staircase=True)
    assert st(9) == 1.0 and st(10) == pytest.approx(1 / 1.5)


def test_cosine_decay_with_warmup_by_hand():
    s = schedules.CosineDecay(1.0, decay_steps=10, alpha=0.1)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.9 * 0.5 + 0.1)
    assert s(10) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    w = schedules.CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=4)
    assert w(2) == pytest.approx(0.5)  # linear from 0 to the target over 4 steps
    assert w(4) == pytest.approx(1.0)
    assert w(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))  # decay runs after the warmup


def test_cosine_decay_restarts_by_hand():
    s = schedules.CosineDecayRestarts(1.0, first_decay_steps=10, t_mul=2.0, m_mul=0.5)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(0.5)  # restart at 10 with amplitude m_mul
    assert s(20) == pytest.approx(0.5 * 0.5)  # halfway through the 20-step second period


def test_linear_warmup_wraps_any_schedule():
    inner = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    s = schedules.LinearWarmup(inner, warmup_steps=4, initial_learning_rate=0.02)
    assert s(0) == pytest.approx(0.02)
    assert s(2) == pytest.approx(0.06)
    assert s(4) == pytest.approx(0.1)  # the wrapped schedule starts at its own step 0
    assert s(14) == pytest.approx(0.05)
    config = s.get_config()
    assert config["schedule"]["name"] == "exponential_decay"
    assert schedules.get(config)(14) == pytest.approx(0.05)


def test_vectorised_and_scalar_calls_agree():
    for cls in BUILTIN:
        s = schedules.get({"name": cls.registry_name, **EXAMPLES[cls.__name__]})
        steps = np.arange(60)
        values = s(steps)
        assert values.shape == (60,)
        assert all(s(int(t)) == pytest.approx(v) for t, v in zip(steps, values))
        assert isinstance(s(3), float)


INVALID = [
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.5}, "decay_steps"),
    (
        "ExponentialDecay",
        {"initial_learning_rate": -0.1, "decay_steps": 10, "decay_rate": 0.5},
        "initial_learning_rate",
    ),
    ("PiecewiseConstantDecay", {"boundaries": [10, 20], "values": [1.0, 0.5]}, "values"),
    ("PiecewiseConstantDecay", {"boundaries": [20, 10], "values": [1.0, 0.5, 0.1]}, "boundaries"),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": -1}, "decay_steps"),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 10, "t_mul": 0.0}, "t_mul"),
    ("LinearWarmup", {"schedule": 0.1, "warmup_steps": 0}, "warmup_steps"),
]


@pytest.mark.parametrize(("cls_name", "kwargs", "arg"), INVALID, ids=[f"{c}-{a}" for c, _, a in INVALID])
def test_invalid_arguments_name_the_field(cls_name, kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        getattr(schedules, cls_name)(**kwargs)


def test_missing_required_argument():
    with pytest.raises(TypeError, match="missing required argument `decay_steps`"):
        schedules.ExponentialDecay(0.1, decay_rate=0.5)


def test_schedule_drives_an_optimizer():
    opt = optlab.optimizers.SGD(learning_rate=schedules.PiecewiseConstantDecay([1], [1.0, 0.5]))
    p = np.zeros(1)
    for _ in range(3):
        opt.apply([np.ones(1)], [p])
    assert p[0] == -2.5  # steps 0 and 1 at 1.0, step 2 at 0.5


class _NanAfter(schedules.LearningRateSchedule):
    """0.1 for three steps, then NaN: a schedule with a bug."""

    registry_name = "nan_after_test"
    start = optlab.hparams.Hyper(0.1, low=0.0)

    def value(self, step):
        return np.where(step >= 3, np.nan, self.start)


def test_a_schedule_that_gives_nan_is_named_and_the_step_is_not_taken():
    # once, the run finished with NaN parameters and advice to lower the learning rate
    opt = optlab.optimizers.SGD(learning_rate=_NanAfter())
    p = np.zeros(2)
    for _ in range(3):
        opt.apply([np.ones(2)], [p])
    np.testing.assert_allclose(p, [-0.3, -0.3])  # three steps of 0.1
    with pytest.raises(ValueError, match=r"schedule nan_after_test\(start=0\.1\) gave nan at step 3; a learning rate"):
        opt.apply([np.ones(2)], [p])
    np.testing.assert_allclose(p, [-0.3, -0.3])
    assert opt.iterations == 3


def test_a_callable_rate_below_zero_is_named():
    def backwards(step):
        return -0.5

    opt = optlab.optimizers.Adam(learning_rate=backwards)
    with pytest.raises(ValueError, match=r"schedule backwards gave -0\.5 at step 0"):
        opt.apply([np.ones(2)], [np.zeros(2)])


def test_the_trainer_stops_on_a_nan_schedule_naming_it():
    from optlab.trainer import Trainer

    trainer = Trainer("seed_linear", optlab.optimizers.SGD(learning_rate=_NanAfter()), epochs=10)
    with pytest.raises(ValueError, match="nan_after_test"):
        trainer.fit()
    assert trainer.step == 3


def test_the_conformance_kit_reports_a_nan_schedule_by_its_values_only():
    # its config round trip is sound: NaN == NaN there (it once failed as "gives other values")
    from optlab.testing import ConformanceError, schedule_checks

    failed = {}
    for check in schedule_checks(_NanAfter):
        try:
            check()
        except ConformanceError as error:
            failed[str(check).split(":")[1]] = str(error)
    assert list(failed) == ["values"] and "not finite" in failed["values"]
