"""The schedules users bring from optax and torch: every step against the peers' own rates
(tests/reference/peer_schedules.json, written by make_peer_schedules.py with optax and torch),
values worked out by hand, argument errors, the conformance kit, configs and the command line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import optlab as run_optlab

from optlab import schedules
from optlab.schedules import (
    CyclicalLearningRate,
    InverseSqrtDecay,
    MultiStepDecay,
    NoamDecay,
    OneCycle,
    SequentialSchedule,
    WarmupStableDecay,
)
from optlab.testing import check_schedule

PEERS = json.loads((Path(__file__).parent / "reference" / "peer_schedules.json").read_text())
CASES = PEERS["cases"]
NEW = [
    SequentialSchedule,
    MultiStepDecay,
    OneCycle,
    CyclicalLearningRate,
    WarmupStableDecay,
    InverseSqrtDecay,
    NoamDecay,
]


def _case_id(case):
    return f"{case['peer']}-{case['optlab']['name']}-{CASES.index(case)}"


# -- against the peers, at every step ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_the_peer_at_every_step(case):
    expected = np.asarray(case["values"], dtype=np.float64)
    schedule = schedules.get(case["optlab"])
    steps = np.arange(expected.size)
    # float64 on both sides (optax with jax_enable_x64). rtol 1e-12; the atol, 1e-14 of the case's
    # largest rate, is for the end of a linear phase, where both peers compute
    # (end - start) * 1 + start: its rounding is relative to the peak, not to a tiny final rate
    # (a one-cycle's peak/25/1e4)
    atol = 1e-14 * expected.max()
    np.testing.assert_allclose(schedule(steps), expected, rtol=1e-12, atol=atol, err_msg=case["call"])
    for step in (0, expected.size // 2, expected.size - 1):
        assert schedule(step) == pytest.approx(expected[step], rel=1e-12, abs=atol)


def test_the_reference_covers_each_schedule_with_a_peer_that_has_it():
    by_peer = {}
    for case in CASES:
        by_peer.setdefault(case["optlab"]["name"], set()).add(case["peer"])
    assert by_peer["sequential_schedule"] == {"optax", "torch"}
    assert by_peer["one_cycle"] == {"optax", "torch"}
    assert by_peer["multi_step_decay"] == {"optax", "torch"}
    assert by_peer["exponential_decay"] == {"optax", "torch"}  # staircase: torch's StepLR
    assert by_peer["cyclical_learning_rate"] == {"torch"}  # optax has none
    assert by_peer["warmup_stable_decay"] == {"optax", "torch"}  # linear and cosine decays, built from pieces
    conventions = {c["optlab"].get("convention", "optax") for c in CASES if c["optlab"]["name"] == "one_cycle"}
    assert conventions == {"optax", "torch"}
    assert set(PEERS["versions"]) == {"optax", "jax", "torch"}
    # no peer has these: checked by hand below
    assert not by_peer.keys() & {"inverse_sqrt_decay", "noam_decay"}


def test_torch_and_optax_one_cycles_differ_by_where_the_phases_end():
    # the same arguments, two conventions: optax peaks at floor(0.3 * 20) = 6 and ends at 20,
    # torch peaks at 0.3 * 20 - 1 = 5 and ends at 19
    optax_like = OneCycle(0.1, 20)
    torch_like = OneCycle(0.1, 20, convention="torch")
    assert optax_like(6) == 0.1 and optax_like(5) < 0.1
    assert torch_like(5) == 0.1 and torch_like(6) < 0.1
    assert optax_like(19) > optax_like(20) == pytest.approx(0.1 / 25 / 1e4, rel=1e-12)
    assert torch_like(19) == pytest.approx(0.1 / 25 / 1e4, rel=1e-12)


# -- by hand --------------------------------------------------------------------------------------


def test_sequential_schedule_counts_each_schedule_from_its_boundary():
    halving = {"name": "exponential_decay", "initial_learning_rate": 1.0, "decay_steps": 1, "decay_rate": 0.5}
    s = SequentialSchedule([0.1, halving], [3])
    # 0.1 before step 3; from step 3 on, 1.0 * 0.5^(step - 3)
    assert [s(t) for t in (0, 2, 3, 4, 5)] == [0.1, 0.1, 1.0, 0.5, 0.25]
    nested = SequentialSchedule([0.2, s.get_config()], [10])
    assert nested(14) == 0.5  # the inner schedule sees step 4: 1.0 * 0.5^(4 - 3)


def test_a_later_schedule_never_sees_a_step_before_its_start():
    # noam_decay at step -5 would take (-4)^-0.5: the steps a schedule sees are clamped at its start
    s = SequentialSchedule([0.01, {"name": "noam_decay", "d_model": 16, "warmup_steps": 4}], [10])
    with np.errstate(all="raise"):
        values = s(np.arange(20))
    assert values[9] == 0.01 and values[10] == pytest.approx(0.25 * 4**-1.5)  # 16^-0.5 * 1 * 4^-1.5


def test_multi_step_decay_drops_at_each_milestone():
    s = MultiStepDecay(1.0, milestones=[2, 5], gamma=0.5)
    assert [s(t) for t in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    twice = MultiStepDecay(1.0, milestones=[3, 3], gamma=0.1)
    assert twice(2) == 1.0 and twice(3) == pytest.approx(0.01)  # listed twice: 0.1^2


def test_one_cycle_by_hand():
    # peak 1, initial 1/10 = 0.1, final 0.1/100 = 0.001
    linear = OneCycle(1.0, 10, pct_start=0.5, div_factor=10, final_div_factor=100, anneal_strategy="linear")
    # optax's convention: peak at floor(0.5 * 10) = 5, final at 10
    assert linear(0) == pytest.approx(0.1)
    assert linear(2) == pytest.approx(0.1 + 0.9 * 2 / 5)  # 0.46
    assert linear(5) == 1.0
    assert linear(8) == pytest.approx(1.0 - 0.999 * 3 / 5)  # 0.4006
    assert linear(10) == pytest.approx(0.001) and linear(50) == pytest.approx(0.001)
    # torch's: peak at 0.5 * 10 - 1 = 4, final at 9
    torch_like = OneCycle(1.0, 10, pct_start=0.5, div_factor=10, final_div_factor=100, anneal_strategy="linear",
                          convention="torch")  # fmt: skip
    assert torch_like(2) == pytest.approx(0.1 + 0.9 * 2 / 4)  # 0.55
    assert torch_like(4) == 1.0
    assert torch_like(6) == pytest.approx(1.0 - 0.999 * 2 / 5)  # 0.6004
    assert torch_like(9) == pytest.approx(0.001) and torch_like(12) == pytest.approx(0.001)
    # cosine, halfway down from peak 1 to 0.001: 0.001 + 0.999 / 2 * (cos(pi / 2) + 1) = 0.5005
    cosine = OneCycle(1.0, 13, div_factor=10, final_div_factor=100)  # peak at floor(3.9) = 3, final at 13
    assert cosine(8) == pytest.approx(0.5005)
    # three phases: up to 1 at 5, back to 0.1 at 15, down to 0.001 at 20
    three = OneCycle(1.0, 20, pct_start=0.25, pct_final=0.75, div_factor=10, final_div_factor=100,
                     anneal_strategy="linear")  # fmt: skip
    assert three(10) == pytest.approx(0.55) and three(15) == pytest.approx(0.1)
    assert three(18) == pytest.approx(0.1 - 0.099 * 3 / 5)  # 0.0406


def test_cyclical_learning_rate_by_hand():
    # between 0.1 and 0.5, 4 steps up and 4 down
    s = CyclicalLearningRate(0.1, 0.5, step_size=4)
    assert [s(t) for t in (0, 2, 4, 6, 8, 10)] == pytest.approx([0.1, 0.3, 0.5, 0.3, 0.1, 0.3])
    halving = CyclicalLearningRate(0.1, 0.5, step_size=4, mode="triangular2")
    assert halving(12) == pytest.approx(0.1 + 0.4 * 0.5)  # top of the second cycle: half the height
    assert halving(20) == pytest.approx(0.1 + 0.4 * 0.25)
    shrinking = CyclicalLearningRate(0.1, 0.5, step_size=4, mode="exp_range", gamma=0.5)
    assert shrinking(4) == pytest.approx(0.1 + 0.4 * 0.5**4)  # 0.125
    uneven = CyclicalLearningRate(0.0, 1.0, step_size=2, step_size_down=6)
    assert uneven(2) == 1.0 and uneven(5) == pytest.approx(0.5) and uneven(8) == 0.0


def test_warmup_stable_decay_by_hand():
    # warmup over 10 steps, stable up to step 80 (100 * (1 - 0.2)), decay over the last 20
    s = WarmupStableDecay(1.0, total_steps=100, warmup_steps=10, decay_type="1-sqrt")
    assert s(0) == 0.0 and s(5) == 0.5 and s(10) == 1.0 and s(80) == 1.0
    assert s(85) == pytest.approx(0.5)  # 1 - sqrt(5 / 20)
    assert s(95) == pytest.approx(1 - math.sqrt(0.75))
    assert s(100) == 0.0 and s(150) == 0.0
    to_floor = WarmupStableDecay(1.0, total_steps=100, warmup_steps=10, decay_type="1-sqrt", end_learning_rate=0.1)
    assert to_floor(85) == pytest.approx(0.1 + 0.9 * 0.5)
    for decay_type in ("linear", "cosine"):  # both are at half the height halfway through the decay
        assert WarmupStableDecay(1.0, 100, decay_type=decay_type)(90) == pytest.approx(0.5)
    assert WarmupStableDecay(1.0, 100, decay_type="cosine")(85) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # no decay phase: the peak up to total_steps, the end value from there on
    abrupt = WarmupStableDecay(0.3, 100, decay_fraction=0.0, end_learning_rate=0.01)
    assert abrupt(99) == 0.3 and abrupt(100) == 0.01 and abrupt(10_000) == 0.01


def test_inverse_sqrt_decay_by_hand():
    s = InverseSqrtDecay(0.5, warmup_steps=4, initial_learning_rate=0.1)
    assert s(0) == pytest.approx(0.1) and s(2) == pytest.approx(0.3)  # 0.1 + 0.4 * 2 / 4
    assert s(4) == 0.5
    assert s(16) == pytest.approx(0.25) and s(64) == pytest.approx(0.125)  # 0.5 * sqrt(4 / step)
    # T5: 1 / sqrt(max(step, 10^4)), i.e. 0.01 up to step 10^4
    t5 = InverseSqrtDecay(0.01, warmup_steps=10_000, initial_learning_rate=0.01)
    assert t5(0) == 0.01 and t5(5_000) == 0.01 and t5(10_000) == 0.01
    assert t5(40_000) == pytest.approx(1 / 200) and t5(1_000_000) == pytest.approx(1 / 1000)


def test_noam_decay_by_hand():
    # 2 * 16^-0.5 * min(n^-0.5, n * 4^-1.5) = 0.5 * min(n^-0.5, n / 8), n = step + 1
    s = NoamDecay(d_model=16, warmup_steps=4, scale=2.0)
    assert s(0) == pytest.approx(0.0625)  # n = 1: 0.5 * 1/8
    assert s(1) == pytest.approx(0.125)  # n = 2: 0.5 * 2/8
    assert s(3) == pytest.approx(0.25)  # n = 4: 0.5 * min(1/2, 4/8), the peak
    assert s(15) == pytest.approx(0.125)  # n = 16: 0.5 * 1/4
    assert s(63) == pytest.approx(0.0625)  # n = 64: 0.5 * 1/8
    paper = NoamDecay(d_model=512)  # the paper's base model: warmup 4000
    assert paper(3999) == pytest.approx(1 / math.sqrt(512 * 4000), rel=1e-12)
    assert paper(3999) == max(paper(np.arange(20_000)))


def test_noam_decay_is_inverse_sqrt_decay_one_step_later():
    d_model, warmup, scale = 64, 10, 3.0
    noam = NoamDecay(d_model, warmup, scale)
    inverse = InverseSqrtDecay(scale * (d_model * warmup) ** -0.5, warmup_steps=warmup)
    steps = np.arange(200)
    np.testing.assert_allclose(noam(steps), inverse(steps + 1), rtol=1e-12)


# -- arguments ------------------------------------------------------------------------------------

ONE_CYCLE = {"peak_learning_rate": 0.1, "total_steps": 100}
CYCLIC = {"initial_learning_rate": 0.1, "maximal_learning_rate": 1.0}
WSD = {"peak_learning_rate": 1.0, "total_steps": 100}
INVALID = [
    (SequentialSchedule, {"schedules": [0.1, 0.2], "boundaries": []}, "boundaries"),
    (SequentialSchedule, {"schedules": [0.1, 0.2, 0.3], "boundaries": [5, 5]}, "boundaries"),
    (SequentialSchedule, {"schedules": [0.1, 0.2], "boundaries": [-1]}, "boundaries"),
    (SequentialSchedule, {"schedules": [], "boundaries": []}, "schedules"),
    (SequentialSchedule, {"schedules": [0.1, None], "boundaries": [3]}, "schedules[1]"),
    (
        SequentialSchedule,
        {
            "schedules": [0.1, {"name": "cosine_decay", "initial_learning_rate": 0.1, "decay_steps": 0}],
            "boundaries": [3],
        },
        "schedules[1]",
    ),
    (MultiStepDecay, {"initial_learning_rate": 0.1, "milestones": [5, 3]}, "milestones"),
    (MultiStepDecay, {"initial_learning_rate": 0.1, "milestones": [-1]}, "milestones"),
    (MultiStepDecay, {"initial_learning_rate": 0.1, "milestones": [3], "gamma": -0.5}, "gamma"),
    (OneCycle, {**ONE_CYCLE, "total_steps": 0}, "total_steps"),
    (OneCycle, {**ONE_CYCLE, "pct_start": 1.5}, "pct_start"),
    (OneCycle, {**ONE_CYCLE, "pct_start": 0.5, "pct_final": 0.4}, "pct_final"),
    (OneCycle, {**ONE_CYCLE, "div_factor": 0.0}, "div_factor"),
    (OneCycle, {**ONE_CYCLE, "anneal_strategy": "cosine"}, "anneal_strategy"),
    (OneCycle, {**ONE_CYCLE, "convention": "keras"}, "convention"),
    (CyclicalLearningRate, {**CYCLIC, "step_size": 0}, "step_size"),
    (CyclicalLearningRate, {**CYCLIC, "mode": "triangle"}, "mode"),
    (CyclicalLearningRate, {**CYCLIC, "gamma": 1.5}, "gamma"),
    (CyclicalLearningRate, {**CYCLIC, "maximal_learning_rate": -1.0}, "maximal_learning_rate"),
    (WarmupStableDecay, {**WSD, "warmup_steps": 90}, "warmup_steps"),
    (WarmupStableDecay, {**WSD, "decay_type": "exponential"}, "decay_type"),
    (WarmupStableDecay, {**WSD, "decay_fraction": 1.5}, "decay_fraction"),
    (InverseSqrtDecay, {"peak_learning_rate": 0.1, "warmup_steps": 0}, "warmup_steps"),
    (InverseSqrtDecay, {"peak_learning_rate": -0.1}, "peak_learning_rate"),
    (NoamDecay, {"d_model": 0}, "d_model"),
]


@pytest.mark.parametrize(("cls", "kwargs", "field"), INVALID, ids=[f"{c.__name__}-{f}" for c, _, f in INVALID])
def test_invalid_arguments_are_one_line_naming_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=re.escape(f"`{field}`")) as error:
        cls(**kwargs)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{cls.__name__}: ")


def test_a_broken_sub_schedule_is_named_by_its_place_and_its_own_field():
    with pytest.raises(ValueError, match=r"SequentialSchedule: `schedules\[1\]`: CosineDecay: `decay_steps`"):
        SequentialSchedule([0.1, {"name": "cosine_decay", "initial_learning_rate": 0.1, "decay_steps": 0}], [3])


# -- the conformance kit and configs --------------------------------------------------------------

SETTINGS = [
    (
        SequentialSchedule,
        {"schedules": [0.05, {"name": "noam_decay", "d_model": 16, "warmup_steps": 4}], "boundaries": [7]},
    ),
    (MultiStepDecay, {"initial_learning_rate": 0.1, "milestones": [0, 10, 10, 300], "gamma": 0.5}),
    (OneCycle, ONE_CYCLE),
    (OneCycle, {**ONE_CYCLE, "convention": "torch", "pct_final": 0.6, "anneal_strategy": "linear"}),
    (OneCycle, {"peak_learning_rate": 0.1, "total_steps": 3, "convention": "torch"}),
    (CyclicalLearningRate, {**CYCLIC, "step_size": 7, "step_size_down": 3, "mode": "triangular2"}),
    (CyclicalLearningRate, {**CYCLIC, "step_size": 7, "mode": "exp_range", "gamma": 0.99}),
    (WarmupStableDecay, {**WSD, "warmup_steps": 10, "decay_type": "1-sqrt"}),
    (WarmupStableDecay, {**WSD, "decay_type": "cosine", "initial_learning_rate": 0.5, "end_learning_rate": 0.1}),
    (InverseSqrtDecay, {"peak_learning_rate": 0.1, "warmup_steps": 50}),
    (NoamDecay, {"d_model": 512, "warmup_steps": 100, "scale": 2.0}),
]


def test_settings_cover_every_new_schedule():
    assert {cls for cls, _ in SETTINGS} == set(NEW)
    assert set(NEW) <= set(schedules.BUILTIN)


@pytest.mark.parametrize(("cls", "kwargs"), SETTINGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(SETTINGS)])
def test_conformance_kit_passes(cls, kwargs):
    check_schedule(cls, **kwargs)


@pytest.mark.parametrize(("cls", "kwargs"), SETTINGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(SETTINGS)])
def test_config_round_trip(cls, kwargs):
    schedule = cls(**kwargs)
    config = schedule.get_config()
    assert config["name"] == cls.registry_name
    text = json.dumps(config)  # plain JSON, sub-schedules included
    again = schedules.get(json.loads(text))
    assert type(again) is cls and again.get_config() == config
    keras_form = schedules.get({"class_name": cls.__name__, "config": config})
    steps = np.arange(400)
    np.testing.assert_array_equal(again(steps), schedule(steps))
    np.testing.assert_array_equal(keras_form(steps), schedule(steps))


def test_sequential_schedule_takes_schedules_configs_and_numbers():
    direct = SequentialSchedule([schedules.Constant(0.1), {"name": "constant", "learning_rate": 0.2}, 0.3], [2, 4])
    assert [direct(t) for t in range(6)] == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    assert direct.get_config()["schedules"] == [
        {"name": "constant", "learning_rate": 0.1},
        {"name": "constant", "learning_rate": 0.2},
        {"name": "constant", "learning_rate": 0.3},
    ]


# -- the command line -----------------------------------------------------------------------------


def _built_schedule(overrides):
    from optlab.app.bench import compose
    from optlab.app.run import build

    _problem, optimizer, _callbacks = build(compose(["problem=seed_linear", *overrides]))
    return optimizer.get_config()["learning_rate"]


def test_the_command_line_fills_the_peak_and_the_run_length():
    # seed_linear is full-batch: one step per epoch, so 40 epochs are 40 steps
    common = ["optimizer.learning_rate=0.2", "trainer.epochs=40"]
    one_cycle = _built_schedule(["schedule=one_cycle", "schedule.convention=torch", *common])
    assert (one_cycle["peak_learning_rate"], one_cycle["total_steps"], one_cycle["convention"]) == (0.2, 40, "torch")
    wsd = _built_schedule(["schedule=warmup_stable_decay", "schedule.decay_type=1-sqrt", *common])
    assert (wsd["peak_learning_rate"], wsd["total_steps"], wsd["decay_type"]) == (0.2, 40, "1-sqrt")
    cyclic = _built_schedule(["schedule=cyclical_learning_rate", "schedule.maximal_learning_rate=1.0", *common])
    assert (cyclic["initial_learning_rate"], cyclic["maximal_learning_rate"]) == (0.2, 1.0)
    multi_step = _built_schedule(["schedule=multi_step_decay", "schedule.milestones=[10,20]", *common])
    assert (multi_step["initial_learning_rate"], multi_step["milestones"]) == (0.2, [10, 20])
    assert _built_schedule(["schedule=inverse_sqrt_decay", *common])["peak_learning_rate"] == 0.2
    noam = _built_schedule(["schedule=noam_decay", "schedule.d_model=64", *common])
    assert noam["d_model"] == 64


def test_the_command_line_takes_a_sequence_of_schedules():
    built = _built_schedule(
        [
            "schedule=sequential_schedule",
            "schedule.schedules=[{name:constant,learning_rate:0.1},0.05]",
            "schedule.boundaries=[3]",
        ]
    )
    assert built["schedules"] == [
        {"name": "constant", "learning_rate": 0.1},
        {"name": "constant", "learning_rate": 0.05},
    ]
    assert schedules.get(built)(3) == 0.05


def test_a_run_with_a_peer_schedule_exits_0(tmp_path):
    result = run_optlab(
        tmp_path,
        "problem=seed_linear",
        "schedule=one_cycle",
        "trainer.epochs=5",
        "tracking=none",
        "trainer.progress_bar=false",
    )
    assert result.returncode == 0, result.stderr
    # 5 steps, torch's final rate would be at step 4; optax's convention reaches it at step 5:
    # the rate Keras-style logs after the run (at step 5) is adam's 0.001 / 25 / 1e4
    assert re.search(r"learning_rate\b[^\n]*\b4e-09\b", result.stdout), result.stdout
