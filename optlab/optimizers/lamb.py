"""LAMB (You et al., 2019): Adam with a per-tensor trust ratio."""

import math

import numpy as np

from .. import kernels
from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot


@kernel(fastmath={"reassoc"})
def _moments(p, g, m, v, one_minus_b1, one_minus_b2, bc1, bc2, eps):
    """Update m and v; return sum(p^2) and sum(u^2) of the bias-corrected Adam step u."""
    w_sq = 0.0
    u_sq = 0.0
    for i in prange(p.shape[0]):
        m[i] += (g[i] - m[i]) * one_minus_b1
        v[i] += (g[i] * g[i] - v[i]) * one_minus_b2
        u = (m[i] / bc1) / (math.sqrt(v[i] / bc2) + eps)
        w_sq += p[i] * p[i]
        u_sq += u * u
    return w_sq, u_sq


@kernel
def _scaled_step(p, m, v, scale, bc1, bc2, eps):
    for i in prange(p.shape[0]):
        p[i] -= scale * ((m[i] / bc1) / (math.sqrt(v[i] / bc2) + eps))


@kernel
def _lamb(p, g, m, v, offsets, ratio_buf, lr, one_minus_b1, one_minus_b2, bc1, bc2, eps):
    for k in range(offsets.shape[0] - 1):
        s, e = offsets[k], offsets[k + 1]
        w_sq, u_sq = _moments(p[s:e], g[s:e], m[s:e], v[s:e], one_minus_b1, one_minus_b2, bc1, bc2, eps)
        w_norm = math.sqrt(w_sq)
        u_norm = math.sqrt(u_sq)
        ratio_buf[0] = 1.0
        if w_norm > 0 and u_norm > 0:
            ratio_buf[0] = w_norm / u_norm  # rounded to the parameters' dtype, as in Keras
        _scaled_step(p[s:e], m[s:e], v[s:e], ratio_buf[0] * lr, bc1, bc2, eps)


class Lamb(Optimizer):
    r"""LAMB: Adam's bias-corrected step rescaled per tensor by a trust ratio.

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad v \leftarrow v + (1-\beta_2)(g^2 - v) \\
        u &= \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon} \\
        p &\leftarrow p - \eta\, r\, u, \qquad r = \|p\| / \|u\| \ (1 \text{ if either norm is } 0)

    Norms are per parameter tensor. Two passes over the state per step (the
    ratio needs the norms first), so a step moves 10 arrays, not Adam's 7.
    Reference: You et al., 2019, "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", arXiv:1904.00962.
    """

    registry_name = "lamb"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the first moment")
    beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="decay of the second moment")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added to the root of the second moment")
    traffic_per_element = 10

    def slots(self):
        return {"momentum": 0.0, "velocity": Slot(0.0, nonnegative=True)}  # v: an average of g^2

    def _ratio_buffer(self, dtype):
        buf = getattr(self, "_ratio", None)
        if buf is None or buf.dtype != dtype:
            buf = self._ratio = np.empty(1, dtype)
        return buf

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        t = dt(step)
        bc1 = dt(1.0) - dt(self.beta_1) ** t
        bc2 = dt(1.0) - dt(self.beta_2) ** t
        # one parallel region per tensor pays off only for large tensors
        big = param.shape[0] >= kernels.PARALLEL_MIN_SIZE * len(seg)
        impl = _lamb.parallel if big else _lamb.serial
        impl(
            param,
            grad,
            state["momentum"],
            state["velocity"],
            seg.offsets,
            self._ratio_buffer(param.dtype),
            lr,
            dt(1.0 - self.beta_1),
            dt(1.0 - self.beta_2),
            bc1,
            bc2,
            dt(self.epsilon),
        )
