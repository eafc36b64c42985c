"""AdaBelief (Zhuang et al., 2020) as an optlab plugin, written against optlab's public API only."""

from __future__ import annotations

import math

import optlab
from optlab.hparams import Hyper
from optlab.kernels import kernel, prange
from optlab.optimizers import Optimizer, Slot
from optlab.spaces import LogUniform, tuned

__version__ = "0.1.0"


@kernel
def _adabelief(p, g, m, s, lr_t, one_minus_b1, one_minus_b2, inv_bc2, eps):
    for i in prange(p.shape[0]):
        m[i] += (g[i] - m[i]) * one_minus_b1
        d = g[i] - m[i]
        s[i] += (d * d - s[i]) * one_minus_b2 + eps
        p[i] -= lr_t * m[i] / (math.sqrt(s[i] * inv_bc2) + eps)


@kernel
def _adabelief_amsgrad(p, g, m, s, s_max, lr_t, one_minus_b1, one_minus_b2, inv_bc2, eps):
    for i in prange(p.shape[0]):
        m[i] += (g[i] - m[i]) * one_minus_b1
        d = g[i] - m[i]
        s[i] += (d * d - s[i]) * one_minus_b2 + eps
        s_max[i] = max(s_max[i], s[i])
        p[i] -= lr_t * m[i] / (math.sqrt(s_max[i] * inv_bc2) + eps)


class AdaBelief(Optimizer):
    r"""AdaBelief: Adam with the second moment of the gradient's *surprise* g - m.

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g \\
        s &\leftarrow \beta_2 s + (1-\beta_2)(g - m)^2 + \epsilon \\
        p &\leftarrow p - \eta\, \frac{m / (1-\beta_1^t)}{\sqrt{s / (1-\beta_2^t)} + \epsilon}

    Where gradients agree with their running mean, ``s`` is small and the step large; where
    they scatter, the step shrinks. ``amsgrad=True`` uses the running maximum of ``s``.
    Decoupled weight decay (the paper's ``weight_decouple``) is optlab's generic ``weight_decay``.
    Reference: Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", NeurIPS, arXiv:2010.07468.
    """

    registry_name = "adabelief"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the first moment")
    beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="decay of the belief (second central moment)")
    epsilon = Hyper(1e-16, low=0.0, low_open=True, doc="added to s each step and to its root")
    amsgrad = Hyper(False, kind=bool, doc="use the running maximum of s")

    def slots(self):
        slots = {"momentum": 0.0, "belief": Slot(0.0, nonnegative=True)}  # s: an average of (g - m)^2, plus eps
        if self.amsgrad:
            slots["belief_max"] = Slot(0.0, nonnegative=True)  # the running maximum of s
        return slots

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        bc1 = 1.0 - self.beta_1**step
        bc2 = 1.0 - self.beta_2**step
        scalars = (
            dt(float(lr) / bc1),
            dt(1.0 - self.beta_1),
            dt(1.0 - self.beta_2),
            dt(1.0 / bc2),
            dt(self.epsilon),
        )
        if self.amsgrad:
            _adabelief_amsgrad(param, grad, state["momentum"], state["belief"], state["belief_max"], *scalars)
        else:
            _adabelief(param, grad, state["momentum"], state["belief"], *scalars)


@optlab.hookimpl
def register_optimizers(register):
    register(AdaBelief)
