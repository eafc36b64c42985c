"""The optimizer API: lookup, configs, validation, errors, state, the flat path, dtypes.

Numerics against Keras are in test_keras_equivalence.py; hand-computed steps in test_update_rules.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from keras_reference import optimizer_reference, optlab_kwargs, run_optlab

import optlab
from optlab import bench
from optlab.optimizers import BUILTIN

MANIFEST, ARRAYS = optimizer_reference()
CASES = {c["id"]: c for c in MANIFEST["cases"]}
SHAPES = [tuple(s) for s in MANIFEST["shapes"]]
ALL = [cls.__name__ for cls in BUILTIN]


def make(cls_name, **kwargs):
    return getattr(optlab.optimizers, cls_name)(**kwargs)


def random_problem(shapes, dtype=np.float32, seed=0, flat=False):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    if flat:
        params = optlab.flatten(params, dtype=dtype)
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(6)]
    return params, grads


# -- lookup ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BUILTIN, ids=ALL)
def test_get_by_name_class_name_and_config(cls):
    by_name = optlab.optimizers.get(cls.registry_name)
    assert type(by_name) is cls
    assert type(optlab.optimizers.get(cls.__name__)) is cls  # Keras spells them by class name
    assert type(optlab.optimizers.get(cls.__name__.upper())) is cls  # case-insensitive
    # Keras defaults
    for name, hyper in cls.hyperparameters().items():
        if name == "learning_rate":
            assert by_name.learning_rate == hyper.default
        else:
            assert getattr(by_name, name) == hyper.default
    configured = optlab.optimizers.get({"name": cls.registry_name, "learning_rate": 0.25})
    assert type(configured) is cls and configured.learning_rate == 0.25
    assert optlab.optimizers.get(configured) is configured
    assert optlab.optimizers.get(None) is None


def test_keras_aliases_and_keras_serialized_form():
    assert type(optlab.optimizers.get("schedulefreeadamw")) is optlab.optimizers.ScheduleFreeAdamW
    opt = optlab.optimizers.get({"class_name": "Adam", "config": {"learning_rate": 0.5, "beta_1": 0.8}})
    assert type(opt) is optlab.optimizers.Adam and opt.learning_rate == 0.5 and opt.beta_1 == 0.8


def test_keras_defaults_spot_checks():
    # numbers from keras/src/optimizers/*.py (Keras 3.15 signatures)
    assert optlab.optimizers.SGD().learning_rate == 0.01
    assert optlab.optimizers.Adam().epsilon == 1e-7
    assert optlab.optimizers.Adagrad().initial_accumulator_value == 0.1
    assert optlab.optimizers.Adadelta().rho == 0.95
    assert optlab.optimizers.AdamW().weight_decay == 0.004
    assert optlab.optimizers.Lion().learning_rate == 0.001 and optlab.optimizers.Lion().beta_2 == 0.99
    assert optlab.optimizers.Ftrl().learning_rate_power == -0.5
    assert optlab.optimizers.RMSprop().rho == 0.9
    assert optlab.optimizers.Lamb().epsilon == 1e-7
    assert optlab.optimizers.Adafactor().clip_threshold == 1.0


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(ValueError) as err:
        optlab.optimizers.get("adamm")
    message = str(err.value)
    assert "'adamm'" in message and "Did you mean 'adam'" in message
    for cls in BUILTIN:
        assert cls.registry_name in message


def test_unknown_argument_names_the_closest_one():
    with pytest.raises(ValueError, match=r"`betta_1` \(did you mean `beta_1`\?\)"):
        optlab.optimizers.Adam(betta_1=0.5)
    with pytest.raises(ValueError, match="betta_1"):
        optlab.optimizers.get({"name": "adam", "betta_1": 0.5})


def test_uninterpretable_identifier():
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier"):
        optlab.optimizers.get(3.5)


# -- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_config_round_trip(case_id):
    case = CASES[case_id]
    opt = optlab.optimizers.get(case["keras_class"], **optlab_kwargs(case["kwargs"]))
    config = opt.get_config()
    assert config["name"] == opt.name
    again = type(opt).from_config(config)
    assert again.get_config() == config
    assert optlab.optimizers.get({"class_name": type(opt).__name__, "config": config}).get_config() == config
    assert optlab.optimizers.deserialize(optlab.optimizers.serialize(opt)).get_config() == config


def test_config_is_plain_data():
    import json

    opt = optlab.optimizers.Adam(learning_rate=optlab.schedules.ExponentialDecay(0.1, 10, 0.5))
    config = opt.get_config()
    assert json.loads(json.dumps(config)) == config
    assert config["learning_rate"] == {
        "name": "exponential_decay",
        "initial_learning_rate": 0.1,
        "decay_steps": 10,
        "decay_rate": 0.5,
        "staircase": False,
    }


def test_from_config_rejects_another_optimizers_config():
    with pytest.raises(ValueError, match=r"not recognized: `momentum`.*`nesterov`"):
        optlab.optimizers.Adam.from_config(optlab.optimizers.SGD().get_config())


# -- name: a label (Keras), not a lookup key ------------------------------------------------------
KERAS_CONFIGS = json.loads((Path(__file__).parent / "reference" / "keras_configs.json").read_text())


@pytest.mark.parametrize("kind", ["default", "named"])
@pytest.mark.parametrize("cls", BUILTIN, ids=ALL)
def test_from_config_takes_keras_own_config_unchanged(cls, kind):
    # Keras 3.15's get_config() of every optimizer (tests/reference/make_keras_configs.py)
    config = KERAS_CONFIGS[kind][cls.__name__]
    opt = cls.from_config(config)
    assert opt.name == config["name"]  # adam_w, rm_sprop, schedule_free_adam_w, my_label
    for key, value in config.items():
        if key == "learning_rate":
            assert opt.learning_rate == pytest.approx(value)
        elif key != "name":
            assert opt.get_config()[key] == value, key
    via_get = optlab.optimizers.get({"class_name": cls.__name__, "config": config})
    assert type(via_get) is cls and via_get.name == config["name"]


def test_keras_serialized_optimizer_with_a_schedule():
    serialized = KERAS_CONFIGS["serialized"]["Adam_with_schedule"]  # module/registered_name keys included
    opt = optlab.optimizers.get(serialized)
    assert type(opt) is optlab.optimizers.Adam and opt.name == "my_adam" and opt.clipnorm == 1.0
    assert isinstance(opt.learning_rate_schedule, optlab.schedules.CosineDecay)
    assert opt.learning_rate_schedule(5) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))


@pytest.mark.parametrize("cls", BUILTIN, ids=ALL)
def test_default_names_are_keras_and_unique(cls, monkeypatch):
    monkeypatch.setattr(optlab.names, "_NAME_UIDS", {})
    assert [cls().name, cls().name] == KERAS_CONFIGS["two_defaults"][cls.__name__]
    assert cls(name="fixed").name == "fixed"
    assert cls().name == KERAS_CONFIGS["two_defaults"][cls.__name__][0] + "_2"  # a given name does not count


@pytest.mark.parametrize("cls", BUILTIN, ids=ALL)
def test_a_custom_name_survives_the_round_trip(cls):
    opt = cls(name="my_adam")
    config = opt.get_config()
    assert config["name"] == "my_adam"
    assert cls.from_config(config).name == "my_adam"
    assert optlab.optimizers.deserialize(optlab.optimizers.serialize(opt)).name == "my_adam"
    assert optlab.optimizers.get(json.loads(json.dumps(optlab.optimizers.serialize(opt)))).name == "my_adam"


def test_flat_config_name_is_the_registry_name():
    opt = optlab.optimizers.get({"name": "rmsprop", "rho": 0.8})
    assert type(opt) is optlab.optimizers.RMSprop and opt.rho == 0.8
    with pytest.raises(ValueError, match=r"'name' is the registered name.*'class_name'"):
        optlab.optimizers.get(optlab.optimizers.Adam(name="my_adam").get_config())


def test_name_must_be_a_string():
    with pytest.raises(ValueError, match=r"`name` must be a string"):
        optlab.optimizers.Adam(name=3)


# -- validation --------------------------------------------------------------------------------

INVALID = [
    # (class, argument, value, words the message must contain)
    ("SGD", "learning_rate", -0.1, ">= 0"),
    ("SGD", "momentum", 1.5, "[0, 1]"),
    ("SGD", "nesterov", "yes", "True or False"),
    ("Adam", "beta_1", 1.0, "[0, 1)"),
    ("Adam", "beta_1", -0.1, "[0, 1)"),
    ("Adam", "beta_2", 1.0, "[0, 1)"),
    ("Adam", "epsilon", 0.0, "> 0"),
    ("Adam", "epsilon", -1e-8, "> 0"),
    ("Adam", "learning_rate", "fast", "a float >= 0"),
    ("Adam", "learning_rate", float("nan"), ">= 0"),
    ("RMSprop", "rho", 1.0, "[0, 1)"),
    ("Adagrad", "initial_accumulator_value", -1.0, ">= 0"),
    ("Adadelta", "rho", 1.2, "[0, 1"),
    ("Ftrl", "learning_rate_power", 0.5, "<= 0"),
    ("Ftrl", "l1_regularization_strength", -1.0, ">= 0"),
    ("Ftrl", "initial_accumulator_value", -0.1, ">= 0"),
    ("Lion", "beta_1", 0.0, "(0, 1]"),  # Keras: beta_1 = 0 would be SignSGD
    ("Adafactor", "beta_2_decay", 0.5, "<= 0"),
    ("Adam", "clipnorm", 0.0, "> 0"),
    ("Adam", "clipvalue", -1.0, "> 0"),
    ("Adam", "global_clipnorm", -1.0, "> 0"),
    ("Adam", "weight_decay", -0.1, ">= 0"),
    ("Adam", "ema_momentum", 1.5, "[0, 1]"),
    ("Adam", "ema_overwrite_frequency", 0, ">= 1"),
    ("Adam", "gradient_accumulation_steps", 1, ">= 2"),
    ("Adam", "gradient_accumulation_steps", 2.5, "an integer"),
    ("Adam", "loss_scale_factor", 0.0, "> 0"),
]


@pytest.mark.parametrize(
    ("cls_name", "arg", "value", "allowed"), INVALID, ids=[f"{c}-{a}-{v}" for c, a, v, _ in INVALID]
)
def test_invalid_hyperparameter_names_argument_and_range(cls_name, arg, value, allowed):
    with pytest.raises(ValueError) as err:
        make(cls_name, **{arg: value})
    message = str(err.value)
    assert f"`{arg}`" in message and allowed in message and cls_name in message


@pytest.mark.parametrize("cls", BUILTIN, ids=ALL)
def test_every_bounded_hyperparameter_rejects_values_outside_its_range(cls):
    for name, hyper in cls.hyperparameters().items():
        bad = []
        if hyper.low is not None:
            bad.append(hyper.low if hyper.low_open else hyper.low - 1)
        if hyper.high is not None:
            bad.append(hyper.high if hyper.high_open else hyper.high + 1)
        for value in bad:
            with pytest.raises(ValueError, match=f"`{name}`"):
                cls(**{name: value})


def test_assignment_is_validated_too():
    opt = optlab.optimizers.Adam()
    with pytest.raises(ValueError, match="beta_1"):
        opt.beta_1 = 2.0
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0
    assert opt.beta_1 == 0.9 and opt.learning_rate == 0.001


def test_only_one_clipping_option():
    with pytest.raises(ValueError, match="only one of"):
        optlab.optimizers.SGD(clipnorm=1.0, clipvalue=1.0)


def test_integers_are_accepted_for_float_arguments():
    opt = optlab.optimizers.SGD(learning_rate=1, momentum=0)
    assert opt.learning_rate == 1.0 and isinstance(opt.momentum, float)


# -- gradient errors happen before anything is updated -------------------------------------------


def _snapshot(opt, params):
    meta, arrays = opt.get_state()
    return [p.copy() for p in params], meta["raw_iterations"], {k: v.copy() for k, v in arrays.items()}


def _unchanged(opt, params, snap):
    before_params, before_iter, before_arrays = snap
    meta, arrays = opt.get_state()
    assert meta["raw_iterations"] == before_iter
    for p, q in zip(params, before_params):
        np.testing.assert_array_equal(p, q)
    for k in before_arrays:
        np.testing.assert_array_equal(arrays[k], before_arrays[k])


@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
@pytest.mark.parametrize(
    ("make_bad", "error", "words"),
    [
        (lambda g: [g[0], g[1].reshape(-1), *g[2:]], ValueError, "gradient 1 has shape"),
        (lambda g: [g[0], g[1].astype(np.float64), *g[2:]], ValueError, "gradient 1 has dtype float64"),
        (lambda g: g[:-1], ValueError, "received 3 gradients for 4 parameters"),
    ],
    ids=["shape", "dtype", "count"],
)
def test_bad_gradients_raise_before_any_update(make_bad, error, words, flat):
    params, grads = random_problem(SHAPES, flat=flat)
    opt = optlab.optimizers.Adam(learning_rate=0.1, use_ema=True)
    opt.apply_gradients(zip(grads[0], params))
    snap = _snapshot(opt, params)
    with pytest.raises(error, match=words):
        opt.apply(make_bad(grads[1]), params)
    _unchanged(opt, params, snap)
    # and it still works afterwards
    opt.apply_gradients(zip(grads[1], params))
    assert opt.iterations == 2


def test_bad_gradient_on_first_call_leaves_parameters_alone():
    params, grads = random_problem(SHAPES)
    before = [p.copy() for p in params]
    opt = optlab.optimizers.SGD()
    with pytest.raises(ValueError, match="gradient 2 has shape"):
        opt.apply([grads[0][0], grads[0][1], grads[0][2].T, grads[0][3]], params)
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)
    assert opt.iterations == 0


def test_parameters_must_be_float_arrays_updated_in_place():
    opt = optlab.optimizers.SGD()
    with pytest.raises(TypeError, match="dtype int64"):
        opt.apply([np.ones(3, np.int64)], [np.ones(3, np.int64)])
    with pytest.raises(TypeError, match="not a numpy array"):
        optlab.optimizers.SGD().apply([np.ones(3)], [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="C-contiguous"):
        optlab.optimizers.SGD().apply([np.ones(3)], [np.ones(6)[::2]])
    with pytest.raises(TypeError, match="parameter 1 has dtype float64 but parameter 0 has float32"):
        optlab.optimizers.SGD().apply([np.ones(3, np.float32), np.ones(3)], [np.ones(3, np.float32), np.ones(3)])


def test_other_parameters_after_build_are_rejected():
    opt = optlab.optimizers.SGD()
    opt.apply([np.ones(3)], [np.ones(3)])
    with pytest.raises(ValueError, match="built for parameter 0 of shape"):
        opt.apply([np.ones(4)], [np.ones(4)])
    with pytest.raises(ValueError, match="built for 1 parameter, received 2"):
        opt.apply([np.ones(3), np.ones(3)], [np.ones(3), np.ones(3)])


def test_missing_gradients_skip_their_parameters_with_a_warning():
    params, grads = random_problem(SHAPES)
    before = [p.copy() for p in params]
    opt = optlab.optimizers.SGD(learning_rate=0.5)
    with pytest.warns(UserWarning, match=r"parameters \[1\]"):
        opt.apply([grads[0][0], None, grads[0][2], grads[0][3]], params)
    np.testing.assert_array_equal(params[1], before[1])
    np.testing.assert_allclose(params[0], before[0] - np.float32(0.5) * grads[0][0], rtol=1e-6)
    with pytest.raises(ValueError, match="No gradients provided"):
        opt.apply([None] * 4, params)


# -- the learning rate ----------------------------------------------------------------------------


def test_learning_rate_float_schedule_and_callable():
    p, g = np.zeros(1), np.ones(1)
    opt = optlab.optimizers.SGD(learning_rate=0.5)
    opt.apply([g], [p])
    assert p[0] == -0.5
    opt.learning_rate = 0.25
    assert opt.learning_rate == 0.25
    opt.apply([g], [p])
    assert p[0] == -0.75

    schedule = optlab.schedules.PiecewiseConstantDecay([2], [1.0, 0.1])
    opt = optlab.optimizers.SGD(learning_rate=schedule)
    p = np.zeros(1)
    seen = []
    for _ in range(4):
        seen.append(opt.learning_rate)  # the value the next step will use
        opt.apply([g], [p])
    assert seen == [1.0, 1.0, 1.0, 0.1]  # Keras: boundary 2 is still in the first piece
    assert p[0] == pytest.approx(-3.1)
    assert opt.learning_rate_schedule is schedule
    with pytest.raises(TypeError, match="schedule"):
        opt.learning_rate = 0.5

    calls = []
    opt = optlab.optimizers.SGD(learning_rate=lambda: calls.append(1) or 0.125)
    p = np.zeros(1)
    opt.apply([g], [p])
    assert p[0] == -0.125 and calls


def test_schedule_sees_every_call_but_iterations_count_applied_steps():
    # Keras: with gradient accumulation the schedule is evaluated at the raw call count
    seen = []

    def schedule(step):
        seen.append(int(step))
        return 0.1

    opt = optlab.optimizers.SGD(learning_rate=schedule, gradient_accumulation_steps=2)
    p, g = np.zeros(1), np.ones(1)
    for _ in range(4):
        opt.apply([g], [p])
    assert opt.iterations == 2
    assert seen[-1] == 3  # the update on the 4th call evaluates the schedule at step 3


def test_a_schedule_object_with_gradient_accumulation():
    # calls 1..4 run at raw counts 0..3; the updates happen on calls 2 and 4, at raw counts 1 and 3
    schedule = optlab.schedules.PiecewiseConstantDecay([2], [1.0, 0.1])  # 1.0 up to step 2 included, then 0.1
    opt = optlab.optimizers.SGD(learning_rate=schedule, gradient_accumulation_steps=2)
    p = np.zeros(1)
    applied = []
    for g in (1.0, 3.0, 5.0, 7.0):
        opt.apply([np.array([g])], [p])
        applied.append(opt.applied_learning_rate)
    # update 1: mean gradient 2 at the rate of raw step 1 (1.0); update 2: mean 6 at raw step 3 (0.1)
    assert p[0] == pytest.approx(-(2 * 1.0 + 6 * 0.1))
    assert applied == [1.0, 1.0, 1.0, 0.1]
    assert opt.iterations == 2 and opt.learning_rate == 0.1


def test_applied_learning_rate_is_the_rate_the_step_used():
    # SGD at a zero-argument callable's rate: the parameter moves by exactly the rate the step applied
    rates = iter([0.5, 0.25, 0.125])
    opt = optlab.optimizers.SGD(learning_rate=lambda: next(rates))  # Keras calls it once per step
    p = np.zeros(1)
    assert opt.applied_learning_rate is None
    moves = []
    for _ in range(3):
        before = p[0]
        opt.apply([np.ones(1)], [p])
        moves.append(before - p[0])
        assert opt.applied_learning_rate == moves[-1]
    assert moves == [0.5, 0.25, 0.125]


def test_an_optimizer_takes_a_schedule_as_an_object_or_a_config():
    config = {"name": "exponential_decay", "initial_learning_rate": 0.5, "decay_steps": 1, "decay_rate": 0.5}
    built = [
        optlab.optimizers.SGD(learning_rate=optlab.schedules.get(config)),
        optlab.optimizers.SGD(learning_rate=config),
        optlab.optimizers.get("sgd", learning_rate=config),
        optlab.optimizers.get({"name": "sgd", "learning_rate": config}),
    ]
    for opt in built:
        p = np.zeros(1)
        for _ in range(3):
            opt.apply([np.ones(1)], [p])
        assert p[0] == -(0.5 + 0.25 + 0.125)  # 0.5 * 0.5^step at steps 0, 1, 2
        assert opt.get_config()["learning_rate"] == {**config, "staircase": False}
    with pytest.raises(ValueError, match="Unknown schedule 'exponential_decy'"):
        optlab.optimizers.SGD(learning_rate={**config, "name": "exponential_decy"})


def test_keyword_overrides_win_over_the_config():
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 0.5, "momentum": 0.5}, learning_rate=0.25)
    assert opt.learning_rate == 0.25 and opt.momentum == 0.5
    p = np.zeros(1)
    opt.apply([np.ones(1)], [p])
    assert p[0] == -0.25


# -- dtypes, determinism, flat path ----------------------------------------------------------------


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_float64_follows_the_float32_reference(case_id):
    case = CASES[case_id]
    trajectory, _opt, params = run_optlab(case, flat_buffer=False, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in params)
    reference = ARRAYS[case_id + "/params"]
    # float32 (Keras) against float64 (optlab): within float32's accumulated rounding
    np.testing.assert_allclose(trajectory, reference, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("cls", BUILTIN, ids=ALL)
def test_runs_are_deterministic(cls):
    results = []
    for _ in range(2):
        params, grads = random_problem([(300, 200), (7,)], flat=True)
        opt = cls(learning_rate=0.01)
        for g in grads:
            opt.apply(g, params)
        results.append(params.flat.copy())
    np.testing.assert_array_equal(results[0], results[1])


def _count_updates(opt):
    calls = []
    original = opt.update

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    opt.update = counting
    return calls


@pytest.mark.parametrize("cls", BUILTIN, ids=ALL)
def test_flat_buffer_takes_one_update_call_per_step(cls):
    shapes = [(4, 3), (5,), (2, 6), (3,)] * 5
    params, grads = random_problem(shapes, flat=True)
    separate, _ = random_problem(shapes, flat=False)
    flat_opt, sep_opt = cls(learning_rate=0.01), cls(learning_rate=0.01)
    flat_calls, sep_calls = _count_updates(flat_opt), _count_updates(sep_opt)
    for g in grads:
        flat_opt.apply(g, params)
        sep_opt.apply(g, separate)
    assert len(flat_calls) == len(grads)
    if cls.elementwise_update:  # separate arrays too, read in place after the first (checked) step
        assert len(sep_calls) == len(shapes) + len(grads) - 1
    else:  # one call per array
        assert len(sep_calls) == len(grads) * len(shapes)
    for a, b in zip(params, separate):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_flat_gradients_are_used_without_copying():
    shapes = [(10, 3), (4,)]
    params = optlab.flat_parameters(shapes)
    grads = optlab.flat_like(params)
    grads.flat[:] = 1.0
    opt = optlab.optimizers.SGD(learning_rate=0.5)
    opt.apply(grads, params)
    np.testing.assert_array_equal(params.flat, -0.5)
    grads.flat[:] = 2.0  # same gradient arrays, new values: the cached view must see them
    opt.apply(grads, params)
    np.testing.assert_array_equal(params.flat, -1.5)


def test_parallel_and_serial_kernels_agree():
    from optlab import kernels

    n = kernels.PARALLEL_MIN_SIZE * 2 + 3
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    big = optlab.optimizers.Adam(learning_rate=0.1)
    p_big = p0.copy()
    big.apply([g], [p_big])
    # the same elements split into arrays below the parallel threshold
    pieces = np.array_split(p0.copy(), 5)
    small = optlab.optimizers.Adam(learning_rate=0.1)
    small.apply(np.array_split(g, 5), pieces)
    np.testing.assert_array_equal(p_big, np.concatenate(pieces))


def test_scalar_and_empty_parameters():
    params = [np.array(1.0), np.zeros((0, 3)), np.ones(2)]
    grads = [np.array(2.0), np.zeros((0, 3)), np.ones(2)]
    for cls in BUILTIN:
        if cls.__name__ == "Muon":
            continue  # Muon's Newton-Schulz needs matrices; it falls back to AdamW elsewhere (tested there)
        ps = [p.copy() for p in params]
        cls(learning_rate=0.1).apply(grads, ps)
        assert np.isfinite(ps[0]) and ps[0] < 1.0, cls.__name__
        assert ps[1].shape == (0, 3)


# -- state: save, restore, resume bit for bit --------------------------------------------------------


@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_resume_is_bit_for_bit(case_id, flat, tmp_path):
    case = CASES[case_id]
    full, _, _ = run_optlab(case, flat_buffer=flat)
    stop = 11  # mid-accumulation for the accumulation case (11 % 3 != 0)
    first, opt, params = run_optlab(case, flat_buffer=flat, steps=stop)
    path = tmp_path / "state.npz"
    opt.save_state(path)
    saved_params = [p.copy() for p in params]
    serialized = optlab.optimizers.serialize(opt)
    del opt, params

    resumed = optlab.optimizers.deserialize(serialized)
    resumed.load_state(path)
    assert resumed.iterations == first.shape[0] // (case["kwargs"].get("gradient_accumulation_steps") or 1)
    params = optlab.flatten(saved_params) if flat else saved_params
    grads_all = ARRAYS["grads"].astype(np.float32)
    for step in range(stop, len(grads_all)):
        grads = []
        start = 0
        for shape in SHAPES:
            size = math.prod(shape)
            grads.append(grads_all[step][start : start + size].reshape(shape).copy())
            start += size
        resumed.apply(grads, params)
        np.testing.assert_array_equal(np.concatenate([p.ravel() for p in params]), full[step])
    if resumed.use_ema:
        fresh = run_optlab(case, flat_buffer=flat)[1]
        for a, b in zip(resumed.ema_weights, fresh.ema_weights):
            np.testing.assert_array_equal(a, b)


def test_state_file_is_plain_npz_with_json_metadata(tmp_path):
    params, grads = random_problem(SHAPES)
    opt = optlab.optimizers.Adam(use_ema=True, gradient_accumulation_steps=2)
    opt.apply(grads[0], params)
    opt.save_state(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as data:  # no pickle anywhere
        names = set(data.files)
    assert {"slot/momentum", "slot/velocity", "ema", "accumulator", "__meta__"} <= names


def test_state_of_another_optimizer_is_refused(tmp_path):
    params, grads = random_problem(SHAPES)
    opt = optlab.optimizers.Adam()
    opt.apply(grads[0], params)
    opt.save_state(tmp_path / "s.npz")
    with pytest.raises(ValueError, match="of optimizer 'adam', not 'sgd'"):
        optlab.optimizers.SGD().load_state(tmp_path / "s.npz")
    with pytest.raises(ValueError, match="options need"):
        optlab.optimizers.Adam(use_ema=True).load_state(tmp_path / "s.npz")


def test_unbuilt_state_round_trips(tmp_path):
    opt = optlab.optimizers.Adam(learning_rate=0.3)
    opt.save_state(tmp_path / "s.npz")
    again = optlab.optimizers.Adam(learning_rate=0.3)
    again.load_state(tmp_path / "s.npz")
    assert not again.built and again.iterations == 0


# -- weight decay exclusion, EMA finalisation --------------------------------------------------------


def test_exclude_from_weight_decay():
    params = [np.ones(3), np.ones(3)]
    opt = optlab.optimizers.SGD(learning_rate=0.5, weight_decay=0.1)
    opt.exclude_from_weight_decay(indices=[1])
    opt.apply([np.zeros(3), np.zeros(3)], params)
    np.testing.assert_allclose(params[0], 1 - 0.5 * 0.1)  # p - p * wd * lr
    np.testing.assert_array_equal(params[1], 1.0)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_weight_decay(indices=[0])


def _two_passes(cls):
    """``cls`` with an ``update`` that does not take the decay: the base class applies it in its own pass."""

    class TwoPasses(cls):
        registry_name = f"{cls.registry_name}_two_passes_test"

        def update(self, param, grad, state, lr, step, seg):
            super().update(param, grad, state, lr, step, seg)

    return TwoPasses


FUSED = [
    ("adamw", {}, 7),
    ("adamw", {"amsgrad": True}, 9),
    ("adam", {"weight_decay": 0.3}, 7),
    ("lion", {"weight_decay": 0.3}, 5),
]


@pytest.mark.parametrize(("name", "args", "traffic"), FUSED, ids=[f"{n}{a}" for n, a, _ in FUSED])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_weight_decay_is_bit_identical_to_the_separate_pass(name, args, traffic, dtype):
    rng = np.random.default_rng(5)
    shapes = [(7, 3), (11,), (2, 2, 2)]
    fused_params = optlab.flat_parameters(shapes, dtype)
    for p in fused_params:
        p[...] = rng.normal(size=p.shape)
    plain = [np.array(p) for p in fused_params]
    cls = type(optlab.optimizers.get(name))
    config = {"learning_rate": 0.05, "weight_decay": 0.3, **args}
    fused, two_passes = cls(**config), _two_passes(cls)(**config)
    assert fused.fuses_weight_decay and not two_passes.fuses_weight_decay  # an override without decay does not
    for _ in range(6):
        grads = [rng.normal(size=s).astype(dtype) for s in shapes]
        fused.apply(grads, fused_params)
        two_passes.apply(grads, plain)
    for a, b in zip(fused_params, plain):  # (the two-pass side decays in the base class's own pass)
        np.testing.assert_array_equal(a, b)
    assert bench.traffic(fused) == traffic and bench.traffic(two_passes) == traffic + 2


def test_partly_excluded_flat_buffer_decays_only_the_included_arrays():
    params = optlab.flat_parameters([(2,), (2,)], np.float64)
    for p in params:
        p[...] = 1.0
    opt = optlab.optimizers.AdamW(learning_rate=0.5, weight_decay=0.1)
    opt.exclude_from_weight_decay(indices=[1])
    opt.apply([np.zeros(2), np.zeros(2)], params)  # zero gradients: Adam's step is 0
    np.testing.assert_array_equal(params[0], 1 - 0.5 * 0.1)
    np.testing.assert_array_equal(params[1], 1.0)


def test_ema_first_step_copies_parameters_and_finalize_writes_them_back():
    p = np.array([1.0])
    opt = optlab.optimizers.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5)
    opt.apply([np.array([1.0])], [p])  # p = 0; EMA at iterations == 0 uses momentum 0 -> ema = 0
    assert opt.ema_weights[0][0] == 0.0
    opt.apply([np.array([1.0])], [p])  # p = -1; ema = 0.5 * 0 + 0.5 * -1
    assert opt.ema_weights[0][0] == -0.5
    opt.finalize_variable_values()
    assert p[0] == -0.5


def test_ema_overwrite_frequency():
    p = np.array([0.0])
    opt = optlab.optimizers.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2)
    opt.apply([np.array([-1.0])], [p])  # p = 1, ema = 1
    assert p[0] == 1.0
    opt.apply([np.array([-1.0])], [p])  # p = 2, ema = 1.5, then overwritten (iterations hits 2)
    assert p[0] == 1.5


def test_each_class_shows_its_own_signature():
    import inspect

    adam = inspect.signature(optlab.optimizers.Adam)
    sgd = inspect.signature(optlab.optimizers.SGD)
    assert list(adam.parameters)[:5] == ["learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad"]
    assert adam.parameters["learning_rate"].default == 0.001
    assert list(sgd.parameters)[:3] == ["learning_rate", "momentum", "nesterov"]
    assert "name" in adam.parameters


# -- plugin authors: `learning_rate = Hyper(...)` -------------------------------------------------


def test_a_plain_hyper_learning_rate_becomes_the_learning_rate_descriptor():
    from optlab.hparams import Hyper

    class PlainRate(optlab.optimizers.Optimizer):
        registry_name = "plain_rate_test"
        learning_rate = Hyper(0.01, low=0.0, doc="step size")

        def update(self, param, grad, state, lr, step, seg):
            param -= lr * grad

    opt = PlainRate()
    assert opt.learning_rate == 0.01 and opt.get_config()["learning_rate"] == 0.01
    p = np.ones(2, np.float32)
    opt.apply([np.ones(2, np.float32)], [p])
    np.testing.assert_array_equal(p, np.float32(1) - np.float32(0.01))  # 1 - lr * 1, by hand
    scheduled = PlainRate(learning_rate=optlab.schedules.ExponentialDecay(0.5, 1, 0.5))
    assert scheduled.learning_rate == 0.5
    assert PlainRate.from_config(scheduled.get_config()).learning_rate_schedule.get_config()["decay_rate"] == 0.5
    with pytest.raises(TypeError, match=r"float default.*LearningRate\(0.01\)` \(it has none\)$"):  # (no sentinel)

        class NoDefault(optlab.optimizers.Optimizer):
            learning_rate = Hyper(Hyper.REQUIRED)
