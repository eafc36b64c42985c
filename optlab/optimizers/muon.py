"""Muon (Jordan et al., 2024): orthogonalized momentum for matrices, AdamW for the rest."""

import math

import numpy as np

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..names import name_pattern
from .adam import _ADAM, adam_betas
from .base import Optimizer
from .layout import Slot


@kernel
def _muon_momentum(m, g, look, mu, mu_minus_one, nesterov):
    """m <- mu m + g (Keras's m += g + (mu - 1) m); look <- g + mu m (Nesterov) or m."""
    for i in prange(m.shape[0]):
        m[i] += g[i] + m[i] * mu_minus_one
        if nesterov:
            look[i] = g[i] + mu * m[i]
        else:
            look[i] = m[i]


@kernel
def _muon_step(p, x, lr, scale, rms_rate):
    """p <- p - ((lr x) scale) rms_rate, rounded step by step as Keras's ``lr_adjust(lr * x)``."""
    for i in prange(p.shape[0]):
        p[i] -= ((x[i] * lr) * scale) * rms_rate


def newton_schulz5(x: np.ndarray, steps: int, a: float, b: float, c: float, work: np.ndarray | None = None):
    r"""Approximate the orthogonal factor U V^T of ``x = U S V^T`` by a quintic Newton-Schulz iteration.

    From :math:`X = x / (\|x\|_F + 10^{-7})`, each step is Keras's :math:`X \leftarrow aX + (bA + cA^2)X`
    with :math:`A = XX^T`, written as one BLAS product :math:`X \leftarrow MX`, :math:`M = aI + bA + (cA)A`
    (two passes over ``x`` fewer). A tall ``x`` (Keras transposes it) is worked on as it lies:
    :math:`A = X^TX` and :math:`X \leftarrow XM^T`, so the Gram matrix is always of the smaller side.
    ``work``, a C-contiguous float array of shape ``(2, *x.shape)`` in ``x``'s dtype, holds the iterates
    (``x`` may be ``work[0]``); the result is one of them. Without it, a new one is made.
    """
    dt = x.dtype.type
    work = np.empty((2, *x.shape), x.dtype) if work is None else work
    cur, nxt = work[0], work[1]
    np.divide(x, np.linalg.norm(x) + dt(1e-7), out=cur)
    tall = x.shape[0] > x.shape[1]
    m = min(x.shape)
    gram, poly, diagonal = np.empty((m, m), x.dtype), np.empty((m, m), x.dtype), np.arange(m)
    for _ in range(steps):
        if tall:
            np.matmul(cur.T, cur, out=gram)
        else:
            np.matmul(cur, cur.T, out=gram)
        np.matmul(dt(c) * gram, gram, out=poly)
        poly += dt(b) * gram
        poly[diagonal, diagonal] += dt(a)
        if tall:
            np.matmul(cur, poly.T, out=nxt)
        else:
            np.matmul(poly, cur, out=nxt)
        cur, nxt = nxt, cur
    return cur


def newton_schulz_flops(shape: tuple, steps: int) -> int:
    r"""Floating-point operations of the matrix products of ``newton_schulz5`` on a matrix of ``shape``:
    per step, with :math:`m \le n` its sides, :math:`2m^2n` (the Gram matrix) + :math:`2m^3` (its square)
    + :math:`2m^2n` (the product with :math:`X`), so ``steps * (4 m^2 n + 2 m^3)``."""
    m, n = sorted(shape)
    return steps * (4 * m * m * n + 2 * m**3)


class Muon(Optimizer):
    r"""Muon: momentum orthogonalized by Newton-Schulz for 2-D parameters; AdamW for all others.

    For a 2-D parameter of shape :math:`(r, c)`:

    .. math::
        m &\leftarrow \mu m + g, \qquad o = g + \mu m \ (\text{Nesterov}) \text{ or } m \\
        p &\leftarrow p - \eta\, \operatorname{NS}_5(o)\, \sqrt{\max(r, c)}\ \text{rms\_rate}

    where :math:`\operatorname{NS}_5` runs ``ns_steps`` iterations of
    :math:`X \leftarrow aX + (bA + cA^2)X`, :math:`A = XX^T`, from :math:`X = o/(\|o\|_F + 10^{-7})`,
    as BLAS matrix products on the Gram matrix of the smaller side (``newton_schulz5``), in two
    buffers the size of the largest matrix kept across steps.
    Parameters of any other rank take an Adam step with ``adam_beta_1``, ``adam_beta_2``,
    ``epsilon`` and learning rate ``learning_rate * adam_lr_ratio``, and decay with
    ``adam_weight_decay`` instead of ``weight_decay``.

    As in Keras, named 2-D parameters take the AdamW step too where their name contains
    ``embedding`` (any case; with ``exclude_embeddings``) or a match of one of the regular
    expressions ``exclude_layers`` (``re.search``). Parameters are named by passing them as a
    dict ``{name: array}`` (see ``Optimizer.build``); unnamed ones are routed by rank alone, and
    ``exclude_layers`` then needs names.
    Reference: Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"
    (kellerjordan.github.io/posts/muon); Liu et al., 2025, "Muon is Scalable for LLM Training" (rms_rate).
    """

    registry_name = "muon"
    adam_beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="Adam first-moment decay (non-2-D)")
    adam_beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="Adam second-moment decay (non-2-D)")
    adam_weight_decay = Hyper(0.004, low=0.0, doc="weight decay of non-2-D parameters")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="Adam epsilon (non-2-D)")
    weight_decay = Hyper(0.004, low=0.0, doc="weight decay of 2-D parameters")
    muon_a = Hyper(3.4445, doc="Newton-Schulz coefficient a")
    muon_b = Hyper(-4.775, doc="Newton-Schulz coefficient b")
    muon_c = Hyper(2.0315, doc="Newton-Schulz coefficient c")
    adam_lr_ratio = Hyper(1.0, low=0.0, doc="learning-rate multiplier of the Adam parameters")
    momentum = Hyper(0.95, low=0.0, high=1.0, high_open=True, doc="momentum of the 2-D parameters")
    ns_steps = Hyper(5, kind=int, low=0, doc="Newton-Schulz iterations")
    nesterov = Hyper(True, kind=bool, doc="use the Nesterov look-ahead")
    rms_rate = Hyper(0.2, low=0.0, low_open=True, optional=True, doc="match AdamW's update RMS (None: no scaling)")
    exclude_embeddings = Hyper(True, kind=bool, doc="2-D parameters named like an embedding take the AdamW step")
    exclude_layers = Hyper(
        None, kind=list, item=Hyper(kind=str), doc="regular expressions: named parameters matching one take AdamW"
    )

    def check(self):
        name_pattern(self.exclude_layers, "Muon: `exclude_layers`")  # each a regular expression

    def uses_adam(self, shape: tuple, name: str | None) -> bool:
        """Keras's rule (``_should_use_adamw``): AdamW for every parameter but the 2-D ones, and
        for 2-D ones named like an embedding or matching ``exclude_layers``."""
        if len(shape) != 2:
            return True
        if name is None:
            return False
        if self.exclude_embeddings and "embedding" in name.lower():
            return True
        pattern = name_pattern(self.exclude_layers, "Muon: `exclude_layers`")
        return pattern is not None and pattern.search(name) is not None

    def _adam_size(self, shape, name):
        return math.prod(shape) if self.uses_adam(shape, name) else 0

    def slots(self):
        return {"momentum": 0.0, "velocity": Slot(0.0, self._adam_size, nonnegative=True)}  # Adam's v

    def weight_decay_rate(self, shape, name=None):
        return self.adam_weight_decay if self.uses_adam(shape, name) else self.weight_decay

    def _new_plan(self, layout, params, names=None):
        if self.exclude_layers and layout.names is None and names is None:
            raise ValueError(
                f"Muon: exclude_layers={self.exclude_layers!r} selects parameters by name, and these are "
                "unnamed: pass them as a dict {name: array} to build() or apply()"
            )
        return super()._new_plan(layout, params, names)

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        adam = None
        mu = dt(self.momentum)
        for p, g, m, v, shape, name in zip(
            seg.views(param),
            seg.views(grad),
            seg.views(state["momentum"]),
            seg.views(state["velocity"], "velocity"),
            seg.shapes,
            seg.names,
        ):
            if self.uses_adam(shape, name):
                if adam is None:
                    adam = (lr * dt(self.adam_lr_ratio), *adam_betas(dt, self.adam_beta_1, self.adam_beta_2))
                flat = p.reshape(-1), g.reshape(-1), m.reshape(-1), v, v
                _ADAM[False, False](*flat, *adam, dt(self.epsilon), step, 0.0)
                continue
            work = self._work(p)
            look = work[0]
            _muon_momentum(m.reshape(-1), g.reshape(-1), look.reshape(-1), mu, dt(self.momentum - 1), self.nesterov)
            direction = newton_schulz5(look, self.ns_steps, self.muon_a, self.muon_b, self.muon_c, work)
            scale = (dt(math.sqrt(max(shape))), dt(self.rms_rate)) if self.rms_rate is not None else (dt(1), dt(1))
            _muon_step(p.reshape(-1), direction.reshape(-1), lr, *scale)

    def _work(self, p: np.ndarray) -> np.ndarray:
        """Two C-contiguous arrays shaped like ``p`` for the Newton-Schulz iterates: views of one buffer
        kept across steps (and parameters), grown to the largest matrix."""
        buf = self.__dict__.get("_ns_work")
        if buf is None or buf.size < 2 * p.size or buf.dtype != p.dtype:
            buf = self._ns_work = np.empty(2 * max(p.size, 0 if buf is None else buf.size // 2), p.dtype)
        return buf[: 2 * p.size].reshape(2, *p.shape)

    def step_flops(self, shapes, names=None) -> int:
        """Matrix-product flops of one step on parameters of ``shapes`` (``newton_schulz_flops`` of each
        parameter that takes the Newton-Schulz step; the AdamW ones count none)."""
        names = [None] * len(shapes) if names is None else names
        return sum(
            newton_schulz_flops(tuple(s), self.ns_steps)
            for s, n in zip(shapes, names)
            if not self.uses_adam(tuple(s), n)
        )
