"""The per-step fast paths (issue 13): gradients checked by signature, flat parameters with
separate gradient arrays, the fixed cost's shortcuts, and the callback hooks nobody uses.

Each fast path must give exactly what the general one gives: the references here are the same
step taken the plain way (separate parameter arrays with separate gradients), compared bit for bit.
"""

import math
import warnings

import numpy as np
import pytest

import optlab
from optlab.callbacks import Callback, CallbackList, History
from optlab.kernels import kernel, prange
from optlab.trainer import Trainer

SHAPES = [(3, 4), (5,), (), (2, 1, 3)]

#: optimizers and generic options whose steps go through different parts of the base class
CASES = [
    ("adam", {}),
    ("adam", {"weight_decay": 0.01, "amsgrad": True}),
    ("adamw", {"clipnorm": 0.05}),
    ("sgd", {"momentum": 0.9, "global_clipnorm": 0.1}),
    ("sgd", {"clipvalue": 0.01, "use_ema": True}),
    ("rmsprop", {"gradient_accumulation_steps": 2}),
    ("nadam", {"loss_scale_factor": 4.0}),
    ("lion", {"weight_decay": 0.1}),
]


def _gradients(rng, steps, dtype):
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def _run(name, options, params, grads_per_step, make_grads):
    opt = optlab.optimizers.get({"name": name, **options})
    for k, grads in enumerate(grads_per_step):
        opt.apply(make_grads(grads, k), params)
    return [np.array(p) for p in params]


def _start(rng, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{'-'.join(o) or 'plain'}" for n, o in CASES])
def test_flat_parameters_with_fresh_separate_gradients_match_the_other_layouts(name, options, dtype):
    rng = np.random.default_rng(3)
    start = _start(rng, dtype)
    steps = _gradients(rng, 6, dtype)

    separate = _run(name, options, [p.copy() for p in start], steps, lambda g, k: [a.copy() for a in g])

    flat_params = optlab.flatten(start, dtype=dtype)
    flat_grads = optlab.flat_like(flat_params)

    def into_flat(g, k):
        for view, a in zip(flat_grads, g):
            view[...] = a
        return flat_grads

    all_flat = _run(name, options, flat_params, steps, into_flat)

    fresh_params = optlab.flatten(start, dtype=dtype)
    fresh = _run(name, options, fresh_params, steps, lambda g, k: [a.copy() for a in g])  # new arrays each step

    for a, b, c in zip(separate, all_flat, fresh):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_vectors_with_fresh_gradients_are_gathered_along_their_axis_and_match():
    """All-1-D parameters: the gather concatenates along the axis (the other layouts flatten)."""
    rng = np.random.default_rng(4)
    shapes = [(7,), (1,), (300,), (5,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    steps = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    plain = [p.copy() for p in start]
    flat = optlab.flatten(start, dtype=np.float32)
    a, b = optlab.optimizers.get("adam"), optlab.optimizers.get("adam")
    for g in steps:
        a.apply([x.copy() for x in g], plain)
        b.apply([x.copy() for x in g], flat)
    for p, q in zip(plain, flat):
        assert p.tobytes() == q.tobytes()


def test_one_flat_parameter_takes_its_gradient_without_a_copy_and_matches():
    rng = np.random.default_rng(0)
    start = rng.standard_normal(1000).astype(np.float32)
    steps = [rng.standard_normal(1000).astype(np.float32) for _ in range(4)]
    plain = start.copy()
    flat = optlab.flat_parameters([(1000,)], np.float32)
    flat.flat[:] = start
    a, b = optlab.optimizers.get("adam"), optlab.optimizers.get("adam")
    for g in steps:
        a.apply([g.copy()], [plain])
        b.apply([g.copy()], flat)
    assert plain.tobytes() == flat[0].tobytes()


def test_gradients_that_are_views_of_one_buffer_in_another_order_are_gathered():
    """Views back to back, but not in the parameters' order: not the flat gradient."""
    rng = np.random.default_rng(1)
    start = _start(rng, np.float32)
    steps = _gradients(rng, 3, np.float32)
    reference = _run("adam", {}, [p.copy() for p in start], steps, lambda g, k: g)

    def reordered(g, k):
        buffer = optlab.flatten(g[::-1], dtype=np.float32)  # the last parameter's gradient first
        return list(buffer)[::-1]

    result = _run("adam", {}, optlab.flatten(start, dtype=np.float32), steps, reordered)
    for a, b in zip(reference, result):
        assert a.tobytes() == b.tobytes()


def test_strided_and_array_like_gradients_are_accepted_as_before():
    rng = np.random.default_rng(2)
    start = _start(rng, np.float64)
    steps = _gradients(rng, 3, np.float64)
    reference = _run("sgd", {"momentum": 0.5}, [p.copy() for p in start], steps, lambda g, k: g)

    def strided(g, k):  # the same values, not contiguous
        return [np.asfortranarray(a) if a.ndim > 1 else a for a in g]

    def nested(g, k):  # plain Python lists and floats
        return [a.tolist() for a in g]

    for make in (strided, nested):
        result = _run("sgd", {"momentum": 0.5}, optlab.flatten(start, dtype=np.float64), steps, make)
        for a, b in zip(reference, result):
            assert a.tobytes() == b.tobytes()


def test_replacing_an_item_of_the_same_gradient_list_is_seen():
    """The plan remembers the last step's arrays; a list changed in place between steps is not stale."""
    params = optlab.flat_parameters([(2,), (2,)], np.float64, fill=1.0)
    grads = list(optlab.flat_like(params))
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 1.0})
    opt.apply(grads, params)
    grads[1] = np.array([1.0, 2.0])  # the list object is the same; its second array is new
    opt.apply(grads, params)
    np.testing.assert_array_equal(params.flat, [1.0, 1.0, 0.0, -1.0])


@pytest.mark.parametrize("flat", [True, False], ids=["flat-params", "separate-params"])
def test_wrong_gradients_raise_the_same_errors(flat):
    params = optlab.flat_parameters([(2,), (3,)], np.float32) if flat else [np.zeros(2, np.float32), np.zeros(3)]
    if not flat:
        params[1] = params[1].astype(np.float32)
    opt = optlab.optimizers.get("adam")
    opt.apply([np.ones(2, np.float32), np.ones(3, np.float32)], params)
    before = [np.array(p) for p in params]
    with pytest.raises(ValueError, match=r"Adam: gradient 1 has shape \(2,\) but its parameter has shape \(3,\)"):
        opt.apply([np.ones(2, np.float32), np.ones(2, np.float32)], params)
    with pytest.raises(ValueError, match=r"Adam: gradient 0 has dtype float64 but its parameter has dtype float32"):
        opt.apply([np.ones(2), np.ones(3, np.float32)], params)
    with pytest.raises(ValueError, match=r"Adam: received 1 gradients for 2 parameters"):
        opt.apply([np.ones(2, np.float32)], params)
    for p, b in zip(params, before):  # nothing moved
        assert p.tobytes() == b.tobytes()
    assert opt.iterations == 1


def test_a_gradient_reshaped_in_place_is_refused_after_it_passed():
    """Shapes are checked at every step: the same array object, reshaped in place, is caught."""
    params = optlab.flat_parameters([(2, 2), (2,)], np.float32)
    grads = optlab.flat_like(params)
    opt = optlab.optimizers.get("sgd")
    opt.apply(grads, params)
    grads[0].shape = (4,)
    with pytest.raises(ValueError, match=r"gradient 0 has shape \(4,\) but its parameter has shape \(2, 2\)"):
        opt.apply(grads, params)


def test_a_missing_gradient_still_warns_and_leaves_its_parameter():
    params = optlab.flat_parameters([(2,), (2,)], np.float32, fill=1.0)
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 1.0})
    with pytest.warns(UserWarning, match=r"Gradients do not exist for parameters \[0\]"):
        opt.apply([None, np.ones(2, np.float32)], params)
    np.testing.assert_array_equal(params.flat, [1.0, 1.0, 0.0, 0.0])


def test_apply_gradients_returns_iterations_with_accumulation():
    params = [np.zeros(2, np.float32)]
    opt = optlab.optimizers.get({"name": "sgd", "gradient_accumulation_steps": 2})
    counts = [opt.apply_gradients([(np.ones(2, np.float32), params[0])]) for _ in range(5)]
    assert counts == [0, 1, 1, 2, 2]


def test_a_rate_changed_between_steps_is_used():
    """The rate in the parameters' dtype is remembered while it is the same object; a new one is taken."""
    params = [np.zeros(1, np.float32)]
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 1.0})
    opt.apply([np.ones(1, np.float32)], params)
    opt.learning_rate = 0.5
    opt.apply([np.ones(1, np.float32)], params)
    assert params[0][0] == np.float32(-1.5)


def test_adams_step_size_is_the_formula_in_the_parameters_dtype():
    """The step size the kernel makes (``adam_alpha``, compiled) against numpy's scalar arithmetic in
    the parameters' dtype, Keras's order (the step converted to the dtype first), bit for bit."""
    from optlab.optimizers.adam import adam_alpha, adam_betas

    for dt in (np.float32, np.float64):
        like = np.zeros(1, dt)
        for beta_1, beta_2, rate in ((0.9, 0.999, 0.01), (0.5, 0.9999, 3e-4), (0.95, 0.98, 1.0)):
            b1, b2, omb1, omb2 = adam_betas(dt, beta_1, beta_2)
            assert omb1.tobytes() == dt(1.0 - beta_1).tobytes() and omb2.tobytes() == dt(1.0 - beta_2).tobytes()
            for step in (*range(1, 300), 1000, 10**6, 2**24 + 1, 10**7 + 3):
                lr, t = dt(rate), dt(step)
                expected = lr * dt(math.sqrt(dt(1) - dt(beta_2) ** t)) / (dt(1) - dt(beta_1) ** t)
                alpha = adam_alpha(like, lr, b1, b2, step)
                assert dt(alpha).tobytes() == dt(expected).tobytes(), (dt, beta_1, beta_2, step)


def test_typed_scalars_are_the_dtype_conversion_and_keep_the_sign_of_zero():
    from optlab.kernels import typed

    for dt in (np.float32, np.float64):
        for value in (0.1, 1e-7, 0.999, 3, 1e300 if dt is np.float64 else 1e30):
            for _ in range(2):  # made, then remembered
                got = typed(dt, value)
                assert type(got) is dt and got.tobytes() == dt(value).tobytes()
        assert np.signbit(typed(dt, -0.0)) and not np.signbit(typed(dt, 0.0))
    assert type(typed(np.float64, 0.5)) is np.float64 and type(typed(np.float32, 0.5)) is np.float32


def test_a_hyperparameter_changed_between_steps_is_used():
    """Adam's epsilon and betas in the parameters' dtype are remembered by value: a new value is taken.
    Reference: the second step by hand (numpy float32, Keras's order of operations)."""
    f = np.float32
    g1, g2 = np.array([1e-3, -2e-3], f), np.array([3e-3, 1e-3], f)
    params = [np.array([0.5, -0.5], f)]
    opt = optlab.optimizers.get({"name": "adam", "learning_rate": 0.1})
    opt.apply([g1], params)
    opt.epsilon, opt.beta_1 = 1e-3, 0.5
    opt.apply([g2], params)
    m = np.zeros(2, f) + (g1 - np.zeros(2, f)) * f(1 - 0.9)
    v = np.zeros(2, f) + (g1 * g1 - np.zeros(2, f)) * f(1 - 0.999)
    p = np.array([0.5, -0.5], f) - m * (f(0.1) * f(math.sqrt(f(1) - f(0.999))) / (f(1) - f(0.9))) / (
        np.sqrt(v) + f(1e-7)
    )
    m = m + (g2 - m) * f(1 - 0.5)
    v = v + (g2 * g2 - v) * f(1 - 0.999)
    alpha = f(0.1) * f(math.sqrt(f(1) - f(0.999) ** f(2))) / (f(1) - f(0.5) ** f(2))
    p = p - m * alpha / (np.sqrt(v) + f(1e-3))
    np.testing.assert_allclose(params[0], p, rtol=1e-6)


def test_gradients_that_change_kind_between_steps_take_the_right_path():
    """The per-step fast path checks every step: fresh C arrays, then strided ones, then views of one
    buffer, then some views and some not, all give the plain layout's parameters bit for bit; a gradient of
    another dtype or shape is then refused, naming it, and nothing moves."""
    rng = np.random.default_rng(5)
    start = _start(rng, np.float32)
    steps = _gradients(rng, 4, np.float32)
    reference = _run("adam", {"weight_decay": 0.01}, [p.copy() for p in start], steps, lambda g, k: g)

    def changing(g, k):
        if k == 0:
            return [a.copy() for a in g]
        if k == 1:  # strided views (every other element)
            return [np.stack([a, a], axis=-1)[..., 0] for a in g]
        if k == 2:
            return optlab.flatten(g, dtype=np.float32)
        return [*optlab.flatten(g[:2], dtype=np.float32), *(a.copy() for a in g[2:])]  # some views, some not

    params = optlab.flatten(start, dtype=np.float32)
    opt = optlab.optimizers.get({"name": "adam", "weight_decay": 0.01})
    for k, g in enumerate(steps):
        opt.apply(changing(g, k), params)
    for a, b in zip(reference, params):
        assert a.tobytes() == b.tobytes()
    before = params.flat.copy()
    with pytest.raises(ValueError, match=r"gradient 1 has dtype float64 but its parameter has dtype float32"):
        opt.apply([steps[0][0], steps[0][1].astype(np.float64), *steps[0][2:]], params)
    with pytest.raises(ValueError, match=r"gradient 3 has shape \(3, 2\) but its parameter has shape \(2, 1, 3\)"):
        opt.apply([*steps[0][:3], steps[0][3].reshape(3, 2)], params)
    assert params.flat.tobytes() == before.tobytes() and opt.iterations == 4


def test_an_empty_step_on_no_parameters_is_still_a_no_op():
    opt = optlab.optimizers.get("adam")
    opt.build([])
    opt.apply([], [])
    opt.apply_gradients([])
    assert opt.iterations == 0


# -- callbacks: hooks nobody uses are skipped, the others see what they saw --------------------


class _Counts(Callback):
    def __init__(self):
        super().__init__()
        self.calls = []


class _OldNames(_Counts):
    """Keras's older batch hook names only."""

    def on_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch, dict(logs)))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, dict(logs)))


class _EpochEnd(_Counts):
    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, sorted(logs)))


def test_callback_list_calls_only_the_hooks_a_callback_defines():
    old, epoch_end, history = _OldNames(), _EpochEnd(), History()
    callbacks = CallbackList([old, epoch_end, history])
    assert callbacks.listeners("on_train_batch_end") == [old]
    assert callbacks.listeners("on_train_batch_begin") == [old]
    assert callbacks.listeners("on_epoch_end") == [epoch_end, history]
    assert callbacks.listeners("on_epoch_begin") == []
    assert callbacks.listeners("resume") == []


def test_a_hook_set_on_the_instance_is_called():
    cb = _Counts()
    cb.on_epoch_begin = lambda epoch, logs=None: cb.calls.append(("epoch_begin", epoch))
    Trainer("seed_linear", "sgd", [cb], epochs=2).fit()
    assert cb.calls == [("epoch_begin", 0), ("epoch_begin", 1)]


def test_older_batch_hook_names_still_receive_the_logs():
    old = _OldNames()
    Trainer("seed_linear", {"name": "sgd", "learning_rate": 0.1}, [old], epochs=2).fit()
    assert [c[:2] for c in old.calls] == [("begin", 0), ("end", 0), ("begin", 0), ("end", 0)]
    assert old.calls[0][2] == {} and sorted(old.calls[1][2]) == ["learning_rate", "loss"]
    assert old.calls[1][2]["learning_rate"] == 0.1


def test_a_callback_added_between_fits_is_called():
    trainer = Trainer("seed_linear", "sgd", epochs=2)
    trainer.fit()
    late = _EpochEnd()
    trainer.callbacks.callbacks.append(late)
    trainer.fit()
    assert [c[1] for c in late.calls] == [0, 1]
    assert late.calls[0][2] == sorted(trainer.history.history)


def test_a_hook_replaced_between_fits_is_the_one_called():
    cb = _EpochEnd()
    trainer = Trainer("seed_linear", "sgd", [cb], epochs=1)
    trainer.fit()
    cb.on_epoch_end = lambda epoch, logs=None: cb.calls.append(("replaced", epoch))
    trainer.fit()
    assert [c[0] for c in cb.calls] == ["epoch_end", "replaced"]


def test_a_failing_hook_is_still_named():
    class Broken(Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken") as info:
        Trainer("seed_linear", "sgd", [Broken()], epochs=1).fit()
    assert info.value.optlab_callback == "Broken.on_epoch_end"


def test_history_of_a_full_batch_run_is_unchanged_by_the_fast_loop():
    """Independent reference: SGD on the tutorial's line by hand, in float32, epoch by epoch."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = Trainer("seed_linear", {"name": "sgd", "learning_rate": 0.1}, epochs=3).fit()
    x, y = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    a, b = np.float32(2.0), np.float32(2.0)
    losses = []
    for _ in range(3):
        r = float(a) * x + float(b) - y
        losses.append(0.5 * float(np.sum(r * r)))
        ga, gb = np.float32(np.sum(x * r)), np.float32(np.sum(r))
        a, b = a - np.float32(0.1) * ga, b - np.float32(0.1) * gb
    assert history.history["loss"] == losses
    assert history.history["a"][-1] == float(a) and history.history["b"][-1] == float(b)
    assert history.epoch == [0, 1, 2]


# -- the benchmark's rows for them (figures are for reading, not for asserting) -------------------


def test_bench_only_runs_the_sections_asked_for(tmp_path, capsys, monkeypatch):
    import json

    from optlab import bench

    monkeypatch.setattr(bench, "memory_bandwidth", lambda n=0, rounds=1: 10e9)
    monkeypatch.setattr(bench, "MANY_ARRAYS", 5)
    monkeypatch.setattr(bench, "MANY_SIZE", 100)
    out = tmp_path / "b.json"
    assert bench.main(["--only", "fresh,tiny", "--optimizers", "sgd", "--no-torch", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["steps"] == [] and "loop" not in data and "sparse" not in data and "many" in data
    assert [(r["arrays"], r["size"]) for r in data["fresh_grads"]] == [(1, 500), (5, 100)]
    assert all(r["flat"] > 0 and r["fresh"] > 0 for r in data["fresh_grads"])
    assert set(data["tiny"]) <= {"sgd", "torch-adam-fused", "optax-adam-jit"} and data["tiny"]["sgd"] > 0
    assert "fresh/flat" in printed and "Fixed cost of one apply_gradients" in printed
    assert "Training loop" not in printed and "500 arrays" not in printed


def test_bench_only_refuses_an_unknown_section(capsys):
    from optlab import bench

    with pytest.raises(SystemExit):
        bench.main(["--only", "tiny,loops"])
    assert "unknown section 'loops'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value, second",
    [
        ("clipvalue", 1.0, [-6.0, -5.0]),  # the second gradient [5, 4] clipped to [1, 1]
        ("clipnorm", 1.0, [-5.0 - 5 / math.sqrt(41), -4.0 - 4 / math.sqrt(41)]),  # [5, 4] scaled to norm 1
        ("weight_decay", 0.5, [-7.5, -6.0]),  # p - lr * wd * p first ([-2.5, -2]), then the step
        ("loss_scale_factor", 5.0, [-6.0, -4.8]),  # the step divides the (unscaled) gradient by 5
    ],
)
@pytest.mark.parametrize("flat", [True, False])
def test_a_generic_option_set_between_steps_takes_effect_and_unset_goes_away(option, value, second, flat):
    """A step without generic options is the update alone (decided once, kept until a hyperparameter is
    set): setting one between steps must be used at the next step, and unsetting it too. By hand:
    SGD with rate 1 and the gradient [5, 4] three times."""
    params = optlab.flat_parameters([(2,)], np.float32) if flat else [np.zeros(2, np.float32)]
    grads = optlab.flat_like(params) if flat else [np.zeros(2, np.float32)]
    grads[0][...] = [5.0, 4.0]
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 1.0})
    opt.apply(grads, params)
    np.testing.assert_allclose(params[0], [-5.0, -4.0])
    setattr(opt, option, value)
    opt.apply(grads, params)
    np.testing.assert_allclose(params[0], second, rtol=1e-6)
    setattr(opt, option, None)
    opt.apply(grads, params)
    np.testing.assert_allclose(params[0], np.array(second) - [5.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("gradients", ["flat", "separate"])
def test_the_same_gradient_arrays_refilled_in_place_are_read_again_at_each_step(gradients):
    """Flat parameters, the same gradient arrays at every step with new values written into them (a
    training loop's usual buffers): each step reads the values of its own call. SGD, rate 1."""
    params = optlab.flat_parameters([(2,), (3,)], np.float32)
    grads = optlab.flat_like(params) if gradients == "flat" else [np.zeros(2, np.float32), np.zeros(3, np.float32)]
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 1.0})
    total = np.zeros(5)
    for value in (1.0, 2.0, -0.5, 4.0):
        for g in grads:
            g[...] = value
        opt.apply(grads, params)
        total -= value
        np.testing.assert_array_equal(params.flat, total.astype(np.float32))


@pytest.mark.parametrize("flat", [True, False])
def test_weight_decay_changed_between_steps_is_used_and_exclusions_hold_in_partial_steps(flat):
    """The decay of each parameter is worked out once (kept until a hyperparameter is set): a new
    rate must be used at the next step, an excluded parameter never decays, also in a step that
    leaves a parameter out (other chunks). By hand: SGD, rate 1, zero gradients, so that each step
    is ``p <- p (1 - wd)`` for the parameters that decay."""
    params = optlab.flat_parameters([(2,), (1,)], np.float64) if flat else [np.zeros(2), np.zeros(1)]
    params[0][...], params[1][...] = 2.0, 4.0
    zeros = [np.zeros(2), np.zeros(1)]
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 1.0, "weight_decay": 0.5})
    opt.exclude_from_weight_decay(var_list=[params[1]])
    opt.apply(zeros, params)
    np.testing.assert_array_equal(params[0], [1.0, 1.0])
    np.testing.assert_array_equal(params[1], [4.0])
    opt.weight_decay = 0.25
    opt.apply(zeros, params)
    np.testing.assert_array_equal(params[0], [0.75, 0.75])
    with pytest.warns(UserWarning, match="not updated"):
        opt.apply([None, zeros[1]], params)  # the excluded parameter alone
    np.testing.assert_array_equal(params[0], [0.75, 0.75])
    np.testing.assert_array_equal(params[1], [4.0])
    with pytest.warns(UserWarning, match="not updated"):
        opt.apply([zeros[0], None], params)
    np.testing.assert_array_equal(params[0], [0.5625, 0.5625])
    opt.weight_decay = None
    opt.apply(zeros, params)
    np.testing.assert_array_equal(params[0], [0.5625, 0.5625])
    np.testing.assert_array_equal(params[1], [4.0])


def test_a_rule_of_its_own_for_weight_decay_follows_its_hyperparameters_between_steps():
    """Muon decays its non-2-D parameters by ``adam_weight_decay`` (its ``weight_decay_rate``): set
    between steps, the new rate is used. Zero gradients leave Adam's step at 0, so by hand
    ``p <- p (1 - lr wd)`` with lr 0.5: 1 -> 0.75 (wd 0.5), then -> 0.675 (wd 0.2)."""
    params = [np.ones(2)]
    opt = optlab.optimizers.get({"name": "muon", "learning_rate": 0.5, "adam_weight_decay": 0.5})
    opt.apply([np.zeros(2)], params)
    np.testing.assert_allclose(params[0], [0.75, 0.75], rtol=1e-15)
    opt.adam_weight_decay = 0.2
    opt.apply([np.zeros(2)], params)
    np.testing.assert_allclose(params[0], [0.675, 0.675], rtol=1e-15)


# -- separate gradients read in place (optlab.inplace) ----------------------------------------------

#: shapes that make every kind of task: a parameter split into several (over TASK_SIZE, and over
#: PARALLEL_MIN_SIZE in all: the parallel driver), small ones, a scalar and an empty one
IN_PLACE_SHAPES = [(40_000,), (3, 4), (), (0, 2), (5, 7, 2)]
IN_PLACE_RULES = sorted(c.registry_name for c in optlab.optimizers.BUILTIN if c.elementwise_update)


def _in_place_run(name, dtype, make_params, make_grads, options=None, steps=4):
    rng = np.random.default_rng(11)
    start = [rng.standard_normal(s).astype(dtype) for s in IN_PLACE_SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in IN_PLACE_SHAPES] for _ in range(steps)]
    params = make_params(start)
    opt = optlab.optimizers.get({"name": name, "learning_rate": 0.01, **(options or {})})
    for g in grads:
        opt.apply(make_grads(g, params), params)
    return [np.array(p) for p in params], opt


def _reference(name, dtype, options=None):
    """The plain way: separate parameter arrays, each gradient a copy, one update per array (nothing
    read in place: the memory layout taken as unconfirmed)."""
    from optlab import object_layout

    saved, object_layout._LAYOUT = object_layout._LAYOUT, None
    try:
        result, opt = _in_place_run(
            name, dtype, lambda s: [p.copy() for p in s], lambda g, p: [a.copy() for a in g], options
        )
    finally:
        object_layout._LAYOUT = saved
    assert opt._plan._in_place is None
    return result


LAYOUTS = {
    "flat": lambda dtype: lambda s: optlab.flatten(s, dtype=dtype),
    "separate": lambda dtype: lambda s: [p.copy() for p in s],
}


def test_every_rule_that_says_so_reads_gradients_in_place():
    assert set(IN_PLACE_RULES) >= {"adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam"}
    assert {"lamb", "adafactor", "muon"}.isdisjoint(IN_PLACE_RULES)  # (their kernels sum over a parameter)


#: every element-wise rule over separate parameters in float32; three over flat ones, and two in
#: float64 both ways (each dtype and layout compiles every kernel over pieces anew: the suite's time)
IN_PLACE_CASES = (
    [(name, np.float32, "separate") for name in IN_PLACE_RULES]
    + [(name, np.float32, "flat") for name in ("adam", "rmsprop", "sgd")]
    + [(name, np.float64, layout) for name in ("adam", "sgd") for layout in ("flat", "separate")]
)


@pytest.mark.parametrize(
    ("name", "dtype", "layout"), IN_PLACE_CASES, ids=[f"{n}-{d.__name__}-{lay}" for n, d, lay in IN_PLACE_CASES]
)
def test_fresh_separate_gradients_are_read_in_place_and_match(name, dtype, layout, monkeypatch):
    """Flat parameters with separate gradients, and separate parameters: after the first step
    (checked), every step is one update over all of them, gradients (and separate parameters)
    read where they are; bit for bit the steps of one update per array."""
    from optlab import inplace
    from optlab.optimizers.layout import Plan

    copies = []  # after the first step (checked, gathered), no step may copy the gradients
    for cls, method in ((Plan, "work"), (inplace.Pieces, "gathered")):
        original = getattr(cls, method)
        monkeypatch.setattr(cls, method, lambda *a, _f=original, **k: copies.append(_f) or _f(*a, **k))

    before = []  # the copies made before each step

    def fresh(g, params):
        before.append(len(copies))
        return [a.copy() for a in g]

    updates = []
    cls = optlab.optimizers.get(name).__class__
    original_update = cls.update
    monkeypatch.setattr(cls, "update", lambda self, *a, **k: updates.append(1) or original_update(self, *a, **k))
    result, opt = _in_place_run(name, dtype, LAYOUTS[layout](dtype), fresh)
    assert before[0] == 0 and before[1] >= 1 and before[1:] == [len(copies)] * 3, (before, len(copies))
    assert opt._plan._in_place is not None
    first = 1 if layout == "flat" else len(IN_PLACE_SHAPES)
    assert len(updates) == first + 3  # (AdamW's default weight decay: fused, one rate for all)
    monkeypatch.undo()
    reference = _reference(name, dtype)
    for a, b in zip(reference, result):
        assert a.tobytes() == b.tobytes()


def _into_flat_gradients(g, params):
    grads = optlab.flat_like(params)
    for view, a in zip(grads, g):
        view[...] = a
    return grads


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_gradients_with_a_norm_to_clip_are_gathered_and_match(name):
    """(Against flat gradients: a global norm summed over one buffer rounds otherwise than over many.)"""
    for options in ({"clipnorm": 0.1}, {"global_clipnorm": 0.1}, {"clipvalue": 0.01, "loss_scale_factor": 2.0}):
        reference, _ = _in_place_run(
            name, np.float32, lambda s: optlab.flatten(s, dtype=np.float32), _into_flat_gradients, options
        )
        result, _ = _in_place_run(
            name, np.float32, lambda s: optlab.flatten(s, dtype=np.float32), lambda g, p: [a.copy() for a in g], options
        )
        for a, b in zip(reference, result):
            assert a.tobytes() == b.tobytes(), options


class _Sub(np.ndarray):
    pass


def _unaligned(a):
    raw = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(raw.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out = out.copy() if out.flags.aligned else out  # (copy: a platform where it happens to align)
    raw[1:] = np.frombuffer(a.tobytes(), np.uint8)
    return out


#: gradients a step must not read in place (each becomes gradient 1 of the list): the checked path
#: converts or gathers them, and the step is the plain one
MISFITS = {
    "not C-contiguous": lambda a, p: np.asfortranarray(a),
    "not aligned": lambda a, p: _unaligned(a),
    "an ndarray subclass": lambda a, p: a.view(_Sub),
    "an equal dtype object, not the same": lambda a, p: a.astype(np.dtype(a.dtype.str, metadata={"m": 1})),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("misfit", sorted(MISFITS))
def test_a_gradient_that_cannot_be_read_in_place_takes_the_checked_path(misfit, layout):
    reference = _reference("adam", np.float32)

    def grads(g, params):
        out = [a.copy() for a in g]
        out[1] = MISFITS[misfit](out[1], params)
        return out

    result, _ = _in_place_run("adam", np.float32, LAYOUTS[layout](np.float32), grads)
    for a, b in zip(reference, result):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_steps_with_other_generic_options_match(layout):
    """Separate parameters are read in place only for a step that is the update alone or with a
    weight decay fused at one rate; every other step takes one update per array. All match."""
    cases = [
        ("adamw", {}),
        ("adamw", {"weight_decay": 0.1, "use_ema": True}),
        ("sgd", {"clipvalue": 0.05, "momentum": 0.9, "gradient_accumulation_steps": 2}),
    ]
    for name, options in cases:
        reference = _reference(name, np.float32, options)
        result, _ = _in_place_run(
            name, np.float32, LAYOUTS[layout](np.float32), lambda g, p: [a.copy() for a in g], options
        )
        for a, b in zip(reference, result):
            assert a.tobytes() == b.tobytes(), (name, options)


def test_a_weight_decay_at_other_rates_takes_one_update_per_array_and_matches():
    def excluding(opt):
        opt.exclude_from_weight_decay(var_names=["b"])
        return opt

    start = {"w": np.full(40_000, 2.0), "b": np.full(3, 2.0)}
    results = []
    for layout in ("reference", "separate"):
        from optlab import object_layout

        saved = object_layout._LAYOUT
        if layout == "reference":
            object_layout._LAYOUT = None
        try:
            params = {k: v.copy() for k, v in start.items()}
            opt = excluding(optlab.optimizers.get({"name": "adamw", "weight_decay": 0.5, "learning_rate": 0.01}))
            for k in range(3):
                opt.apply({n: np.full(v.shape, 0.1 * k) for n, v in params.items()}, params)
        finally:
            object_layout._LAYOUT = saved
        results.append(params)
    assert results[0]["b"][0] != results[0]["w"][0]  # (the exclusion holds: the rates differ)
    for name in start:
        assert results[0][name].tobytes() == results[1][name].tobytes()


def test_flat_parameters_with_an_empty_array_are_one_flat_buffer():
    """An empty view's address is any (numpy gives a reshaped one its base's): it breaks no run."""
    params = optlab.flat_parameters([(4,), (0, 2), (3,)], np.float32)
    assert optlab.flat.flat_view(params) is not None
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 1.0})
    grads = optlab.flat_like(params)
    grads.flat[:] = np.arange(7)
    for make in (lambda: grads, lambda: [a.copy() for a in grads]):  # back to back, then separate
        opt.apply(make(), params)
    np.testing.assert_array_equal(params.flat, -2.0 * np.arange(7))


def test_gradients_overlapping_the_parameters_are_copied_before_the_step():
    """Gradients that are the parameters themselves, crossed: read in place, the step would read
    values it has already written; each must be the parameters' values before the step."""
    start = [np.arange(40_000, dtype=np.float64) / 7, np.arange(40_000, dtype=np.float64)[::-1] / 3]
    plain = [p.copy() for p in start]
    a = optlab.optimizers.get("sgd")
    for _ in range(3):
        a.apply([plain[1].copy(), plain[0].copy()], plain)
    for make in (lambda: optlab.flatten(start, dtype=np.float64), lambda: [p.copy() for p in start]):
        params = make()
        b = optlab.optimizers.get("sgd")
        for _ in range(3):
            b.apply([params[1], params[0]], params)
        for p, q in zip(plain, params):
            assert p.tobytes() == q.tobytes()


@pytest.mark.parametrize(
    "start, shares",
    [(0, False), (1, True), (9, True), (10, True), (19, True), (20, False), (21, True), (40, False), (50, False),
     (51, True), (60, True), (69, True), (70, False), (90, False)],
)  # fmt: skip
def test_a_gradient_shares_memory_with_a_parameter_exactly_when_their_bytes_meet(start, shares):
    """Parameters at ``buffer[10:20]``, ``[30:40]`` and ``[60:70]``; gradient 1 at ``buffer[start:start + 10]``:
    one that ends where a parameter begins, or begins where one ends, shares none of its bytes."""
    buffer = np.zeros(100)
    params = [buffer[10:20], buffer[30:40], buffer[60:70]]
    opt = optlab.optimizers.get("sgd")
    opt.apply([np.zeros(10) for _ in params], params)
    in_place = opt._plan._in_place
    assert in_place is not None and opt._plan.flat is None
    grads = [np.zeros(10), buffer[start : start + 10], np.zeros(10)]
    assert in_place.overlaps(grads) is shares
    assert in_place.overlaps([grads[1], grads[0], grads[2]]) is shares  # (found as gradient 0 as well)


def test_without_a_checked_memory_layout_every_step_gathers(monkeypatch):
    from optlab import object_layout

    monkeypatch.setattr(object_layout, "_LAYOUT", None)  # (an interpreter whose objects are laid out otherwise)
    reference = _reference("adam", np.float32)
    result, opt = _in_place_run(
        "adam", np.float32, lambda s: optlab.flatten(s, dtype=np.float32), lambda g, p: [a.copy() for a in g]
    )
    assert opt._plan._in_place is None
    for a, b in zip(reference, result):
        assert a.tobytes() == b.tobytes()


def test_the_memory_layout_is_checked_on_known_arrays():
    from optlab import object_layout

    right = object_layout._offsets()
    assert object_layout._reads_right(right)
    # any field holding a value, read a word off, is caught (before the pointers are followed)
    for name in ("type", "data", "nd", "descr", "flags", "size"):
        assert not object_layout._reads_right({**right, name: right[name] + 8}), name
    # a header two words longer (a debug build's) is caught by the first field compared
    assert not object_layout._reads_right({name: offset + 16 for name, offset in right.items()})


def test_a_rule_of_its_own_over_an_in_place_rule_gets_one_flat_gradient():
    """A subclass overriding ``update`` reads ``grad`` as an array unless it says otherwise."""
    seen = []

    class Doubled(optlab.optimizers.SGD):
        def update(self, param, grad, state, lr, step, seg):
            seen.append(type(grad))
            super().update(param, grad * 2, state, lr, step, seg)  # numpy on the gradient

    assert optlab.optimizers.SGD.elementwise_update and not Doubled.elementwise_update
    params = optlab.flat_parameters([(3,), (2,)], np.float64, fill=1.0)
    opt = Doubled(learning_rate=0.5)
    for _ in range(2):
        opt.apply([np.ones(3), np.full(2, 2.0)], params)
    assert seen == [np.ndarray, np.ndarray]
    np.testing.assert_array_equal(params.flat, [-1.0, -1.0, -1.0, -3.0, -3.0])


@kernel
def _shift_by_total(p, g):
    total = 0.0
    for i in range(g.shape[0]):
        total += g[i]
    for i in prange(p.shape[0]):
        p[i] -= total


def test_a_kernel_not_elementwise_given_pieces_gets_them_gathered_or_runs_per_array():
    class Total(optlab.optimizers.Optimizer):
        elementwise_update = True

        def update(self, param, grad, state, lr, step, seg):
            _shift_by_total(param, grad)

    params = optlab.flat_parameters([(3,), (2,)], np.float64)
    opt = Total(learning_rate=0.1)
    for _ in range(2):
        opt.apply([np.ones(3), np.full(2, 2.0)], params)
    np.testing.assert_array_equal(params.flat, -14.0)  # (3 + 4) per step, over the whole gradient
    # separate parameters: one call per array, as the steps over separate arrays always were
    separate = [np.zeros(3), np.zeros(2)]
    opt = Total(learning_rate=0.1)
    for _ in range(3):
        opt.apply([np.ones(3), np.full(2, 2.0)], separate)
    np.testing.assert_array_equal(separate[0], -9.0)
    np.testing.assert_array_equal(separate[1], -12.0)


@pytest.mark.parametrize("options", [{}, {"clipvalue": 10.0}], ids=["plain", "clipped"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gradients_read_in_place_are_not_held_after_their_step(layout, options):
    """(Clipped, separate parameters take one call per array, the gradients checked for overlap.)"""
    import gc
    import weakref

    params = LAYOUTS[layout](np.float32)([np.ones(s, np.float32) for s in IN_PLACE_SHAPES])
    opt = optlab.optimizers.get({"name": "adam", **options})
    for _ in range(2):
        opt.apply([np.ones(s, np.float32) for s in IN_PLACE_SHAPES], params)
    grads = [np.ones(s, np.float32) for s in IN_PLACE_SHAPES]
    watch = weakref.ref(grads[0])
    opt.apply(grads, params)
    assert opt._plan._in_place is not None
    del grads
    gc.collect()
    assert watch() is None  # (a 1 GB model's gradients would otherwise stay until the next step)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_gradient_that_is_a_view_of_the_optimizers_own_state_is_read_as_it_was(layout):
    """``variables`` shows the slots as live views; one given as a gradient is read as it was when
    the step began (as a gathered copy is), not while the step writes it."""
    from optlab import object_layout

    results = []
    for copied in (True, False):
        params = LAYOUTS[layout](np.float32)([np.full(50_000, 0.5, np.float32), np.full(50_000, 1.5, np.float32)])
        opt = optlab.optimizers.get({"name": "adam", "learning_rate": 0.1})
        rng = np.random.default_rng(5)
        for step in range(4):
            grads = [rng.standard_normal(50_000).astype(np.float32) for _ in params]
            if step:
                slot = opt.variables["0/momentum"]
                grads[1] = slot.copy() if copied else slot
            opt.apply(grads, params)
        assert object_layout.layout() is None or opt._plan._in_place is not None
        results.append([np.array(p) for p in params])
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


def test_a_gradient_list_changed_after_its_check_is_not_read_unchecked(monkeypatch):
    """Another thread replacing an item of the list between the step's check and its read: the step
    reads what it checked (the list as it was), never an array of another shape."""
    from optlab.optimizers import layout as layout_module

    shapes = [(50,), (3, 7)]
    grads = [np.ones(s, np.float32) for s in shapes]
    expected = [np.full(s, -1.0, np.float32) for s in shapes]  # two SGD steps of 0.5 from 0
    params = [np.zeros(s, np.float32) for s in shapes]
    opt = optlab.optimizers.get({"name": "sgd", "learning_rate": 0.5, "clipvalue": 10.0})  # (one call per array)
    opt.apply(grads, params)
    checked = layout_module._conforming

    def then_changed(arrays, *args):
        ok = checked(arrays, *args)
        grads[0] = np.ones(5, np.float32)  # (the other thread, right after the check)
        return ok

    monkeypatch.setattr(layout_module, "_conforming", then_changed)
    opt.apply(grads, params)
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p, e)


def test_an_update_computing_with_pieces_is_told_what_its_declaration_means():
    class Declared(optlab.optimizers.SGD):  # a plugin rule that declares it but computes with grad itself
        elementwise_update = True

        def update(self, param, grad, state, lr, step, seg):
            param -= lr * np.sign(grad)

    params = [np.ones(3), np.ones(2)]
    opt = Declared(learning_rate=0.1)
    opt.apply([np.ones(3), np.ones(2)], params)  # (the first step is checked: flat arrays)
    with pytest.raises(TypeError, match=r"declares elementwise_update = True.*must not declare it"):
        opt.apply([np.ones(3), np.ones(2)], params)
