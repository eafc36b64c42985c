"""Matrix factorization of seeded low-rank ratings: embedding tables with sparse gradients."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..flat import FlatArrays
from ..hparams import Hyper
from ..kernels import kernel
from ..sparse import IndexedSlices
from .base import MEASURED, Budget, Target
from .data import _Supervised


@kernel(parallel=False)
def _batch_rows(batch, users, items, ratings, u_table, v_table, l2, gu, gv, iu, iv):
    """Per rating ``t = batch[b]`` of user u, item i, with e = U[u] . V[i] - r and c = 2 / B:
    gu[b] = c (e V[i] + l2 U[u]), gv[b] = c (e U[u] + l2 V[i]), iu[b] = u, iv[b] = i.
    Returns the batch loss mean(e^2 + l2 (|U[u]|^2 + |V[i]|^2)), summed in float64."""
    n = batch.shape[0]
    k = u_table.shape[1]
    c = 2.0 / n
    total = 0.0
    for b in range(n):
        t = batch[b]
        u = users[t]
        i = items[t]
        pred = 0.0  # float64 sums, also for float32 tables: k products are cheap either way
        norms = 0.0
        for j in range(k):
            pred += u_table[u, j] * v_table[i, j]
            norms += u_table[u, j] * u_table[u, j] + v_table[i, j] * v_table[i, j]
        e = pred - ratings[t]
        total += e * e + l2 * norms
        ce = c * e
        cl = c * l2
        for j in range(k):
            gu[b, j] = ce * v_table[i, j] + cl * u_table[u, j]
            gv[b, j] = ce * u_table[u, j] + cl * v_table[i, j]
        iu[b] = u
        iv[b] = i
    return total / n


@kernel(parallel=False)
def _scatter_add(dense, rows, values):
    """dense[rows[b]] += values[b], row by row (a repeated row adds up)."""
    for b in range(rows.shape[0]):
        r = rows[b]
        for j in range(dense.shape[1]):
            dense[r, j] += values[b, j]


@kernel(parallel=False)
def _squared_error(users, items, ratings, u_table, v_table):
    """sum over the examples of (U_u . V_i - r)^2, in float64."""
    total = 0.0
    k = u_table.shape[1]
    for t in range(users.shape[0]):
        u = users[t]
        i = items[t]
        pred = 0.0
        for j in range(k):
            pred += u_table[u, j] * v_table[i, j]
        e = pred - ratings[t]
        total += e * e
    return total


class MatrixFactorization(_Supervised):
    r"""Low-rank matrix factorization of seeded synthetic ratings, as a recommender's embedding tables.

    Data (from ``data_seed``): true factors :math:`U^* \in \mathbb{R}^{m \times r}` and
    :math:`V^* \in \mathbb{R}^{n \times r}` (``n_users``, ``n_items``, ``rank``) with entries
    :math:`\mathcal{N}(0, r^{-1/2})`, so that a noiseless rating has unit variance; ratings
    :math:`R_{ui} = U^*_u \cdot V^*_i + \sigma \varepsilon_{ui}` (:math:`\sigma` = ``noise``)
    observed at :math:`\mathrm{round}(\rho m n)` distinct entries drawn uniformly (:math:`\rho` =
    ``density``); a seeded permutation holds out ``validation_split`` of them for validation.

    Model: embedding tables :math:`U` (``user_embedding/embeddings``, :math:`m \times k`) and
    :math:`V` (``item_embedding/embeddings``, :math:`n \times k`), :math:`k` = ``model_rank``
    (default ``rank``), predicting :math:`\hat r_{ui} = U_u \cdot V_i`; no biases (the data has
    no offsets to fit). They start :math:`\mathcal{N}(0, s^2)` (:math:`s` = ``init_stddev``),
    drawn from the run's seed.

    Loss on a batch :math:`B` of observed ratings :math:`(u, i, r)`:

    .. math::
        L = \frac{1}{|B|} \sum_{(u, i, r) \in B} \Big[ (U_u \cdot V_i - r)^2
            + \lambda \big( \|U_u\|^2 + \|V_i\|^2 \big) \Big]

    with :math:`\lambda` = ``l2``. The L2 penalty is applied per occurrence, to the rows a
    rating touches, once per rating (the convention of SGD matrix factorization: Funk, 2006;
    Koren, Bell and Volinsky, 2009): over an epoch of :math:`N` training ratings, a user with
    :math:`n_u` of them is penalised :math:`\lambda n_u \|U_u\|^2 / N`. It keeps the gradient
    to the batch's rows; a penalty on the whole tables would make every step dense.

    Gradients: the tables' are :class:`~optlab.sparse.IndexedSlices` with one row per rating
    of the batch (indices the batch's user / item ids, repeats adding up), put into ``grads``
    when it is a plain list (the trainer's, ``Problem.loss``'s); their arrays are the problem's
    scratch buffers, valid until the next call. Into a ``FlatArrays`` (``flat_like``, whose
    ``.flat`` buffer its holder reads) or a tuple the dense gradient is written. A trainer given
    an instance with ``sparse_gradients = False`` therefore runs the same steps densely.

    Metrics: ``rmse`` (training ratings), ``val_loss`` (mean squared error on the validation
    ratings) and ``val_rmse`` :math:`= \sqrt{\texttt{val\_loss}}`, all without the penalty.
    The true factors score ``noise``; fitted from the defaults' 20,000 training ratings (about
    20 per user, 40 per item) the embeddings reach about :math:`1.3\sigma` (0.132 after 150
    epochs of Adagrad or Adam).
    """

    registry_name = "matrix_factorization"
    data_name, data_source = "ratings", None
    sparse_gradients = True
    metric_directions: ClassVar[dict[str, str]] = {"loss": "min", "rmse": "min"}
    metric_best: ClassVar[dict[str, float]] = {"loss": 0.0, "rmse": 0.0}
    target: ClassVar[Target | None] = Target(
        "val_rmse",
        "<=",
        0.15,
        measured=MEASURED.format(opt="SGD", lr=10, name="matrix_factorization")
        + " (Adagrad, tuned finer: 0.140 +- 0.0006 at lr=5; the noise floor is 0.1, about 0.132 after 150 epochs)",
    )
    budget: ClassVar[Budget] = Budget(epochs=30, batch_size=256)
    size_class: ClassVar[str] = "small"

    n_users = Hyper(1000, kind=int, low=1, doc="rows of the ratings matrix (users)")
    n_items = Hyper(500, kind=int, low=1, doc="columns of the ratings matrix (items)")
    rank = Hyper(5, kind=int, low=1, doc="rank of the true factors")
    model_rank = Hyper(None, kind=int, low=1, doc="rank of the fitted factors (None: rank)")
    density = Hyper(0.05, low=0.0, low_open=True, high=1.0, doc="fraction of the entries observed")
    noise = Hyper(0.1, low=0.0, doc="standard deviation of the rating noise")
    l2 = Hyper(1e-3, low=0.0, doc="L2 penalty per rating on the rows it touches")
    init_stddev = Hyper(0.05, low=0.0, doc="standard deviation of the initial embeddings")

    def check(self):
        observed = round(self.density * self.n_users * self.n_items)
        held_out = round(self.validation_split * observed)
        if observed - held_out < 1:
            raise ValueError(
                f"MatrixFactorization: `density` leaves no training rating: density={self.density} of "
                f"{self.n_users} x {self.n_items} entries is {observed}, of which {held_out} are held out "
                f"(validation_split={self.validation_split})"
            )
        super().check()
        self._k = self.rank if self.model_rank is None else self.model_rank
        # contiguous columns for the kernels
        self._users = np.ascontiguousarray(self.x_train[:, 0])
        self._items = np.ascontiguousarray(self.x_train[:, 1])
        self._ratings = np.ascontiguousarray(self.y_train)
        self._val_users = np.ascontiguousarray(self.x_val[:, 0])
        self._val_items = np.ascontiguousarray(self.x_val[:, 1])
        self._val_ratings = np.ascontiguousarray(self.y_val)
        self._everything = np.arange(len(self._ratings))  # the full batch
        self._scratch: dict = {}  # dtype -> (gu, gv, iu, iv), batch-sized, reused from step to step

    def load_data(self, rng):
        # not ``rng`` (default_rng(data_seed)): that is the stream a trainer with seed == data_seed
        # draws the initial embeddings from, which would start them proportional to the true factors
        rng = np.random.default_rng(np.random.SeedSequence(self.data_seed).spawn(1)[0])
        m, n, r = self.n_users, self.n_items, self.rank
        scale = r**-0.25  # entries N(0, r^-1/2): a product of two has variance 1/r, a sum of r of them 1
        self.true_u = scale * rng.standard_normal((m, r))
        self.true_v = scale * rng.standard_normal((n, r))
        observed = round(self.density * m * n)
        cells = np.sort(rng.choice(m * n, size=observed, replace=False))
        users, items = np.divmod(cells, n)
        ratings = np.einsum("ij,ij->i", self.true_u[users], self.true_v[items])
        ratings += self.noise * rng.standard_normal(observed)
        return np.stack([users, items], axis=1), ratings

    def shapes(self):
        return [(self.n_users, self._k), (self.n_items, self._k)]

    def parameter_names(self):
        return ["user_embedding/embeddings", "item_embedding/embeddings"]  # Keras's Embedding layers

    def initial_values(self, rng):
        return [self.init_stddev * rng.standard_normal(shape) for shape in self.shapes()]

    def _buffers(self, dtype, size):
        buffers = self._scratch.get(dtype)
        if buffers is None or len(buffers[2]) < size:
            k = self._k
            buffers = self._scratch[dtype] = (
                np.empty((size, k), dtype),
                np.empty((size, k), dtype),
                np.empty(size, np.int64),
                np.empty(size, np.int64),
            )
        return [b[:size] for b in buffers]

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        u_table, v_table = params[0], params[1]
        batch = self._everything if batch is None else np.asarray(batch, np.intp)  # the kernel takes arrays
        gu, gv, iu, iv = self._buffers(u_table.dtype, len(batch))
        loss = _batch_rows(
            batch, self._users, self._items, self._ratings, u_table, v_table, float(self.l2), gu, gv, iu, iv
        )
        if isinstance(grads, list) and not isinstance(grads, FlatArrays):
            grads[0] = IndexedSlices(gu, iu, u_table.shape)
            grads[1] = IndexedSlices(gv, iv, v_table.shape)
        else:  # storage whose arrays the caller reads: the dense gradient
            for dense, rows, values in ((grads[0], iu, gu), (grads[1], iv, gv)):
                dense[...] = 0
                _scatter_add(dense, rows, values)
        return float(loss)

    def _mse(self, params, users, items, ratings) -> float:
        return float(_squared_error(users, items, ratings, params[0], params[1])) / len(ratings)

    def train_metrics(self, params):
        return {"rmse": math.sqrt(self._mse(params, self._users, self._items, self._ratings))}

    def validation_metrics(self, params):
        loss = self._mse(params, self._val_users, self._val_items, self._val_ratings)
        return {"val_loss": loss, "val_rmse": math.sqrt(loss)}
