"""Matrix factorization: gradients against finite differences and a loop-by-loop reference,
sparse and dense steps agreeing, seeded data and runs, the target at the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from references import finite_difference

import optlab
from optlab.optimizers import SGD, Adagrad, Adam
from optlab.problems.factorization import MatrixFactorization
from optlab.sparse import IndexedSlices
from optlab.trainer import Trainer

TINY = {"n_users": 7, "n_items": 5, "rank": 2, "density": 0.8, "l2": 0.1, "noise": 0.1}
SMALL = {"n_users": 120, "n_items": 80, "rank": 3, "density": 0.2}
SGD_ADAM = ["sgd", "adam"]
BY_ROWS = ["sgd", "adagrad"]  # the optimizers that step a sparse gradient's rows alone


def dense(grad, shape) -> np.ndarray:
    """The dense gradient of an IndexedSlices, by plain loops (not optlab's conversion)."""
    assert isinstance(grad, IndexedSlices)
    out = np.zeros(shape)
    for row, values in zip(grad.indices, grad.values):
        out[row] += values
    return out


def gradient(problem, params, batch):
    """The problem's loss and dense gradient (copied at once: the slices are scratch buffers)."""
    grads = list(params)
    loss = problem.loss_and_grad(params, grads, batch)
    return loss, [dense(g, p.shape) for g, p in zip(grads, params)]


def started(problem, seed=3):
    params = problem.init(seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in params:  # away from the small start, where the products are tiny
        p += 0.5 * rng.standard_normal(p.shape)
    return params


def reference(problem, params, batch):
    """Loss and gradient by loops over the batch's ratings, written from the documented formula."""
    users, items = problem.x_train[:, 0], problem.x_train[:, 1]
    ratings = problem.y_train
    if batch is None:
        batch = range(len(ratings))
    u_table, v_table = np.array(params[0], np.float64), np.array(params[1], np.float64)
    gu, gv = np.zeros_like(u_table), np.zeros_like(v_table)
    lam, n, loss = problem.l2, len(batch), 0.0
    for t in batch:
        u, i, r = users[t], items[t], ratings[t]
        e = sum(u_table[u, j] * v_table[i, j] for j in range(u_table.shape[1])) - r
        loss += e * e + lam * (sum(u_table[u] ** 2) + sum(v_table[i] ** 2))
        for j in range(u_table.shape[1]):
            gu[u, j] += 2.0 / n * (e * v_table[i, j] + lam * u_table[u, j])
            gv[i, j] += 2.0 / n * (e * u_table[u, j] + lam * v_table[i, j])
    return loss / n, [gu, gv]


@pytest.mark.parametrize("full_batch", [False, True], ids=["minibatch", "full-batch"])
def test_gradient_matches_central_finite_differences(full_batch):
    problem = MatrixFactorization(**TINY)
    params = started(problem)
    batch = None if full_batch else next(iter(problem.batches(np.random.default_rng(1), batch_size=9)))
    _, got = gradient(problem, params, batch)
    for k, want in enumerate(finite_difference(problem, params, batch)):
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-8)
        assert np.count_nonzero(want) > 0


@pytest.mark.parametrize("model_rank", [None, 4])
def test_loss_and_gradient_match_a_loop_by_loop_reference(model_rank):
    problem = MatrixFactorization(**SMALL, l2=0.03, model_rank=model_rank)
    params = started(problem)
    assert params[0].shape == (120, model_rank or 3) and params[1].shape == (80, model_rank or 3)
    for batch in [next(iter(problem.batches(np.random.default_rng(2), batch_size=64))), None]:
        loss, got = gradient(problem, params, batch)
        want_loss, want = reference(problem, params, batch)
        assert loss == pytest.approx(want_loss, rel=1e-12)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)


def test_slices_name_the_batch_rows_and_repeats_add_up():
    problem = MatrixFactorization(**SMALL, l2=0.05)
    params = started(problem)
    users, items = problem.x_train[:, 0], problem.x_train[:, 1]
    # two ratings of one user (different items), then one rating given three times
    u = np.bincount(users).argmax()
    a, b = np.flatnonzero(users == u)[:2]
    batch = np.array([a, b, a, a])
    grads = list(params)
    problem.loss_and_grad(params, grads, batch)
    gu, gv = grads
    assert isinstance(gu, IndexedSlices) and isinstance(gv, IndexedSlices)
    np.testing.assert_array_equal(gu.indices, users[batch])  # one row per rating, in batch order
    np.testing.assert_array_equal(gv.indices, items[batch])
    assert gu.values.shape == (4, 3) and gu.dense_shape == params[0].shape
    np.testing.assert_array_equal(gu.values[2], gu.values[0])  # the same rating: the same row
    du = dense(gu, params[0].shape)
    np.testing.assert_allclose(du[u], gu.values[0] * 3 + gu.values[1])
    assert np.count_nonzero(np.abs(du).sum(axis=1)) == 1  # no other user row
    # a rating given three times in a batch of four weighs 3/4: the reference says the same
    _, want = reference(problem, params, batch)
    np.testing.assert_allclose(du, want[0], rtol=1e-12)
    np.testing.assert_allclose(dense(gv, params[1].shape), want[1], rtol=1e-12)


def test_gradient_storage_gets_the_dense_gradient_and_loss_ignores_grads():
    problem = MatrixFactorization(**SMALL)
    params = started(problem)
    batch = np.arange(50)
    loss, want = gradient(problem, params, batch)
    storage = optlab.flat_like(params)  # FlatArrays: its holder reads .flat, so it is filled
    storage.flat[:] = np.nan
    assert problem.loss_and_grad(params, storage, batch) == loss
    assert all(type(g) is np.ndarray for g in storage)
    np.testing.assert_allclose(storage[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(storage[1], want[1], rtol=1e-12)
    as_tuple = tuple(np.full(p.shape, np.nan) for p in params)
    problem.loss_and_grad(params, as_tuple, batch)
    np.testing.assert_allclose(as_tuple[0], want[0], rtol=1e-12)
    assert problem.loss(params, batch) == loss  # Problem.loss's list of scratch arrays takes the slices


def test_slices_have_the_parameters_dtype():
    problem = MatrixFactorization(**SMALL)
    params = problem.init(seed=0)  # float32
    grads = list(params)
    loss = problem.loss_and_grad(params, grads, np.arange(40))
    assert isinstance(loss, float)
    assert grads[0].values.dtype == np.float32 and grads[1].values.dtype == np.float32


def test_data_depends_on_data_seed_only_and_not_on_the_run_seed():
    a, b, c = MatrixFactorization(**SMALL), MatrixFactorization(**SMALL), MatrixFactorization(**SMALL, data_seed=1)
    for name in ("x_train", "y_train", "x_val", "y_val", "true_u", "true_v"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(getattr(a, name), getattr(c, name))
    n = 120 * 80
    assert len(a.y_train) + len(a.y_val) == round(0.2 * n) and len(a.y_val) == round(0.2 * round(0.2 * n))
    cells = a.x_train[:, 0] * 80 + a.x_train[:, 1]
    assert len(np.unique(np.concatenate([cells, a.x_val[:, 0] * 80 + a.x_val[:, 1]]))) == round(0.2 * n)
    # a run seeded like the data does not start on the true factors (independent streams)
    start = a.init(seed=0, dtype=np.float64)
    corr = np.corrcoef(start[0].ravel(), a.true_u.ravel())[0, 1]
    assert abs(corr) < 0.2


def test_the_true_factors_score_the_noise():
    problem = MatrixFactorization(n_users=400, n_items=300, rank=4, density=0.2, noise=0.3)
    metrics = problem.evaluate([problem.true_u, problem.true_v])
    assert set(metrics) == {"rmse", "val_loss", "val_rmse"} and all(type(v) is float for v in metrics.values())
    assert metrics["val_rmse"] == pytest.approx(0.3, rel=0.05)  # 4,800 validation ratings
    assert metrics["rmse"] == pytest.approx(0.3, rel=0.05)
    assert metrics["val_rmse"] == pytest.approx(math.sqrt(metrics["val_loss"]), rel=1e-12)
    signal = problem.true_u[problem.x_val[:, 0]] * problem.true_v[problem.x_val[:, 1]]
    assert np.var(signal.sum(axis=1)) == pytest.approx(1.0, rel=0.1)  # unit-variance ratings, as documented
    pred = signal.sum(axis=1)
    assert metrics["val_loss"] == pytest.approx(np.mean((pred - problem.y_val) ** 2), rel=1e-12)


def fit(problem, optimizer, seed, epochs=3, dtype="float32"):
    trainer = Trainer(problem, optimizer, epochs=epochs, batch_size=64, seed=seed, dtype=dtype)
    history = trainer.fit()
    return np.array(trainer.params.flat), history.history


@pytest.mark.parametrize(
    "make", [lambda: SGD(learning_rate=10.0), lambda: Adam(learning_rate=0.02)], ids=["sgd", "adam"]
)
def test_one_seed_one_run_two_seeds_two_runs(make):
    first, h1 = fit(MatrixFactorization(**SMALL), make(), seed=1)
    again, h2 = fit(MatrixFactorization(**SMALL), make(), seed=1)
    other, _ = fit(MatrixFactorization(**SMALL), make(), seed=2)
    np.testing.assert_array_equal(first, again)
    assert h1["val_rmse"] == h2["val_rmse"]
    assert not np.array_equal(first, other)
    assert np.isfinite(first).all() and h1["val_rmse"][-1] < h1["val_rmse"][0]


@pytest.mark.parametrize(
    "make", [lambda: SGD(learning_rate=10.0), lambda: Adagrad(learning_rate=3.0)], ids=["sgd", "adagrad"]
)
def test_the_sparse_path_is_the_dense_math(make, monkeypatch):
    sizes = []
    opt = make()
    update = type(opt).update

    def spy(self, param, grad, state, lr, step, seg):
        sizes.append(param.size)
        return update(self, param, grad, state, lr, step, seg)

    sparse = MatrixFactorization(**SMALL)
    with monkeypatch.context() as patch:
        patch.setattr(type(opt), "update", spy)
        by_rows, hist_rows = fit(sparse, opt, seed=4, dtype="float64")
    # every step went row by row: at most one row per rating of a batch of 64, never a whole table
    assert sizes and max(sizes) <= 64 * 3 < 80 * 3
    dense = MatrixFactorization(**SMALL)
    dense.sparse_gradients = False  # the trainer then hands its gradient storage: dense gradients
    whole, hist_dense = fit(dense, make(), seed=4, dtype="float64")
    np.testing.assert_allclose(by_rows, whole, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(hist_rows["val_rmse"], hist_dense["val_rmse"], rtol=1e-6)


def test_target_is_reached_at_the_budget_by_the_tuned_optimizer():
    problem = MatrixFactorization()
    target, budget = problem.target, problem.budget
    assert target.metric == "val_rmse" and target.direction == "min"
    assert problem.metric_directions["rmse"] == "min"
    trainer = Trainer(problem, Adagrad(learning_rate=5.0), epochs=budget.epochs, batch_size=budget.batch_size, seed=0)
    history = trainer.fit().history
    assert len(history["val_rmse"]) == budget.epochs
    assert target.reached(min(history["val_rmse"]))
    assert min(history["val_rmse"]) > problem.noise  # and no better than the noise allows


def test_names_config_and_metadata():
    assert type(optlab.problems.get({"name": "matrix_factorization", **TINY})) is MatrixFactorization
    problem = MatrixFactorization(**TINY, model_rank=3)
    assert MatrixFactorization.from_config(problem.get_config()).get_config() == problem.get_config()
    assert problem.parameter_names() == ["user_embedding/embeddings", "item_embedding/embeddings"]
    assert problem.shapes() == [(7, 3), (5, 3)]
    assert problem.sparse_gradients is True
    assert MatrixFactorization.metadata()["target"]["text"] == "val_rmse <= 0.15"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model_rank": 0}, "model_rank"),
        ({"rank": 0}, "rank"),
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"density": -0.1}, "density"),
        ({"n_users": 0}, "n_users"),
        ({"n_items": 2.5}, "n_items"),
        ({"noise": -1.0}, "noise"),
        ({"l2": -0.1}, "l2"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"n_users": 3, "n_items": 3, "density": 0.05}, "density"),  # round(0.45) = 0 ratings
        ({"n_users": 2, "n_items": 2, "density": 0.25, "validation_split": 0.6}, "density"),  # 1 rating, held out
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        MatrixFactorization(**kwargs)
