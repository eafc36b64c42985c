"""The small networks on the digits: gradients against finite differences and against plain-loop
implementations written here, seeded runs, the declared targets, arguments, dtypes."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from references import finite_difference

import optlab
from optlab.optimizers import Adam
from optlab.problems.nets import AutoencoderDigits, CNNDigits
from optlab.trainer import Trainer

#: Adam's tuned learning rates, as the targets' ``measured`` strings record them
TUNED_ADAM = {CNNDigits: 3e-2, AutoencoderDigits: 1e-2}


def moved(problem, seed=3):
    """float64 parameters moved off the initial point: biases away from 0, so that no unit sits at a kink."""
    params = problem.init(seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for p in params:
        p += 0.3 * rng.standard_normal(p.shape)
    return params


# -- independent implementations: plain loops over examples, pixels, offsets and units -----------


def cnn_by_loops(images, labels, kern, cbias, w, b):
    """Loss, gradients and logits of conv 3x3 'same' -> relu -> 2x2 max pool -> dense -> mean softmax xent."""
    n, n_filters = len(images), len(cbias)
    g_kern, g_cbias, g_w, g_b = np.zeros(kern.shape), np.zeros(n_filters), np.zeros(w.shape), np.zeros(10)
    total, all_logits = 0.0, []
    for x, y in zip(images, labels):
        z = np.zeros((8, 8, n_filters))
        for i in range(8):
            for j in range(8):
                for f in range(n_filters):
                    s = cbias[f]
                    for a in range(3):
                        for c in range(3):
                            row, col = i + a - 1, j + c - 1  # 'same': pixels outside the image are 0
                            if 0 <= row < 8 and 0 <= col < 8:
                                s += x[row, col] * kern[a, c, 0, f]
                    z[i, j, f] = s
        relu = np.zeros_like(z)
        for i in range(8):
            for j in range(8):
                for f in range(n_filters):
                    relu[i, j, f] = max(z[i, j, f], 0.0)
        feat = np.zeros(16 * n_filters)
        winner = {}
        for pi in range(4):
            for pj in range(4):
                for f in range(n_filters):
                    best, where = -math.inf, None
                    for di in range(2):
                        for dj in range(2):
                            v = relu[2 * pi + di, 2 * pj + dj, f]
                            if v > best:  # the first maximum in row-major order
                                best, where = v, (2 * pi + di, 2 * pj + dj)
                    d = (pi * 4 + pj) * n_filters + f  # Keras's Flatten of (4, 4, filters)
                    feat[d] = best
                    winner[d] = (*where, f)
        logits = [b[k] + sum(feat[d] * w[d, k] for d in range(len(feat))) for k in range(10)]
        all_logits.append(logits)
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_norm - logits[y]
        dlogits = [math.exp(v - log_norm) - (k == y) for k, v in enumerate(logits)]
        for k in range(10):
            g_b[k] += dlogits[k]
            for d in range(len(feat)):
                g_w[d, k] += feat[d] * dlogits[k]
        for d, (i, j, f) in winner.items():
            if z[i, j, f] <= 0.0:
                continue  # relu'(z) = 0
            dz = sum(w[d, k] * dlogits[k] for k in range(10))
            g_cbias[f] += dz
            for a in range(3):
                for c in range(3):
                    row, col = i + a - 1, j + c - 1
                    if 0 <= row < 8 and 0 <= col < 8:
                        g_kern[a, c, 0, f] += dz * x[row, col]
    return total / n, [g / n for g in (g_kern, g_cbias, g_w, g_b)], np.array(all_logits)


def cnn_logits_numpy(images, kern, cbias, w, b):
    """The same forward pass vectorised with numpy (for the metrics over whole data sets)."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    z = np.zeros((len(images), 8, 8, len(cbias))) + cbias
    for a in range(3):
        for c in range(3):
            z += padded[:, a : a + 8, c : c + 8, None] * kern[a, c, 0]
    pooled = np.maximum(z, 0.0).reshape(len(images), 4, 2, 4, 2, -1).max(axis=(2, 4))
    return pooled.reshape(len(images), -1) @ w + b


def autoencoder_by_loops(images, params, activation):
    """Loss and gradients of the dense autoencoder, one example, layer and unit at a time."""
    layers = [(params[k], params[k + 1]) for k in range(0, len(params), 2)]
    act = math.tanh if activation == "tanh" else (lambda v: max(v, 0.0))
    grads = [np.zeros(p.shape) for p in params]
    total = 0.0
    for x in images:
        outs = [list(x)]
        for k, (w, b) in enumerate(layers):
            z = [b[o] + sum(outs[-1][i] * w[i, o] for i in range(w.shape[0])) for o in range(w.shape[1])]
            last = k == len(layers) - 1
            outs.append([1.0 / (1.0 + math.exp(-v)) if last else act(v) for v in z])
        xhat = outs[-1]
        total += sum((xhat[p] - x[p]) ** 2 for p in range(64)) / 64
        delta = [2.0 * (xhat[p] - x[p]) / (64 * len(images)) * xhat[p] * (1.0 - xhat[p]) for p in range(64)]
        for k in range(len(layers) - 1, -1, -1):
            w = layers[k][0]
            for i in range(w.shape[0]):
                for o in range(w.shape[1]):
                    grads[2 * k][i, o] += outs[k][i] * delta[o]
            for o in range(w.shape[1]):
                grads[2 * k + 1][o] += delta[o]
            if k:
                below = []
                for i in range(w.shape[0]):
                    back = sum(w[i, o] * delta[o] for o in range(w.shape[1]))
                    a = outs[k][i]
                    below.append(back * ((1.0 - a * a) if activation == "tanh" else float(a > 0.0)))
                delta = below
    return total / len(images), grads


def autoencoder_numpy(images, params, activation):
    """The autoencoder's reconstructions, vectorised with numpy."""
    out = images
    for k in range(0, len(params), 2):
        z = out @ params[k] + params[k + 1]
        if k == len(params) - 2:
            out = 1.0 / (1.0 + np.exp(-z))
        else:
            out = np.tanh(z) if activation == "tanh" else np.maximum(z, 0.0)
    return out


# -- gradients ----------------------------------------------------------------------------------

SMALL = [
    pytest.param(lambda: CNNDigits(filters=3), id="cnn"),
    pytest.param(lambda: AutoencoderDigits(hidden=[5, 3, 4]), id="autoencoder-tanh"),
    pytest.param(lambda: AutoencoderDigits(hidden=[6, 4], activation="relu"), id="autoencoder-relu"),
]


@pytest.mark.parametrize("make", SMALL)
def test_gradient_matches_central_finite_differences(make):
    problem = make()
    params = moved(problem)
    batch = np.array([4, 17, 230, 1001, 1300])
    grads = optlab.flat_like(params)
    loss = problem.loss_and_grad(params, grads, batch, None)
    assert loss == problem.loss(params, batch)
    for got, want in zip(grads, finite_difference(problem, params, batch)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_cnn_loss_and_gradient_match_plain_loops():
    problem = CNNDigits()  # the default 16 filters
    params = moved(problem, seed=5)
    batch = np.array([0, 9, 77, 500, 1437, 640])
    grads = optlab.flat_like(params)
    loss = problem.loss_and_grad(params, grads, batch)
    images = problem.x_train[batch].reshape(-1, 8, 8)
    want_loss, want_grads, want_logits = cnn_by_loops(images, problem.y_train[batch], *params)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name, got, want in zip(problem.parameter_names(), grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-13, err_msg=name)
    # the full batch (batch=None) is the mean over the whole training set (the loops, vectorised)
    logits = cnn_logits_numpy(problem.x_train.reshape(-1, 8, 8), *params)
    np.testing.assert_allclose(logits[batch], want_logits, rtol=1e-12)
    shifted = logits - logits.max(axis=1, keepdims=True)
    xent = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(logits)), problem.y_train]
    assert problem.loss(params) == pytest.approx(xent.mean(), rel=1e-12)


def test_cnn_metrics_match_an_independent_forward_pass():
    problem = CNNDigits(filters=4, validation_split=0.3, data_seed=2)
    params = moved(problem, seed=8)
    metrics = problem.evaluate(params)
    assert set(metrics) == {"accuracy", "val_loss", "val_accuracy"}
    train = cnn_logits_numpy(problem.x_train.reshape(-1, 8, 8), *params)
    val = cnn_logits_numpy(problem.x_val.reshape(-1, 8, 8), *params)
    assert metrics["accuracy"] == np.mean(train.argmax(axis=1) == problem.y_train)
    assert metrics["val_accuracy"] == np.mean(val.argmax(axis=1) == problem.y_val)
    shifted = val - val.max(axis=1, keepdims=True)
    xent = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(val)), problem.y_val]
    assert metrics["val_loss"] == pytest.approx(xent.mean(), rel=1e-12)
    assert len(problem.x_val) == round(0.3 * 1797)
    assert CNNDigits(filters=4, validation_split=0.0).evaluate(params).keys() == {"accuracy"}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_autoencoder_loss_and_gradient_match_plain_loops(activation):
    problem = AutoencoderDigits(activation=activation)  # the default 64-32-8-32-64
    params = moved(problem, seed=6)
    batch = np.array([3, 300, 1200, 42])
    grads = optlab.flat_like(params)
    loss = problem.loss_and_grad(params, grads, batch)
    want_loss, want_grads = autoencoder_by_loops(problem.x_train[batch], params, activation)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name, got, want in zip(problem.parameter_names(), grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14, err_msg=name)
    # val_loss: the same error over the held-out images (vectorised, checked on a few against the loops)
    xhat = autoencoder_numpy(problem.x_val, params, activation)
    assert np.mean((xhat[:3] - problem.x_val[:3]) ** 2) == pytest.approx(
        autoencoder_by_loops(problem.x_val[:3], params, activation)[0], rel=1e-12
    )
    assert problem.evaluate(params) == {"val_loss": pytest.approx(np.mean((xhat - problem.x_val) ** 2), rel=1e-12)}


# -- layout, seeds, runs --------------------------------------------------------------------------


def test_parameters_are_keras_named_and_glorot_initialised():
    cnn = CNNDigits(filters=8)
    assert cnn.parameter_names() == ["conv2d/kernel", "conv2d/bias", "dense/kernel", "dense/bias"]
    assert cnn.shapes() == [(3, 3, 1, 8), (8,), (128, 10), (10,)]
    auto = AutoencoderDigits()
    assert auto.parameter_names()[::2] == ["dense/kernel", "dense_1/kernel", "dense_2/kernel", "dense_3/kernel"]
    assert auto.parameter_names()[1::2] == ["dense/bias", "dense_1/bias", "dense_2/bias", "dense_3/bias"]
    assert auto.shapes() == [(64, 32), (32,), (32, 8), (8,), (8, 32), (32,), (32, 64), (64,)]
    for problem, fans in ((cnn, [(9, 72), (128, 10)]), (auto, [(64, 32), (32, 8), (8, 32), (32, 64)])):
        params = problem.init(seed=1, dtype=np.float64)
        np.testing.assert_array_equal(params.flat, problem.init(seed=1, dtype=np.float64).flat)
        assert not np.array_equal(params.flat, problem.init(seed=2, dtype=np.float64).flat)
        for (fan_in, fan_out), kern, bias in zip(fans, params[0::2], params[1::2]):
            limit = math.sqrt(6 / (fan_in + fan_out))  # Keras's glorot_uniform
            assert np.abs(kern).max() <= limit and np.abs(kern).max() > 0.8 * limit
            assert not bias.any()


@pytest.mark.parametrize("cls", [CNNDigits, AutoencoderDigits])
def test_a_seed_gives_one_run_and_two_seeds_two(cls):
    def run(seed):
        trainer = Trainer(cls(), Adam(1e-3), epochs=1, batch_size=32, seed=seed)
        trainer.fit()
        return trainer.params.flat.copy(), trainer.history.history

    (a, history_a), (b, history_b), (c, _) = run(0), run(0), run(1)
    assert a.tobytes() == b.tobytes() and history_a == history_b
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("cls", [CNNDigits, AutoencoderDigits])
def test_tuned_adam_reaches_the_declared_target_within_the_budget(cls):
    trainer = Trainer(cls(), Adam(TUNED_ADAM[cls]), epochs="auto", batch_size="auto", seed=0, stop_at_target=True)
    trainer.fit()
    assert trainer.target == cls.target
    assert trainer.target_reached is not None, f"{cls.target} not reached in {cls.budget}"
    assert trainer.target_reached["epoch"] <= cls.budget.epochs


@pytest.mark.parametrize("cls", [CNNDigits, AutoencoderDigits])
def test_declared_metadata(cls):
    problem = cls()
    meta = cls.metadata()
    assert meta["size_class"] == "small" and meta["budget"]["batch_size"] == 32
    logged = problem.metrics()
    assert cls.target.metric in logged and logged[cls.target.metric] == cls.target.direction
    assert logged["loss"] == "min" and logged["val_loss"] == "min"
    if cls is CNNDigits:
        assert logged["val_accuracy"] == "max" and logged["accuracy"] == "max"
    assert type(cls.from_config(problem.get_config())) is cls


# -- dtypes, arguments, buffers -------------------------------------------------------------------


@pytest.mark.parametrize("make", SMALL)
def test_float32_parameters_give_float32_gradients_computed_in_float64(make):
    problem = make()
    params64 = moved(problem)
    params32 = optlab.flatten(params64, np.float32)
    params64 = optlab.flatten(params32, np.float64)  # the same values, exactly
    batch = np.arange(10, 42)
    grads32, grads64 = optlab.flat_like(params32), optlab.flat_like(params64)
    loss32 = problem.loss_and_grad(params32, grads32, batch)
    loss64 = problem.loss_and_grad(params64, grads64, batch)
    assert grads32.flat.dtype == np.float32 and isinstance(loss32, float)
    assert loss32 == pytest.approx(loss64, rel=1e-12)  # float64 arithmetic in both
    np.testing.assert_allclose(grads32.flat, grads64.flat, rtol=2**-23, atol=1e-12)  # rounded once, to float32


@pytest.mark.parametrize("cls", [CNNDigits, AutoencoderDigits])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_trainer_runs_in_either_dtype(cls, dtype):
    trainer = Trainer(cls(), Adam(1e-3), epochs=2, batch_size=100, seed=0, dtype=dtype)
    history = trainer.fit().history
    assert trainer.params.flat.dtype == np.dtype(dtype)
    assert history["val_loss"][1] < history["val_loss"][0] and all(map(math.isfinite, history["loss"]))


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match=r"CNNDigits: `filters` must be an integer >= 1; received filters=0"):
        CNNDigits(filters=0)
    with pytest.raises(ValueError, match="`filters`"):
        CNNDigits(filters=2.5)
    with pytest.raises(ValueError, match=r"did you mean `filters`"):
        CNNDigits(filter=8)
    with pytest.raises(ValueError, match="`validation_split`"):
        CNNDigits(validation_split=1.0)
    with pytest.raises(ValueError, match="AutoencoderDigits: `hidden` must list at least one hidden layer"):
        AutoencoderDigits(hidden=[])
    with pytest.raises(ValueError, match="`hidden`"):
        AutoencoderDigits(hidden=[32, 0, 32])
    with pytest.raises(ValueError, match="`activation` must be one of 'tanh', 'relu'"):
        AutoencoderDigits(activation="sigmoid")
    with pytest.raises(ValueError, match="`data_seed`"):
        AutoencoderDigits(data_seed=-1)


def test_the_cnn_kernel_refuses_what_would_make_it_read_past_an_array():
    problem = CNNDigits(filters=4)
    params = problem.init(0)
    with pytest.raises(ValueError, match="wrong shapes"):
        problem.loss_and_grad(params, optlab.flat_like(CNNDigits(filters=5).init(0)), np.arange(4))
    with pytest.raises(IndexError, match="out of range"):
        problem.loss_and_grad(params, optlab.flat_like(params), np.array([0, problem.num_examples]))


@pytest.mark.parametrize(
    ("make", "bound"),
    [
        pytest.param(CNNDigits, 4_096, id="cnn"),  # the kernel allocates nothing
        # the autoencoder's buffers are kept per batch size; np.take(mode="raise") buffers the batch
        pytest.param(AutoencoderDigits, 32 * 64 * 8 + 4_096, id="autoencoder"),
    ],
)
def test_a_step_reuses_its_buffers(make, bound):
    problem = make()
    params = problem.init(0)
    grads = optlab.flat_like(params)
    batch = np.arange(100, 132)
    problem.loss_and_grad(params, grads, batch)  # compile, make the buffers
    tracemalloc.start()
    try:
        for _ in range(3):
            problem.loss_and_grad(params, grads, batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < bound
