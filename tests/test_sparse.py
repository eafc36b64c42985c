"""Sparse gradients (``IndexedSlices``): the same numbers as the dense gradient they stand for
(Keras's ``optimizer_sparse_test.test_sparse_correctness``, every optimizer and option there),
and for SGD and Adagrad a step that reads and writes only the given rows."""

from __future__ import annotations

import numpy as np
import pytest

import optlab
from optlab.optimizers import LossScaleOptimizer
from optlab.sparse import IndexedSlices

# Keras 3.15's TEST_CASES of keras/src/optimizers/optimizer_sparse_test.py, plus optlab's others
CASES = [
    ("adadelta", {}),
    ("adafactor", {"clip_threshold": 0.5}),
    ("adagrad", {}),
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adamax", {}),
    ("adamw", {}),
    ("adamw", {"amsgrad": True}),
    ("ftrl", {}),
    ("lion", {}),
    ("nadam", {}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.05}),
    ("rmsprop", {"momentum": 0.05, "centered": True}),
    ("sgd", {}),
    ("sgd", {"momentum": 0.05}),
    ("sgd", {"momentum": 0.05, "nesterov": True}),
    ("lamb", {}),
    ("muon", {}),
    ("schedule_free_adamw", {}),
    # the generic options on the two optimizers that update rows alone
    ("sgd", {"clipnorm": 1.0}),
    ("sgd", {"global_clipnorm": 1.0}),
    ("adagrad", {"clipvalue": 0.5}),
    ("adagrad", {"weight_decay": 0.1}),
    ("sgd", {"use_ema": True}),
    ("adagrad", {"gradient_accumulation_steps": 2}),
    ("sgd", {"loss_scale_factor": 4.0}),
]


def _dense(grad: IndexedSlices, shape) -> np.ndarray:
    """The dense gradient, built here by plain loops (independent of optlab's own conversion)."""
    out = np.zeros(shape, grad.values.dtype)
    for row, values in zip(grad.indices, grad.values):
        out[row] += values
    return out


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_a_sparse_gradient_gives_the_numbers_of_the_dense_one(name, kwargs):
    # Keras's test: a (5, 3, 2) variable of ones, rows (0, 2, 4) with values 10 - i, five steps;
    # here beside a dense parameter in the same step, and with a repeated row
    sparse_opt, dense_opt = optlab.optimizers.get(name, **kwargs), optlab.optimizers.get(name, **kwargs)
    table_s, table_d = np.ones((5, 3, 2), np.float32), np.ones((5, 3, 2), np.float32)
    other_s, other_d = np.ones(4, np.float32), np.ones(4, np.float32)
    for i in range(5):
        grad = IndexedSlices(np.ones((4, 3, 2), np.float32) * (10.0 - i), [0, 2, 4, 2])
        other_grad = np.full(4, 0.5 - i, np.float32)
        sparse_opt.apply([grad, other_grad], [table_s, other_s])
        dense_opt.apply([_dense(grad, (5, 3, 2)), other_grad], [table_d, other_d])
        np.testing.assert_allclose(table_s, table_d, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(other_s, other_d, rtol=1e-6, atol=1e-7)
    assert sparse_opt.iterations == dense_opt.iterations > 0
    for key, value in dense_opt.variables.items():
        np.testing.assert_allclose(sparse_opt.variables[key], value, rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize(("name", "kwargs"), [("sgd", {}), ("adagrad", {}), ("adagrad", {"clipnorm": 0.1})])
def test_sgd_and_adagrad_read_and_write_only_the_given_rows(name, kwargs, monkeypatch):
    opt = optlab.optimizers.get(name, **kwargs)
    table = np.arange(40, dtype=np.float64).reshape(10, 4) / 7
    before = table.copy()
    seen = []
    update = type(opt).update

    def spy(self, param, grad, state, lr, step, seg):
        seen.append(param.size)
        return update(self, param, grad, state, lr, step, seg)

    monkeypatch.setattr(type(opt), "update", spy)
    grad = IndexedSlices(np.full((3, 4), 2.0), [7, 1, 7])
    opt.apply([grad], [table])
    assert seen == [8]  # the kernel ran on rows 1 and 7 (2 x 4 values), not on the 40 of the table
    untouched = [r for r in range(10) if r not in (1, 7)]
    np.testing.assert_array_equal(table[untouched], before[untouched])
    # row 7 got 2 + 2: by hand, SGD moves it by -lr * 4; Adagrad by -lr * 4 / sqrt(0.1 + 16)
    lr = 0.01 if name == "sgd" else 0.001
    if name == "sgd":
        np.testing.assert_allclose(table[7], before[7] - lr * 4.0)
    elif not kwargs:
        np.testing.assert_allclose(table[7], before[7] - lr * 4.0 / (np.sqrt(0.1 + 16.0) + 1e-7))
    if name == "adagrad":  # the accumulator grew on those rows only
        acc = opt.variables["0/accumulator"].reshape(10, 4)
        assert (acc[untouched] == 0.1).all() and (acc[[1, 7]] > 0.1).all()


def test_momentum_moves_rows_without_a_gradient_as_keras_does():
    # SGD with momentum: a row seen once keeps moving (dense semantics), so no row is skipped
    opt = optlab.optimizers.SGD(learning_rate=0.1, momentum=0.5)
    table = np.zeros((3, 2))
    opt.apply([IndexedSlices(np.ones((1, 2)), [0])], [table])
    opt.apply([IndexedSlices(np.ones((1, 2)), [1])], [table])
    np.testing.assert_allclose(table[0], [-0.1 - 0.05] * 2)  # m = -0.1, then 0.5 * m
    np.testing.assert_allclose(table[1], [-0.1] * 2)
    np.testing.assert_array_equal(table[2], [0, 0])


def test_a_loss_scale_optimizer_gives_the_numbers_of_the_dense_gradient():
    # Keras's case loss_scale_optimizer_sgd of test_sparse_correctness
    def make():
        return LossScaleOptimizer(optlab.optimizers.SGD(learning_rate=0.5))

    sparse_opt, dense_opt = make(), make()
    table_s, table_d = np.ones((5, 3, 2), np.float32), np.ones((5, 3, 2), np.float32)
    for i in range(5):
        grad = IndexedSlices(np.ones((3, 3, 2), np.float32) * (10.0 - i), [0, 2, 4])
        sparse_opt.apply([grad], [table_s])
        dense_opt.apply([_dense(grad, (5, 3, 2))], [table_d])
        np.testing.assert_allclose(table_s, table_d, rtol=1e-6)


def test_a_loss_scale_optimizer_takes_sparse_gradients():
    # Keras's case loss_scale_optimizer_sgd: the scale divides the values; non-finite values skip the step
    opt = LossScaleOptimizer(optlab.optimizers.SGD(learning_rate=0.5), initial_scale=4.0)
    table = np.ones((5, 2), np.float32)
    opt.apply([IndexedSlices(np.full((2, 2), 8.0, np.float32), [0, 3])], [table])
    np.testing.assert_allclose(table[[0, 3]], 1.0 - 0.5 * 2.0)
    np.testing.assert_array_equal(table[[1, 2, 4]], 1.0)
    opt.apply([IndexedSlices(np.array([[np.inf, 1.0]], np.float32), [1])], [table])
    assert opt.dynamic_scale == 2.0 and (table[1] == 1.0).all()


BAD = [
    (IndexedSlices(np.ones((2, 3)), [0, 1]), "values have shape (2, 3); for 2 rows of a parameter of shape (5, 2)"),
    (IndexedSlices(np.ones((1, 2)), [5]), "row index 5, outside [0, 5)"),
    (IndexedSlices(np.ones((1, 2)), [-1]), "row index -1, outside [0, 5)"),
    (IndexedSlices(np.ones((1, 2)), [0.5]), "indices must be a 1-D array of integers"),
    (IndexedSlices(np.ones((1, 2)), [[0]]), "indices must be a 1-D array of integers"),
    (IndexedSlices(np.ones((1, 2), np.float32), [0]), "values have dtype float32 but its parameter has dtype float64"),
    (IndexedSlices(np.ones((1, 2)), [0], dense_shape=(6, 2)), "dense_shape (6, 2) but its parameter has shape (5, 2)"),
]


@pytest.mark.parametrize(("grad", "message"), BAD)
def test_a_malformed_sparse_gradient_is_refused_and_changes_nothing(grad, message):
    opt = optlab.optimizers.Adam()
    table = np.ones((5, 2))
    opt.apply([np.ones((5, 2))], [table])
    before, state = table.copy(), {k: np.copy(v) for k, v in opt.variables.items()}
    with pytest.raises(ValueError) as error:
        opt.apply([grad], [table])
    assert message in str(error.value)
    np.testing.assert_array_equal(table, before)
    for key, value in opt.variables.items():
        np.testing.assert_array_equal(value, state[key])


def test_to_dense_adds_repeated_rows():
    assert optlab.IndexedSlices is IndexedSlices
    grad = IndexedSlices([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [2, 0, 2], dense_shape=(3, 2))
    np.testing.assert_array_equal(grad.to_dense(), [[3, 4], [0, 0], [6, 8]])
