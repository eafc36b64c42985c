"""Adafactor and Muon, the matrix-shaped optimizers: their rules on matrices large enough for the
parallel kernels and BLAS paths (the Keras reference data covers small ones), Adafactor's sublinear
state and the states saved before it, and the benchmark's figures for them.

References are Keras 3's update rules written out in numpy (``keras/src/optimizers/adafactor.py``,
``muon.py``), not optlab's code.
"""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from optlab import bench
from optlab.files import load_npz
from optlab.kernels import PARALLEL_MIN_SIZE
from optlab.optimizers import Adafactor, Muon
from optlab.optimizers.muon import newton_schulz5, newton_schulz_flops

REFERENCE = Path(__file__).parent / "reference"
F32 = np.float32


# -- Adafactor ---------------------------------------------------------------------------------------


def keras_adafactor(params, grads_per_step, lr=0.001, beta_2_decay=-0.8, eps1=1e-30, eps2=1e-3, clip=1.0):
    """Keras's ``Adafactor.update_step`` in float32 numpy, ``v`` kept at full size as Keras does."""
    params = [p.copy() for p in params]
    r = [np.zeros(p.shape[:-1], F32) if p.ndim >= 2 else None for p in params]
    c = [np.zeros(p.shape[:-2] + p.shape[-1:], F32) if p.ndim >= 2 else None for p in params]
    v = [np.zeros_like(p) for p in params]
    for step, grads in enumerate(grads_per_step, start=1):
        t = F32(step)
        rho = min(F32(lr), F32(1) / np.sqrt(t))
        b2t = F32(1) - t ** F32(beta_2_decay)
        for k, (p, g) in enumerate(zip(params, grads)):
            alpha = max(F32(eps2), np.sqrt(np.mean(np.square(p)))) * rho
            gsq = np.square(g) + F32(eps1)
            if p.ndim >= 2:
                r[k] = b2t * r[k] + (F32(1) - b2t) * np.mean(gsq, axis=-1)
                c[k] = b2t * c[k] + (F32(1) - b2t) * np.mean(gsq, axis=-2)
                v[k] = (r[k] / np.mean(r[k], axis=-1, keepdims=True))[..., None] * c[k][..., None, :]
            else:
                v[k] = b2t * v[k] + (F32(1) - b2t) * gsq
            u = g / np.sqrt(v[k])
            u = u / max(F32(1), np.sqrt(np.mean(np.square(u))) / F32(clip))
            p -= alpha * u
    return params


#: a matrix, a batch of matrices (rank 3), a wide matrix (rows summed in several spans) and a
#: vector; the matrices take the parallel kernels
BIG = [(300, 256), (3, 130, 100), (4, 20_000), (1000,)]


@pytest.mark.parametrize("clip", [1.0, 0.05])  # 0.05: RMS(u) > clip, the update is divided
def test_adafactor_on_large_matrices_follows_keras(clip):
    assert all(np.prod(s) >= PARALLEL_MIN_SIZE for s in BIG[:3])
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(F32) for s in BIG]
    steps = [[(rng.standard_normal(s) * 0.01).astype(F32) for s in BIG] for _ in range(4)]
    expected = keras_adafactor(params, steps, lr=0.05, clip=clip)
    opt = Adafactor(learning_rate=0.05, clip_threshold=clip)
    for grads in steps:
        opt.apply(grads, params)
    for p, q in zip(params, expected):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_adafactor_serial_and_parallel_kernels_agree(monkeypatch):
    from optlab.optimizers import adafactor

    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(F32) for s in BIG]
    grads = [rng.standard_normal(s).astype(F32) for s in BIG]
    results = []
    for threshold in (PARALLEL_MIN_SIZE, 10**12):  # the parallel kernels, then the serial ones for all
        monkeypatch.setattr(adafactor, "PARALLEL_MIN_SIZE", threshold)
        mine = [p.copy() for p in params]
        opt = Adafactor(learning_rate=0.05, clip_threshold=0.05)
        for _ in range(3):
            opt.apply(grads, mine)
        results.append((mine, opt.get_state()[1]))
    (a, state_a), (b, state_b) = results
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=0)
    for key in state_a:
        np.testing.assert_allclose(state_a[key], state_b[key], rtol=1e-6, atol=0)


def test_factored_adafactor_keeps_no_parameter_sized_state():
    # R and C for each matrix (last two axes factored, leading ones batched); v only for rank < 2
    shapes = [(3,), (20, 30), (2, 5, 7), ()]
    params = [np.ones(s, F32) for s in shapes]
    opt = Adafactor()
    opt.apply([np.full(s, 0.5, F32) for s in shapes], params)
    _, arrays = opt.get_state()
    assert {k: a.size for k, a in arrays.items()} == {
        "slot/row": 20 + 2 * 5,
        "slot/col": 30 + 2 * 7,
        "slot/velocity": 3 + 1,
    }
    found = opt.variables
    assert found["1/velocity"].size == 0 and found["2/velocity"].size == 0
    assert found["0/velocity"].shape == (3,) and found["1/row"].shape == (20,) and found["1/col"].shape == (30,)


# -- a state saved when factored parameters kept a full-size v ---------------------------------------


def saved_before():
    """The state ``tests/reference/adafactor_state_full_v.npz``, saved by optlab's Adafactor before
    it stopped storing ``v`` for matrices (commit 0879a98: ``slot/velocity`` of all 57 elements),
    after 3 steps on shapes (3,), (4, 6), (2, 3, 5); and, from the same code, the parameters then,
    the next two gradients and the parameters after them."""
    with np.load(REFERENCE / "adafactor_state_full_v_continued.npz") as data:
        shapes = [(3,), (4, 6), (2, 3, 5)]
        params = [data[f"param/{k}"] for k in range(3)]
        grads = [[data[f"grad{i}/{k}"] for k in range(3)] for i in range(2)]
        expected = [data[f"expected/{k}"] for k in range(3)]
    assert [p.shape for p in params] == shapes
    return REFERENCE / "adafactor_state_full_v.npz", params, grads, expected


@pytest.mark.parametrize("into", ["unbuilt", "built", "file"])
def test_a_state_saved_with_a_full_size_v_loads_and_continues_as_before(into):
    path, params, grads, expected = saved_before()
    meta, arrays = load_npz(path)
    assert arrays["slot/velocity"].shape == (57,)  # the old layout
    opt = Adafactor(learning_rate=0.05, clip_threshold=0.5)
    if into == "built":
        opt.build([np.zeros_like(p) for p in params])
    if into == "file":
        opt.load_state(path)
    else:
        opt.set_state(meta, arrays)
    assert opt.get_state()[1]["slot/velocity"].shape == (3,)  # the vector's v alone
    np.testing.assert_array_equal(opt.get_state()[1]["slot/velocity"], arrays["slot/velocity"][:3])
    for g in grads:
        opt.apply(g, params)
    for p, q in zip(params, expected):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    assert opt.iterations == 5


def test_a_state_with_a_velocity_of_neither_size_is_refused_and_changes_nothing():
    path, params, _, _ = saved_before()
    meta, arrays = load_npz(path)
    opt = Adafactor(learning_rate=0.05, clip_threshold=0.5)
    opt.build(params)
    before = {k: v.copy() for k, v in opt.get_state()[1].items()}
    arrays["slot/velocity"] = arrays["slot/velocity"][:10]
    with pytest.raises(
        ValueError, match=r"'slot/velocity' has shape \(10,\); the state's parameter shapes need \(3,\)"
    ):
        opt.set_state(meta, arrays)
    for key, value in opt.get_state()[1].items():
        np.testing.assert_array_equal(value, before[key])


# -- Muon --------------------------------------------------------------------------------------------


def keras_newton_schulz5(x, steps=5, a=3.4445, b=-4.775, c=2.0315):
    """Keras's ``zeropower_via_newtonschulz5``, in float64."""
    x = np.asarray(x, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (64, 64), (1, 7)], ids=str)
def test_newton_schulz_follows_keras_on_either_side(shape):
    x = np.random.default_rng(2).standard_normal(shape).astype(F32)
    before = x.copy()
    out = newton_schulz5(x, 5, 3.4445, -4.775, 2.0315)
    assert out.dtype == F32 and out.shape == shape
    np.testing.assert_allclose(out, keras_newton_schulz5(x), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(x, before)  # the input is left as it is
    work = np.empty((2, *shape), F32)
    into = newton_schulz5(x, 5, 3.4445, -4.775, 2.0315, work)
    assert np.shares_memory(into, work)
    np.testing.assert_array_equal(into, out)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_on_a_large_matrix_follows_keras(nesterov):
    rng = np.random.default_rng(3)
    shape = (600, 64)  # tall: Keras transposes it
    p0 = rng.standard_normal(shape).astype(F32)
    grads = [rng.standard_normal(shape).astype(F32) for _ in range(3)]
    opt = Muon(learning_rate=0.02, weight_decay=0.0, nesterov=nesterov)
    p = p0.copy()
    expected, m = p0.astype(np.float64), np.zeros(shape)
    for g in grads:
        opt.apply([g], [p])
        m = m + g + m * (0.95 - 1)
        look = g + 0.95 * m if nesterov else m
        expected -= 0.02 * keras_newton_schulz5(look) * np.sqrt(600) * 0.2
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-5)


def test_muon_steps_allocate_nothing_parameter_sized():
    params = [np.ones((4000, 64), F32)]
    grads = [np.linspace(-1, 1, 4000 * 64, dtype=F32).reshape(4000, 64)]
    opt = Muon()
    for _ in range(2):
        opt.apply(grads, params)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        opt.apply(grads, params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < params[0].nbytes // 10


def test_muon_counts_the_flops_of_its_matrix_products():
    # per Newton-Schulz step, sides m <= n: X X^T (2 m^2 n), A A (2 m^3), M X (2 m^2 n)
    assert newton_schulz_flops((300, 40), 5) == 5 * (2 * 40 * 40 * 300 + 2 * 40**3 + 2 * 40 * 40 * 300)
    assert newton_schulz_flops((40, 300), 2) == newton_schulz_flops((300, 40), 2)
    opt = Muon(ns_steps=3)
    assert opt.step_flops([(300, 40), (40,), (5, 5, 5)]) == newton_schulz_flops((300, 40), 3)  # AdamW: none
    assert opt.step_flops([(8, 8)], ["embedding"]) == 0


# -- the benchmark's figures -------------------------------------------------------------------------


def test_bench_gives_the_byte_roof_state_memory_and_flop_rate():
    n = 4 * 256 + 5  # (4, 256) matrices; 5 elements left over are dropped
    rows = {name: bench.bench_optimizer(name, n) for name in ("sgd", "adam", "adafactor", "muon")}
    for row in rows.values():
        assert row["seconds"] > 0 and row["gbps"] > 0 and row["state_bytes"] >= 0
    assert rows["sgd"]["state_bytes"] == 0 and rows["adam"]["state_bytes"] == 8 * rows["adam"]["n"]
    ada = rows["adafactor"]
    assert ada["n"] == 4 * 256
    assert ada["state_bytes"] == 4 * (4 + 256)  # R and C: no v
    assert ada["bytes"] == 12 * ada["n"] + 2 * 4 * (4 + 256)  # p read and written, g read; R, C read and written
    muon = rows["muon"]
    assert muon["state_bytes"] == 4 * muon["n"]  # the momentum
    assert muon["flops"] == newton_schulz_flops((4, 256), 5) and muon["gflops"] > 0
    assert "flops" not in ada
    assert bench.matmul_rate(rounds=1) > 0
