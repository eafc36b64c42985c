"""Classic test functions with known minima (in n dimensions where they generalise, as seeded
COCO-style instances on request), and an ill-conditioned noisy quadratic.

In 2-D they record the optimizer's path (``Problem.record_path``) so that it can be plotted
over the function's contours.
"""

from __future__ import annotations

import math
import zlib
from typing import ClassVar

import numpy as np

from ..hparams import Hyper
from ..kernels import kernel, prange
from .base import MEASURED, Budget, Problem, Target


@kernel(fastmath={"reassoc"})
def _quadratic(z, d, g):
    """g = d * z; returns 0.5 * sum(d * z^2) accumulated in float64."""
    total = 0.0
    for i in prange(z.shape[0]):
        g[i] = d[i] * z[i]
        total += g[i] * z[i]
    return 0.5 * total


@kernel(parallel=False)
def _rosenbrock(z, g, a, b):
    """f = sum_i (a - z_i)^2 + b (z_{i+1} - z_i^2)^2 over consecutive pairs; its gradient into g."""
    n = z.shape[0]
    for i in range(n):
        g[i] = 0.0
    f = 0.0
    for i in range(n - 1):
        r = z[i + 1] - z[i] * z[i]
        d = a - z[i]
        f += d * d + b * r * r
        g[i] += -2.0 * d - 4.0 * b * z[i] * r
        g[i + 1] += 2.0 * b * r
    return f


@kernel(parallel=False)
def _rastrigin(z, g, amplitude):
    """f = A n + sum_i (z_i^2 - A cos(2 pi z_i)); its gradient into g."""
    two_pi = 2.0 * np.pi
    f = amplitude * z.shape[0]
    for i in range(z.shape[0]):
        f += z[i] * z[i] - amplitude * np.cos(two_pi * z[i])
        g[i] = 2.0 * z[i] + amplitude * two_pi * np.sin(two_pi * z[i])
    return f


@kernel(parallel=False)
def _styblinski_tang(z, g):
    """f = 0.5 sum_i (z_i^4 - 16 z_i^2 + 5 z_i); its gradient into g."""
    f = 0.0
    for i in range(z.shape[0]):
        z2 = z[i] * z[i]
        f += 0.5 * (z2 * z2 - 16.0 * z2 + 5.0 * z[i])
        g[i] = 2.0 * z2 * z[i] - 16.0 * z[i] + 2.5
    return f


#: how the targets were chosen (MEASURED, or these; docs/problems.md has the figures)
PRECISION = (
    "1e-8, COCO's final precision: every seed of tuned {opt} (lr={lr}) goes below it "
    "(python -m optlab.baselines {name})"
)
LOCAL = (
    "the worst seed's best of tuned {opt} (lr={lr}), seeds 0-4: a local minimum, not the global one, for some "
    "seeds (python -m optlab.baselines {name})"
)


def haar_rotation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random rotation, uniform (Haar) over the orthogonal group: QR of a Gaussian matrix with
    the signs of R's diagonal taken out (Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class AnalyticFunction(Problem):
    r"""A test function with a known minimum, in its own coordinates :math:`z` (``raw``) and, with
    ``instance`` k >= 1, as COCO makes instances of it: :math:`f(x) = f_{raw}(R (x - x^*) + z^*)`,
    a rotation :math:`R` (Haar-random) and an optimum moved to :math:`x^* \sim U[-4, 4]^n`, both
    drawn from k (and the function and dimension) — a different landscape per instance, the same
    one for every run of it. ``instance=0`` is the function as printed.

    The start is drawn from the run's seed around the classic one,
    :math:`x_0 + \sigma_0 N(0, I)` with :math:`\sigma_0` = ``start_spread`` (``start=classic``:
    exactly :math:`x_0`), mapped into the instance as the optimum is; ``noise`` adds Gaussian
    noise of that standard deviation to each gradient coordinate (fresh each step, from the
    trainer's seeded generator). Metrics: ``suboptimality`` :math:`f(x) - f^*` (COCO's
    precision), ``distance_to_optimum`` (to the nearest global minimum) and, in 2-D, the
    position ``x``, ``y`` (the trainer records the path, for plots over the contours).
    """

    metric_directions: ClassVar[dict[str, str]] = {"suboptimality": "min", "distance_to_optimum": "min"}
    metric_best: ClassVar[dict[str, float]] = {"suboptimality": 0.0, "distance_to_optimum": 0.0}
    budget = Budget(epochs=500)
    start = Hyper(
        "seeded", kind=str, choices=("seeded", "classic"), doc="seeded: around the classic start; classic: at it"
    )
    start_spread = Hyper(0.5, low=0.0, doc="standard deviation of the seeded start around the classic one")
    noise = Hyper(0.0, low=0.0, doc="standard deviation of the gradient noise")
    instance = Hyper(
        0, kind=int, low=0, doc="0: the function as printed; k >= 1: COCO-style instance k (rotated, shifted)"
    )
    #: the dimension of a function defined in 2-D only (the others declare a ``dim`` argument)
    dim = 2
    #: the global minimum's value
    f_min = 0.0

    # -- what a function defines -----------------------------------------------------------
    def raw(self, z: np.ndarray, g: np.ndarray) -> float:
        """f(z), with its gradient written into ``g`` (float64 arrays of ``dim``)."""
        raise NotImplementedError

    def raw_minima(self) -> list[np.ndarray]:
        """The global minima in the function's own coordinates."""
        raise NotImplementedError

    def raw_start(self) -> np.ndarray:
        """The classic start in the function's own coordinates."""
        raise NotImplementedError

    # -- the rest is generic -----------------------------------------------------------------
    def check(self):
        n = self.dim
        self.record_path = n == 2
        self._z, self._gz = np.empty(n), np.empty(n)
        if self.instance:
            key = zlib.crc32(self.registry_name.encode())  # each function its own instances, as COCO's
            rng = np.random.default_rng([self.instance, n, key])
            self._shift = rng.uniform(-4.0, 4.0, n)  # x*: where the instance's optimum is
            self._rotation = haar_rotation(rng, n)
            self._rotation_t = np.ascontiguousarray(self._rotation.T)
            self._anchor = self.raw_minima()[0]  # z*: the raw optimum x* maps onto
            self._tmp = np.empty(n)
        # the minima in x, once: evaluate() runs after every epoch, each step of a full-batch problem
        self._minima = [self._to_x(np.asarray(m, dtype=np.float64)) for m in self.raw_minima()]
        self._minima_xy = [(float(m[0]), float(m[1])) for m in self._minima] if n == 2 else None

    def _to_x(self, z: np.ndarray) -> np.ndarray:
        """A point of the function's own coordinates in the instance's (inverse of ``_to_z``)."""
        if not self.instance:
            return z
        return self._shift + self._rotation_t @ (z - self._anchor)

    def shapes(self):
        return [(self.dim,)]

    def initial_values(self, rng):
        start = np.array(self.raw_start(), dtype=np.float64)
        if self.start == "seeded":
            start += self.start_spread * rng.standard_normal(self.dim)
        return [self._to_x(start)]

    def _f_grad(self, x: np.ndarray) -> float:
        """f at ``x`` with the gradient left in ``self._gz`` (in x's coordinates)."""
        z, gz = self._z, self._gz
        if not self.instance:
            z[...] = x
            return self.raw(z, gz)
        np.subtract(x, self._shift, out=self._tmp)
        np.dot(self._rotation, self._tmp, out=z)
        z += self._anchor
        f = self.raw(z, self._tmp)
        np.dot(self._rotation_t, self._tmp, out=gz)  # the chain rule: R^T grad_z
        return f

    def value(self, x) -> float:
        """f at the point ``x`` (in the parameters' coordinates)."""
        return float(self._f_grad(np.asarray(x, dtype=np.float64)))

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run overflows to inf, as it should
            f = self._f_grad(params[0])
            g = self._gz
            if self.noise > 0:
                if rng is None:
                    raise ValueError(f"{type(self).__name__}: a noisy gradient needs the trainer's random generator")
                noise = self._noise_buffer()
                rng.standard_normal(out=noise)
                noise *= self.noise
                g += noise
            grads[0][...] = g
        return float(f)

    def _noise_buffer(self) -> np.ndarray:
        buf = getattr(self, "_noise", None)
        if buf is None:
            buf = self._noise = np.empty(self.dim)
        return buf

    def minima(self) -> list[np.ndarray]:
        """The global minima in the parameters' coordinates."""
        return [m.copy() for m in self._minima]

    def optimum(self):
        return [self.minima()[0]]

    def evaluate(self, params):
        x = params[0]
        with np.errstate(over="ignore", invalid="ignore"):
            f = float(self._f_grad(x)) - self.f_min
        if self._minima_xy is not None:  # 2-D: Python floats (numpy's per-call cost would dominate)
            px, py = float(x[0]), float(x[1])
            nearest = min(math.hypot(px - a, py - b) for a, b in self._minima_xy)
            return {"suboptimality": f, "distance_to_optimum": nearest, "x": px, "y": py}
        nearest = min(math.sqrt(float(np.sum((x - m) ** 2))) for m in self._minima)
        return {"suboptimality": f, "distance_to_optimum": nearest}


class _Pairs(AnalyticFunction):
    """A function whose classic start is a pair ``(x0, y0)``, repeated in n dimensions."""

    x0 = Hyper(-1.2, doc="classic starting x (in n dimensions: (x0, y0, x0, y0, ...))")
    y0 = Hyper(1.0, doc="classic starting y")

    def raw_start(self):
        return np.resize([self.x0, self.y0], self.dim)


class Rosenbrock(_Pairs):
    r"""Rosenbrock's banana: :math:`\sum_{i<n} (a - z_i)^2 + b (z_{i+1} - z_i^2)^2`, in 2-D
    :math:`(a - x)^2 + b (y - x^2)^2` with its minimum 0 at :math:`(a, a^2)`; in n > 2
    dimensions (``a`` = 1) the minimum 0 is at :math:`(1, \dots, 1)`. Classic start (-1.2, 1)."""

    registry_name = "rosenbrock"
    target = Target("suboptimality", "<=", 4e-6, measured=MEASURED.format(opt="Adam", lr=0.3, name="rosenbrock"))
    budget = Budget(epochs=2000)
    dim = Hyper(2, kind=int, low=2, doc="number of parameters")
    a = Hyper(1.0, doc="position of the minimum (1 in more than 2 dimensions)")
    b = Hyper(100.0, low=0.0, doc="steepness of the valley walls")

    def check(self):
        if self.dim > 2 and self.a != 1.0:
            raise ValueError(
                f"Rosenbrock: `a` must be 1 in more than 2 dimensions (its minimum is then known); "
                f"received a={self.a} with dim={self.dim}"
            )
        super().check()

    def raw(self, z, g):
        return _rosenbrock(z, g, self.a, self.b)

    def raw_minima(self):
        return [np.array([self.a, self.a * self.a]) if self.dim == 2 else np.ones(self.dim)]


class Beale(_Pairs):
    r"""Beale's function: :math:`\sum_{i=1}^{3} (c_i - x + x y^i)^2`, c = (1.5, 2.25, 2.625); minimum 0 at (3, 0.5)."""

    registry_name = "beale"
    target = Target("suboptimality", "<=", 1e-8, measured=PRECISION.format(opt="SGD", lr=0.03, name="beale"))
    budget = Budget(epochs=1000)
    x0 = Hyper(1.0, doc="classic starting x")
    y0 = Hyper(1.0, doc="classic starting y")

    def raw(self, z, g):
        x, y = z[0], z[1]
        f = gx = gy = 0.0
        for i, c in enumerate((1.5, 2.25, 2.625), start=1):
            t = c - x + x * y**i
            f += t * t
            gx += 2 * t * (y**i - 1)
            gy += 2 * t * i * x * y ** (i - 1)
        g[0], g[1] = gx, gy
        return f

    def raw_minima(self):
        return [np.array([3.0, 0.5])]


class Himmelblau(_Pairs):
    r"""Himmelblau's function: :math:`(x^2 + y - 11)^2 + (x + y^2 - 7)^2`, four minima of value 0."""

    registry_name = "himmelblau"
    target = Target("suboptimality", "<=", 1e-8, measured=PRECISION.format(opt="Adam", lr=0.1, name="himmelblau"))
    x0 = Hyper(0.0, doc="classic starting x")
    y0 = Hyper(0.0, doc="classic starting y")

    def raw(self, z, g):
        x, y = z[0], z[1]
        u = x * x + y - 11
        v = x + y * y - 7
        g[0], g[1] = 4 * x * u + 2 * v, 2 * u + 4 * y * v
        return u * u + v * v

    def raw_minima(self):
        return [
            np.array(m)
            for m in (
                (3.0, 2.0),
                (-2.805118086952745, 3.131312518250573),
                (-3.779310253377747, -3.283185991286170),
                (3.584428340330492, -1.848126526964404),
            )
        ]


class Rastrigin(_Pairs):
    r"""Rastrigin's function: :math:`A n + \sum_i (z_i^2 - A\cos 2\pi z_i)`, a local minimum near
    every integer point, the global one 0 at 0. Classic start (2.5, -1.5)."""

    registry_name = "rastrigin"
    target = Target("suboptimality", "<=", 25.0, measured=LOCAL.format(opt="SGD", lr=0.003, name="rastrigin"))
    dim = Hyper(2, kind=int, low=1, doc="number of parameters")
    x0 = Hyper(2.5, doc="classic starting x (in n dimensions: (x0, y0, x0, y0, ...))")
    y0 = Hyper(-1.5, doc="classic starting y")
    amplitude = Hyper(10.0, low=0.0, doc="A, the depth of the local minima")

    def raw(self, z, g):
        return _rastrigin(z, g, self.amplitude)

    def raw_minima(self):
        return [np.zeros(self.dim)]


#: where each coordinate of the Styblinski-Tang function is minimal: the root of 2 z^3 - 16 z + 2.5 near -2.9
_ST_ARGMIN = -2.903534027771178


class StyblinskiTang(AnalyticFunction):
    r"""The Styblinski–Tang function: :math:`\tfrac12 \sum_i (z_i^4 - 16 z_i^2 + 5 z_i)`, separable
    with :math:`2^n` local minima (each coordinate near -2.90 or 2.75); the global one is at
    :math:`z_i = -2.903534` with value :math:`-39.16617\,n`. Classic start 0 (between the two
    basins of every coordinate)."""

    registry_name = "styblinski_tang"
    target = Target("suboptimality", "<=", 29.0, measured=LOCAL.format(opt="SGD", lr=0.03, name="styblinski_tang"))
    dim = Hyper(2, kind=int, low=1, doc="number of parameters")

    @property
    def f_min(self):
        z = _ST_ARGMIN
        return self.dim * 0.5 * (z**4 - 16 * z * z + 5 * z)

    def raw(self, z, g):
        return _styblinski_tang(z, g)

    def raw_minima(self):
        return [np.full(self.dim, _ST_ARGMIN)]

    def raw_start(self):
        return np.zeros(self.dim)


class Quadratic(AnalyticFunction):
    r"""A convex quadratic :math:`\tfrac12 \sum_i d_i z_i^2` with :math:`d` log-spaced from 1 to
    ``condition_number``: axis-aligned as printed (``instance=0``, where a per-coordinate step
    size such as Adam's fixes the conditioning), rotated in an instance (where it cannot). The
    minimum is 0; the start is seeded, standard normal around 0 (``start_spread`` 1), or
    1 everywhere with ``start=classic``."""

    registry_name = "quadratic"
    target = Target("suboptimality", "<=", 1e-8, measured=PRECISION.format(opt="Adam", lr=0.3, name="quadratic"))
    budget = Budget(epochs=500)
    dim = Hyper(100, kind=int, low=1, doc="number of parameters")
    condition_number = Hyper(100.0, low=1.0, doc="largest over smallest curvature")
    start_spread = Hyper(1.0, low=0.0, doc="standard deviation of the seeded start around 0")

    def check(self):
        self._d = np.geomspace(1.0, self.condition_number, self.dim) if self.dim > 1 else np.ones(1)
        super().check()

    def raw(self, z, g):
        return _quadratic(z, self._d, g)

    def raw_minima(self):
        return [np.zeros(self.dim)]

    def raw_start(self):
        return np.zeros(self.dim)

    def initial_values(self, rng):
        if self.start == "classic":
            return [self._to_x(np.ones(self.dim))]
        return super().initial_values(rng)


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
    target = Target("val_loss", "<=", 86.0, measured=MEASURED.format(opt="Adam", lr=0.03, name="noisy_quadratic"))
    budget = Budget(epochs=100, batch_size=128)  # DeepOBS's for quadratic_deep
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
        # each example's x_i^T H x_i, once: a batch's loss is then O(b d + d^2), not O(b d^2)
        self._q_train = np.einsum("ij,ij->i", self.x_train @ self.hessian, self.x_train)
        self._val_mean = self.x_val.mean(axis=0)
        self._val_spread = self._spread(self._val_mean, np.einsum("ij,ij->i", self.x_val @ self.hessian, self.x_val))

    @property
    def num_examples(self):
        return self.n_train

    def shapes(self):
        return [(self.dim,)]

    def initial_values(self, rng):
        return [np.ones(self.dim)]

    def _spread(self, mean, q):
        """0.5 mean_i (x_i - m)^T H (x_i - m) = 0.5 (mean_i x_i^T H x_i - m^T H m): the loss's part
        that no theta removes."""
        return 0.5 * (float(q.mean()) - float(mean @ self.hessian @ mean))

    def _loss_grad(self, theta, mean, spread):
        """The mean of 0.5 (theta - x_i)^T H (theta - x_i) over examples of mean ``mean``:
        0.5 (theta - m)^T H (theta - m) + spread, and its gradient H (theta - m)."""
        hd = self.hessian @ (theta - mean)
        return 0.5 * float((theta - mean) @ hd) + spread, hd

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        x, q = (self.x_train, self._q_train) if batch is None else (self.x_train[batch], self._q_train[batch])
        mean = x.mean(axis=0)
        loss, grad = self._loss_grad(params[0].astype(np.float64), mean, self._spread(mean, q))
        grads[0][...] = grad
        return loss

    def datasets(self):
        source = "generated by optlab.problems.NoisyQuadratic from data_seed"
        return [
            {"name": "quadratic_deep", "split": split, "size": self.n_train, "seed": self.data_seed, "source": source}
            | {"generated": True}
            for split in ("train", "validation")
        ]

    def optimum(self):
        return [np.zeros(self.dim)]

    def evaluate(self, params):
        theta = params[0].astype(np.float64)
        return {
            "val_loss": self._loss_grad(theta, self._val_mean, self._val_spread)[0],
            "distance_to_optimum": float(np.sqrt(theta @ theta)),
        }
