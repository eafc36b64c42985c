"""Update rules checked against values worked out by hand or in closed form (independent of Keras),
property tests of the kernels, and the kernels' no-allocation and on-disk-cache promises."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optlab
from optlab.kernels import PARALLEL_MIN_SIZE, kernel, prange
from optlab.optimizers import BUILTIN


def step(opt, grads, params):
    opt.apply([np.asarray(g, dtype=np.float64) for g in grads], params)


# -- one or two steps by hand -----------------------------------------------------------------


def test_sgd_momentum_and_nesterov_by_hand():
    # v <- m v - lr g ; p <- p + v            (Keras: momentum = velocity)
    p = np.array([1.0])
    opt = optlab.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    step(opt, [[2.0]], [p])  # v = -0.2, p = 0.8
    step(opt, [[2.0]], [p])  # v = -0.18 - 0.2 = -0.38, p = 0.42
    assert p[0] == pytest.approx(0.42)
    # nesterov: p <- p + m v - lr g
    p = np.array([1.0])
    opt = optlab.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    step(opt, [[2.0]], [p])  # v = -0.2 ; p = 1 - 0.18 - 0.2 = 0.62
    assert p[0] == pytest.approx(0.62)
    step(opt, [[2.0]], [p])  # v = -0.38 ; p = 0.62 - 0.342 - 0.2 = 0.078
    assert p[0] == pytest.approx(0.078)


def test_adam_first_step_closed_form():
    # step 1: m = (1-b1) g, v = (1-b2) g^2, alpha = lr sqrt(1-b2)/(1-b1)
    # p <- p - alpha m / (sqrt(v) + eps) = p - lr g sqrt(1-b2) / (sqrt(1-b2)|g| + eps)
    g = np.array([0.5, -2.0, 1e-6])
    p = np.zeros(3)
    opt = optlab.optimizers.Adam(learning_rate=0.01, epsilon=1e-7)
    step(opt, [g], [p])
    s = math.sqrt(1 - 0.999)
    expected = -0.01 * g * s / (s * np.abs(g) + 1e-7)
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_adam_amsgrad_keeps_the_largest_second_moment():
    p = np.zeros(1)
    opt = optlab.optimizers.Adam(learning_rate=1.0, beta_1=0.0, beta_2=0.5, amsgrad=True, epsilon=1e-12)
    step(opt, [[4.0]], [p])  # v = 8, vhat = 8 ; alpha = sqrt(0.5)/1 ; p -= sqrt(.5)*4/sqrt(8) = 1
    assert p[0] == pytest.approx(-1.0)
    step(opt, [[0.0]], [p])  # m = 0: no move, v = 4 but vhat stays 8
    step(opt, [[1.0]], [p])  # v = 2.5, vhat = 8 ; alpha = sqrt(1 - 0.125) ; p -= alpha * 1 / sqrt(8)
    assert p[0] == pytest.approx(-1.0 - math.sqrt(0.875) / math.sqrt(8))


def test_adagrad_by_hand():
    p = np.array([1.0])
    opt = optlab.optimizers.Adagrad(learning_rate=0.5, initial_accumulator_value=1.0, epsilon=0.0 + 1e-12)
    step(opt, [[3.0]], [p])  # acc = 10 ; p -= 0.5 * 3 / sqrt(10)
    assert p[0] == pytest.approx(1 - 1.5 / math.sqrt(10))


def test_rmsprop_centered_by_hand():
    p = np.array([0.0])
    opt = optlab.optimizers.RMSprop(learning_rate=0.1, rho=0.5, centered=True, epsilon=1e-12)
    step(opt, [[2.0]], [p])  # v = 2, mg = 1 ; denom = v - mg^2 + eps = 1 ; p -= 0.1 * 2 / sqrt(1)
    assert p[0] == pytest.approx(-0.2)


def test_lion_moves_every_coordinate_by_lr():
    p = np.zeros(4)
    opt = optlab.optimizers.Lion(learning_rate=0.3)
    step(opt, [[5.0, -1e-3, 0.0, 2.0]], [p])
    np.testing.assert_allclose(p, [-0.3, 0.3, 0.0, -0.3])


def test_adamw_decays_by_weight_decay_times_lr():
    p = np.array([2.0])
    opt = optlab.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5)
    step(opt, [[0.0]], [p])  # zero gradient: only the decay p <- p - p * wd * lr
    assert p[0] == pytest.approx(2.0 * (1 - 0.05))


# -- generic options by hand --------------------------------------------------------------------


def test_clipnorm_is_per_tensor_and_global_clipnorm_is_over_all():
    g1, g2 = np.array([3.0, 4.0]), np.array([0.0, 0.5])  # norms 5 and 0.5, global sqrt(25.25)
    p1, p2 = np.zeros(2), np.zeros(2)
    step(optlab.optimizers.SGD(learning_rate=1.0, clipnorm=1.0), [g1, g2], [p1, p2])
    np.testing.assert_allclose(p1, [-0.6, -0.8])
    np.testing.assert_allclose(p2, [0.0, -0.5])  # below the threshold: unchanged
    p1, p2 = np.zeros(2), np.zeros(2)
    step(optlab.optimizers.SGD(learning_rate=1.0, global_clipnorm=1.0), [g1, g2], [p1, p2])
    scale = 1 / math.sqrt(25.25)
    np.testing.assert_allclose(np.concatenate([p1, p2]), -scale * np.concatenate([g1, g2]))


def test_clipvalue_and_loss_scale():
    p = np.zeros(3)
    step(optlab.optimizers.SGD(learning_rate=1.0, clipvalue=0.5), [[-2.0, 0.1, 9.0]], [p])
    np.testing.assert_allclose(p, [0.5, -0.1, -0.5])
    p = np.zeros(1)
    step(optlab.optimizers.SGD(learning_rate=1.0, loss_scale_factor=8.0), [[4.0]], [p])
    assert p[0] == -0.5


def test_gradient_accumulation_averages_then_steps():
    p = np.zeros(1)
    opt = optlab.optimizers.SGD(learning_rate=1.0, gradient_accumulation_steps=3)
    for g in (1.0, 2.0):
        step(opt, [[g]], [p])
        assert p[0] == 0.0
    step(opt, [[6.0]], [p])  # (1 + 2 + 6) / 3
    assert p[0] == -3.0 and opt.iterations == 1
    step(opt, [[3.0]], [p])  # the accumulator was reset
    assert p[0] == -3.0


# -- kernels: properties ----------------------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    g=hnp.arrays(np.float64, st.integers(1, 64), elements=finite),
    lr=st.floats(1e-4, 1.0),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.0, 0.999),
)
def test_adam_matches_a_plain_numpy_rule_over_three_steps(g, lr, b1, b2):
    p = np.linspace(-1, 1, g.size)
    expected = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    opt = optlab.optimizers.Adam(learning_rate=lr, beta_1=b1, beta_2=b2)
    for t in (1, 2, 3):
        grad = g * t
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        expected = expected - alpha * m / (np.sqrt(v) + 1e-7)
        opt.apply([grad], [p])
    np.testing.assert_allclose(p, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(g=hnp.arrays(np.float32, st.integers(1, 200), elements=finite), v=st.floats(0.125, 100, width=32))
def test_clip_kernel_is_np_clip(g, v):
    from optlab import kernels

    out = np.empty_like(g)
    kernels.clip_into(out, g, np.float32(v))
    np.testing.assert_array_equal(out, np.clip(g, -np.float32(v), np.float32(v)))


shapes = st.lists(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5), min_size=1, max_size=6)
ELEMENTWISE = [c for c in BUILTIN if c.__name__ not in ("Muon", "Adafactor", "Lamb")]


@settings(max_examples=30, deadline=None)
@given(shapes=shapes, which=st.sampled_from(ELEMENTWISE), seed=st.integers(0, 2**16))
def test_flat_and_separate_layouts_agree_bit_for_bit(shapes, which, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    flat = optlab.flatten(params, dtype=np.float32)
    separate = [p.copy() for p in params]
    a, b = which(learning_rate=0.05, clipvalue=1.0), which(learning_rate=0.05, clipvalue=1.0)
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        a.apply(grads, flat)
        b.apply(grads, separate)
    for x, y in zip(flat, separate):
        np.testing.assert_array_equal(x, y)


SWITCH = False  # a compile-time switch of _switched, fixed per variant


@kernel
def _switched(x):
    for i in prange(x.shape[0]):
        if SWITCH:
            x[i] += 1.0
        else:
            x[i] -= 1.0


@pytest.mark.parametrize("n", [3, PARALLEL_MIN_SIZE])
def test_a_specialized_kernel_takes_its_switch_as_a_constant(n):
    on, off = _switched.specialize(SWITCH=True), _switched.specialize(SWITCH=False)
    x = np.zeros(n)
    on(x)
    on(x)
    off(x)
    np.testing.assert_array_equal(x, 1.0)
    assert on.serial.py_func.__qualname__ != off.serial.py_func.__qualname__  # apart in numba's cache


# -- no allocation per step --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BUILTIN, ids=[c.__name__ for c in BUILTIN])
def test_steps_do_not_allocate_parameter_sized_memory(cls):
    n = 50_000
    params = optlab.flat_parameters([(100, 250), (n - 25_000,)], np.float32, fill=0.5)
    grads = optlab.flat_like(params)
    grads.flat[:] = np.linspace(-1, 1, n, dtype=np.float32)
    opt = cls(learning_rate=0.01, use_ema=True, clipnorm=1.0)
    for _ in range(3):  # build, compile, warm caches
        opt.apply(grads, params)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(5):
            opt.apply(grads, params)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    param_bytes = n * 4
    # nothing parameter-sized (Adafactor's factored statistics included: it keeps small per-shape
    # scratch); Muon's Newton-Schulz needs matrix temporaries, but none may be kept across steps
    budget = param_bytes // 20 if cls.__name__ != "Muon" else 8 * param_bytes
    assert peak - base < budget, f"{cls.__name__}: peak {peak - base} bytes per step"
    assert current - base < param_bytes // 20


# -- numba's on-disk cache -------------------------------------------------------------------------


def test_kernels_load_from_numbas_cache_in_a_new_process(tmp_path):
    script = textwrap.dedent(
        """
        import numpy as np, optlab
        from optlab.optimizers import adam
        p, g = np.zeros(10, np.float32), np.ones(10, np.float32)
        optlab.optimizers.Adam().apply([g], [p])
        impl = adam._ADAM[False, False].serial  # plain Adam: no AMSGrad, no fused decay
        print(sum(impl.stats.cache_hits.values()), sum(impl.stats.cache_misses.values()))
        """
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    first_hits, first_misses = map(int, runs[0].split())
    second_hits, second_misses = map(int, runs[1].split())
    assert first_misses == 1 and first_hits == 0  # compiled and written
    assert second_hits == 1 and second_misses == 0  # loaded, not compiled
    assert any(tmp_path.rglob("*.nbi"))


# -- serial variants: arrays declared not to overlap -------------------------------------------------

#: rules whose kernels reduce over a parameter (row and column sums, norms, Newton-Schulz), where the
#: parallel variants may sum in another order: their variants are compared in test_matrix_optimizers
REDUCING = {"Adafactor", "Lamb", "Muon"}


#: every element-wise rule in float32, two in float64 too (each dtype compiles every kernel anew)
VARIANT_CASES = [(c, np.float32) for c in BUILTIN if c.__name__ not in REDUCING] + [
    (c, np.float64) for c in BUILTIN if c.__name__ in ("Adam", "SGD")
]


@pytest.mark.parametrize(("cls", "dtype"), VARIANT_CASES, ids=[f"{c.__name__}-{d.__name__}" for c, d in VARIANT_CASES])
def test_serial_and_parallel_variants_take_the_same_steps(cls, dtype, monkeypatch):
    """The serial variants are compiled with their arrays declared not aliased (LLVM vectorizes
    them without run-time overlap checks); element by element they must still compute what the
    parallel variants do, with the generic options' passes (clipping, decay, EMA) too."""
    n = PARALLEL_MIN_SIZE + 1_001
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    results = []
    for threshold in (PARALLEL_MIN_SIZE, 10**12):  # parallel over the array, then serial
        monkeypatch.setattr(optlab.kernels, "PARALLEL_MIN_SIZE", threshold)
        for options in ({}, {"clipvalue": 0.5, "weight_decay": 0.01, "use_ema": True}):
            p = p0.copy()
            opt = cls(learning_rate=0.01, **options)
            for g in grads:
                opt.apply([g], [p])
            results.append(p)
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[3])
    assert not np.array_equal(results[0], p0)


@pytest.mark.parametrize("variant", ["serial", "parallel"])
def test_a_kernel_writing_the_array_it_reads_at_the_same_index_is_exact(variant):
    """``scale_into(v, v, s)`` (a sparse gradient's rows scaled in place) reads and writes one array:
    declared not aliased, each element is still read before it is written."""
    from optlab import kernels as K

    x = np.linspace(-3.0, 3.0, PARALLEL_MIN_SIZE + 17, dtype=np.float32)
    expected_scaled = x * np.float32(0.5)
    expected_clipped = np.clip(expected_scaled, -1.0, 1.0)
    expected_ratio = expected_clipped * np.float32(2.0) / np.float32(4.0)
    getattr(K.scale_into, variant)(x, x, np.float32(0.5))
    np.testing.assert_array_equal(x, expected_scaled)
    getattr(K.clip_into, variant)(x, x, np.float32(1.0))
    np.testing.assert_array_equal(x, expected_clipped)
    getattr(K.mul_div_into, variant)(x, x, np.float32(2.0), np.float32(4.0))
    np.testing.assert_array_equal(x, expected_ratio)
