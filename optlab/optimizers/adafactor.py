"""Adafactor (Shazeer and Stern, 2018): factored second moments."""

import math

import numpy as np

from ..hparams import Hyper
from ..kernels import kernel
from .base import Optimizer
from .layout import Slot


@kernel(parallel=False)
def _adafactor_factored(p, g, r, c, v, out, one, b2t, one_minus_b2t, eps1, eps2, rho, clip):
    """p, g, v: (B, R, C); r: (B, R); c: (B, C). out is a 1-element scratch of
    the parameters' dtype: results stored in it are rounded to that dtype."""
    nb, nr, nc = p.shape
    p_sq = 0.0
    for b in range(nb):
        for i in range(nr):
            for j in range(nc):
                p_sq += p[b, i, j] * p[b, i, j]
    for b in range(nb):
        for i in range(nr):
            s = 0.0
            for j in range(nc):
                s += g[b, i, j] * g[b, i, j] + eps1
            out[0] = s / nc
            r[b, i] = b2t * r[b, i] + one_minus_b2t * out[0]
        for j in range(nc):
            s = 0.0
            for i in range(nr):
                s += g[b, i, j] * g[b, i, j] + eps1
            out[0] = s / nr
            c[b, j] = b2t * c[b, j] + one_minus_b2t * out[0]
        s = 0.0
        for i in range(nr):
            s += r[b, i]
        out[0] = s / nr
        r_mean = out[0]
        for i in range(nr):
            for j in range(nc):
                v[b, i, j] = (r[b, i] / r_mean) * c[b, j]
    u_sq = 0.0
    for b in range(nb):
        for i in range(nr):
            for j in range(nc):
                u = g[b, i, j] / math.sqrt(v[b, i, j])
                u_sq += u * u
    n = nb * nr * nc
    out[0] = math.sqrt(p_sq / n)
    alpha = max(eps2, out[0]) * rho
    out[0] = math.sqrt(u_sq / n) / clip
    denom = max(one, out[0])
    for b in range(nb):
        for i in range(nr):
            for j in range(nc):
                p[b, i, j] -= alpha * ((g[b, i, j] / math.sqrt(v[b, i, j])) / denom)


@kernel(parallel=False)
def _adafactor_vector(p, g, v, out, one, b2t, one_minus_b2t, eps1, eps2, rho, clip):
    n = p.shape[0]
    p_sq = 0.0
    u_sq = 0.0
    for i in range(n):
        p_sq += p[i] * p[i]
        v[i] = b2t * v[i] + one_minus_b2t * (g[i] * g[i] + eps1)
        u = g[i] / math.sqrt(v[i])
        u_sq += u * u
    out[0] = math.sqrt(p_sq / n)
    alpha = max(eps2, out[0]) * rho
    out[0] = math.sqrt(u_sq / n) / clip
    denom = max(one, out[0])
    for i in range(n):
        p[i] -= alpha * ((g[i] / math.sqrt(v[i])) / denom)


def _rows(shape):
    return int(np.prod(shape[:-1])) if len(shape) >= 2 else 0


def _cols(shape):
    return int(np.prod(shape[:-2])) * shape[-1] if len(shape) >= 2 else 0


class Adafactor(Optimizer):
    r"""Adafactor: second moments stored as row and column averages for matrices.

    With :math:`t` the step, :math:`\hat\beta_{2,t} = 1 - t^{d}` (``beta_2_decay`` :math:`d`),
    :math:`\rho_t = \min(\eta, 1/\sqrt t)` and :math:`\alpha_t = \max(\epsilon_2, \operatorname{RMS}(p))\,\rho_t`:

    .. math::
        G &= g^2 + \epsilon_1 \\
        R &\leftarrow \hat\beta_{2,t} R + (1-\hat\beta_{2,t}) \operatorname{mean}_{cols} G, \quad
        C \leftarrow \hat\beta_{2,t} C + (1-\hat\beta_{2,t}) \operatorname{mean}_{rows} G \\
        v &= \frac{R}{\operatorname{mean}(R)} \otimes C
             \quad (\text{tensors of rank} < 2: v \leftarrow \hat\beta_{2,t} v + (1-\hat\beta_{2,t}) G) \\
        u &= g / \sqrt v, \qquad p \leftarrow p - \alpha_t\, u / \max(1, \operatorname{RMS}(u)/d_{clip})

    For rank > 2 the last two axes are factored and the leading axes batched.
    As in Keras, the learning rate only enters through :math:`\rho_t` and ``relative_step`` changes nothing
    beyond that; ``v`` is kept at full size (Keras keeps it too).
    Reference: Shazeer and Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
    arXiv:1804.04235.
    """

    registry_name = "adafactor"
    beta_2_decay = Hyper(-0.8, high=0.0, doc="exponent d of the second-moment decay 1 - t^d")
    epsilon_1 = Hyper(1e-30, low=0.0, low_open=True, doc="added to the squared gradient")
    epsilon_2 = Hyper(1e-3, low=0.0, doc="lower bound of the parameter RMS in the step size")
    clip_threshold = Hyper(1.0, low=0.0, low_open=True, doc="threshold d_clip of the update RMS")
    relative_step = Hyper(True, kind=bool, doc="cap the learning rate at 1/sqrt(t)")

    def slots(self):
        # averages of g^2 + epsilon_1, and v built from them (or one itself, below rank 2)
        return {
            "row": Slot(0.0, _rows, nonnegative=True),
            "col": Slot(0.0, _cols, nonnegative=True),
            "velocity": Slot(0.0, nonnegative=True),
        }

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        t = dt(step)
        rho = min(lr, dt(1.0) / dt(math.sqrt(t)))
        b2t = dt(1.0) - t ** dt(self.beta_2_decay)
        args = (
            np.empty(1, param.dtype),
            dt(1.0),
            b2t,
            dt(1.0) - b2t,
            dt(self.epsilon_1),
            dt(self.epsilon_2),
            dt(rho),
            dt(self.clip_threshold),
        )
        rows, cols = seg.views(state["row"], "row"), seg.views(state["col"], "col")
        for p, g, v, r, c, shape in zip(
            seg.views(param), seg.views(grad), seg.views(state["velocity"]), rows, cols, seg.shapes
        ):
            if len(shape) < 2:
                _adafactor_vector(p.reshape(-1), g.reshape(-1), v.reshape(-1), *args)
                continue
            lead = int(np.prod(shape[:-2]))
            p3 = p.reshape(lead, shape[-2], shape[-1])
            _adafactor_factored(
                p3,
                g.reshape(p3.shape),
                r.reshape(lead, shape[-2]),
                c.reshape(lead, shape[-1]),
                v.reshape(p3.shape),
                *args,
            )
