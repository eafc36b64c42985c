"""Classic test functions with known minima, and an ill-conditioned noisy quadratic.

The 2-D functions record the optimizer's path (``Problem.record_path``) so that it can be
plotted over the function's contours.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..hparams import Hyper
from ..kernels import kernel, prange, sum_of_squares
from .base import Problem


@kernel(fastmath={"reassoc"})
def _quadratic(x, d, g):
    """g = d * x; returns 0.5 * sum(d * x^2) accumulated in float64."""
    total = 0.0
    for i in prange(x.shape[0]):
        g[i] = d[i] * x[i]
        total += g[i] * x[i]
    return 0.5 * total


class _TwoD(Problem):
    """A 2-D test function. The start is drawn from the run's seed around the classic one,
    ``(x0, y0) + start_spread * N(0, I)`` (``start=classic``: exactly ``(x0, y0)``), so that
    seeds give different runs; ``noise`` adds Gaussian noise of that standard deviation to
    each gradient coordinate (fresh each step, from the trainer's seeded generator)."""

    record_path = True
    metric_directions: ClassVar[dict[str, str]] = {"distance_to_optimum": "min"}  # x and y have no direction
    x0 = Hyper(-1.2, doc="classic starting x")
    y0 = Hyper(1.0, doc="classic starting y")
    start = Hyper("seeded", kind=str, choices=("seeded", "classic"), doc="seeded: around (x0, y0); classic: at it")
    start_spread = Hyper(0.5, low=0.0, doc="standard deviation of the seeded start around (x0, y0)")
    noise = Hyper(0.0, low=0.0, doc="standard deviation of the gradient noise")
    minima: tuple[tuple[float, float], ...] = ()

    def shapes(self):
        return [(2,)]

    def initial_values(self, rng):
        start = np.array([self.x0, self.y0], dtype=np.float64)
        if self.start == "seeded":
            start += self.start_spread * rng.standard_normal(2)
        return [start]

    def f_grad(self, x: float, y: float) -> tuple[float, float, float]:
        raise NotImplementedError

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        # numpy scalars: a diverging run overflows to inf (Python floats would raise OverflowError)
        x, y = np.float64(params[0][0]), np.float64(params[0][1])
        with np.errstate(over="ignore", invalid="ignore"):
            f, gx, gy = self.f_grad(x, y)
            if self.noise > 0:
                if rng is None:
                    raise ValueError(f"{type(self).__name__}: a noisy gradient needs the trainer's random generator")
                ex, ey = rng.standard_normal(2)
                gx, gy = gx + self.noise * ex, gy + self.noise * ey
            grads[0][0] = gx
            grads[0][1] = gy
        return float(f)

    def optimum(self):
        return [np.array(self.minima[0])] if self.minima else None

    def evaluate(self, params):
        x, y = (float(v) for v in params[0])
        nearest = min(math.hypot(x - a, y - b) for a, b in self.minima)
        return {"x": x, "y": y, "distance_to_optimum": nearest}


class Rosenbrock(_TwoD):
    r"""Rosenbrock's banana: :math:`f = (a - x)^2 + b (y - x^2)^2`, minimum 0 at :math:`(a, a^2)`."""

    registry_name = "rosenbrock"
    a = Hyper(1.0, doc="position of the minimum")
    b = Hyper(100.0, low=0.0, doc="steepness of the valley walls")

    @property
    def minima(self):
        return ((self.a, self.a * self.a),)

    def f_grad(self, x, y):
        a, b = self.a, self.b
        r = y - x * x
        return (a - x) ** 2 + b * r * r, -2 * (a - x) - 4 * b * x * r, 2 * b * r


class Beale(_TwoD):
    r"""Beale's function: :math:`\sum_{i=1}^{3} (c_i - x + x y^i)^2`, c = (1.5, 2.25, 2.625); minimum 0 at (3, 0.5)."""

    registry_name = "beale"
    x0 = Hyper(1.0, doc="classic starting x")
    y0 = Hyper(1.0, doc="classic starting y")
    minima = ((3.0, 0.5),)

    def f_grad(self, x, y):
        f = gx = gy = 0.0
        for i, c in enumerate((1.5, 2.25, 2.625), start=1):
            t = c - x + x * y**i
            f += t * t
            gx += 2 * t * (y**i - 1)
            gy += 2 * t * i * x * y ** (i - 1)
        return f, gx, gy


class Himmelblau(_TwoD):
    r"""Himmelblau's function: :math:`(x^2 + y - 11)^2 + (x + y^2 - 7)^2`, four minima of value 0."""

    registry_name = "himmelblau"
    x0 = Hyper(0.0, doc="classic starting x")
    y0 = Hyper(0.0, doc="classic starting y")
    minima = (
        (3.0, 2.0),
        (-2.805118086952745, 3.131312518250573),
        (-3.779310253377747, -3.283185991286170),
        (3.584428340330492, -1.848126526964404),
    )

    def f_grad(self, x, y):
        u = x * x + y - 11
        v = x + y * y - 7
        return u * u + v * v, 4 * x * u + 2 * v, 2 * u + 4 * y * v


class Rastrigin(_TwoD):
    r"""Rastrigin's function in 2-D: :math:`2A + \sum (x_i^2 - A\cos 2\pi x_i)`, many local minima, global 0 at 0."""

    registry_name = "rastrigin"
    x0 = Hyper(2.5, doc="classic starting x")
    y0 = Hyper(-1.5, doc="classic starting y")
    amplitude = Hyper(10.0, low=0.0, doc="A, the depth of the local minima")
    minima = ((0.0, 0.0),)

    def f_grad(self, x, y):
        a = self.amplitude
        two_pi = 2 * math.pi
        f = 2 * a + x * x - a * math.cos(two_pi * x) + y * y - a * math.cos(two_pi * y)
        return f, 2 * x + a * two_pi * math.sin(two_pi * x), 2 * y + a * two_pi * math.sin(two_pi * y)


class Quadratic(Problem):
    r"""A convex quadratic :math:`\tfrac12 \sum_i d_i x_i^2` with :math:`d` log-spaced from 1 to ``condition_number``.

    The gradient :math:`d \odot x` gets Gaussian noise of standard deviation ``noise`` per
    coordinate (fresh each step, from the trainer's seeded generator). The optimum is 0; the
    start is seeded, standard normal.
    """

    registry_name = "quadratic"
    metric_directions: ClassVar[dict[str, str]] = {"distance_to_optimum": "min"}
    dim = Hyper(100, kind=int, low=1, doc="number of parameters")
    condition_number = Hyper(100.0, low=1.0, doc="largest over smallest curvature")
    noise = Hyper(0.0, low=0.0, doc="standard deviation of the gradient noise")

    def check(self):
        self._d = np.geomspace(1.0, self.condition_number, self.dim) if self.dim > 1 else np.ones(1)
        self._d32 = self._d.astype(np.float32)

    def shapes(self):
        return [(self.dim,)]

    def initial_values(self, rng):
        return [rng.standard_normal(self.dim)]

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        x, g = params[0], grads[0]
        d = self._d32 if x.dtype == np.float32 else self._d
        loss = float(_quadratic(x, d, g))
        if self.noise > 0:
            if rng is None:
                raise ValueError("Quadratic: a noisy gradient needs the trainer's random generator (rng)")
            scratch = self._noise_buffer(g)
            rng.standard_normal(out=scratch, dtype=g.dtype)
            scratch *= g.dtype.type(self.noise)
            g += scratch
        return loss

    def _noise_buffer(self, g):
        buf = getattr(self, "_noise", None)
        if buf is None or buf.shape != g.shape or buf.dtype != g.dtype:
            buf = self._noise = np.empty_like(g)
        return buf

    def optimum(self):
        return [np.zeros(self.dim)]

    def evaluate(self, params):
        return {"distance_to_optimum": math.sqrt(sum_of_squares(params[0]))}  # the optimum is 0


class NoisyQuadratic(Problem):
    r"""DeepOBS's ``quadratic_deep``: the stochastic quadratic with a deep network's eigenspectrum.

    The loss of one example is :math:`\tfrac12 (\theta - x_i)^T H (\theta - x_i)`, the mean over
    a minibatch. :math:`H = Q^T \mathrm{diag}(\lambda) Q`: 90% of the eigenvalues uniform in
    [0, 1], 10% in [30, 60] (the spectrum reported for neural networks, Chaudhari et al. 2017),
    :math:`Q` a random rotation (Haar-distributed); the examples :math:`x_i` are
    ``n_train`` draws of :math:`N(0, \sigma^2 I)`, ``noise_level`` :math:`\sigma`. Minibatches of
    them make the gradient noisy, the large eigenvalues make it ill-conditioned. As in DeepOBS
    the parameters start at 1 and the problem itself (spectrum, rotation, data) is fixed by
    ``data_seed`` — the run's seed changes the batch order — and ``val_loss`` is the loss on
    ``n_train`` other draws. ``distance_to_optimum`` is to the minimiser of the expected loss, 0.
    Reference: Schneider, Balles and Hennig, 2019, "DeepOBS: A Deep Learning Optimizer Benchmark Suite" (ICLR).
    """

    registry_name = "noisy_quadratic"
    metric_directions: ClassVar[dict[str, str]] = {"distance_to_optimum": "min"}
    dim = Hyper(100, kind=int, low=2, doc="number of parameters")
    n_train = Hyper(1000, kind=int, low=1, doc="examples in the training set (and in the validation set)")
    noise_level = Hyper(0.6, low=0.0, doc="standard deviation of the examples around 0")
    data_seed = Hyper(42, kind=int, low=0, doc="seeds the spectrum, the rotation and the examples")

    def check(self):
        rng = np.random.default_rng(self.data_seed)
        small = round(0.9 * self.dim)
        self.eigenvalues = np.concatenate((rng.uniform(0.0, 1.0, small), rng.uniform(30.0, 60.0, self.dim - small)))
        q, r = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        q *= np.sign(np.diag(r))  # Haar-distributed: the signs of R's diagonal taken out
        self.hessian = q.T @ (self.eigenvalues[:, None] * q)
        self.x_train = rng.normal(0.0, self.noise_level, (self.n_train, self.dim))
        self.x_val = rng.normal(0.0, self.noise_level, (self.n_train, self.dim))

    @property
    def num_examples(self):
        return self.n_train

    def shapes(self):
        return [(self.dim,)]

    def initial_values(self, rng):
        return [np.ones(self.dim)]

    def _loss_grad(self, theta, x):
        diff = theta[None, :] - x  # (examples, dim)
        hd = diff @ self.hessian
        loss = 0.5 * float(np.einsum("ij,ij->", hd, diff)) / len(x)
        return loss, hd.mean(axis=0)  # H symmetric: the mean of H (theta - x_i)

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        x = self.x_train if batch is None else self.x_train[batch]
        loss, grad = self._loss_grad(params[0].astype(np.float64), x)
        grads[0][...] = grad
        return loss

    def optimum(self):
        return [np.zeros(self.dim)]

    def evaluate(self, params):
        theta = params[0].astype(np.float64)
        return {
            "val_loss": self._loss_grad(theta, self.x_val)[0],
            "distance_to_optimum": float(np.sqrt(theta @ theta)),
        }
