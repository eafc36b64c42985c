"""Adam (Kingma and Ba, 2014), with the AMSGrad variant."""

import math

import numpy as np

from ..hparams import DERIVED, Hyper
from ..kernels import kernel, prange, typed
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot

#: compile-time switches of ``_adam``, fixed per variant (``Kernel.specialize``)
AMSGRAD = DECAY = False


@kernel(parallel=False)
def adam_alpha(p, lr, b1, b2, step):
    """Adam's step size at ``step``: ``lr * sqrt(1 - b2^t) / (1 - b1^t)`` in the dtype of ``p`` (``lr``,
    ``b1`` and ``b2`` already in it; ``t``, the step, converted to it first, as Keras does)."""
    t = p.dtype.type(step)
    one = p.dtype.type(1)
    return lr * np.sqrt(one - b2**t) / (one - b1**t)


@kernel(elementwise=True)
def _adam(p, g, m, v, vhat, lr, b1, b2, one_minus_b1, one_minus_b2, eps, step, c):
    """One Adam step; ``AMSGRAD``: the step uses and updates ``vhat``; ``DECAY``: ``p`` decays by ``c`` first."""
    alpha = adam_alpha(p, lr, b1, b2, step)
    for i in prange(p.shape[0]):
        m[i] += (g[i] - m[i]) * one_minus_b1
        v[i] += (g[i] * g[i] - v[i]) * one_minus_b2
        if AMSGRAD:
            vhat[i] = max(vhat[i], v[i])
            delta = m[i] * alpha / (math.sqrt(vhat[i]) + eps)
        else:
            delta = m[i] * alpha / (math.sqrt(v[i]) + eps)
        if DECAY:
            p[i] = (p[i] - p[i] * c) - delta  # the decoupled weight decay, in the same pass
        else:
            p[i] -= delta


_ADAM = {(a, d): _adam.specialize(AMSGRAD=a, DECAY=d) for a in (False, True) for d in (False, True)}


def adam_betas(dt, beta_1, beta_2):
    """``beta_1, beta_2, 1 - beta_1, 1 - beta_2`` in ``dt``, the differences taken in Python floats, as
    Keras does (``Adam`` keeps them, with epsilon, until a hyperparameter is set). The per-step
    scalar, the step size, is made in the kernel (:func:`adam_alpha`)."""
    return dt(beta_1), dt(beta_2), dt(1.0 - beta_1), dt(1.0 - beta_2)


class Adam(Optimizer):
    r"""Adam: steps from bias-corrected first and second moment estimates.

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad v \leftarrow v + (1-\beta_2)(g^2 - v) \\
        \alpha_t &= \eta \sqrt{1-\beta_2^t} / (1-\beta_1^t) \\
        p &\leftarrow p - \alpha_t\, m / (\sqrt{v} + \epsilon)

    With ``amsgrad=True``, :math:`\hat v \leftarrow \max(\hat v, v)` replaces :math:`v` in the step.
    Epsilon is added to :math:`\sqrt{v}` *before* bias correction is folded into
    :math:`\alpha_t` (Kingma and Ba's "epsilon hat"), so it acts as
    :math:`\epsilon / \sqrt{1-\beta_2^t}` relative to the paper's form.
    References: Kingma and Ba, 2014, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980;
    Reddi, Kale and Kumar, 2018, "On the Convergence of Adam and Beyond" (AMSGrad).
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "adam"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the first moment")
    beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="decay of the second moment")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added to the root of the second moment")
    amsgrad = Hyper(False, kind=bool, doc="use the running maximum of the second moment (AMSGrad)")

    def slots(self):
        slots = {"momentum": 0.0, "velocity": Slot(0.0, nonnegative=True)}  # v: an average of g^2
        if self.amsgrad:
            slots["velocity_hat"] = Slot(0.0, nonnegative=True)  # max of v
        return slots

    def update(self, param, grad, state, lr, step, seg, decay=None):
        dt = param.dtype.type
        derived = self.__dict__.get(DERIVED) or self._derive()  # (made again when a hyperparameter is set)
        constants = derived.get(dt)
        if constants is None:
            hypers = self.__dict__  # (each Hyper's value, without its descriptor)
            betas = adam_betas(dt, hypers["beta_1"], hypers["beta_2"])
            constants = derived[dt] = (*betas, typed(dt, hypers["epsilon"]))
        lr = lr if type(lr) is dt else dt(lr)  # (a Python float would make the kernel's arithmetic float64)
        v, vhat = state["velocity"], state.get("velocity_hat")
        kernel = _ADAM[vhat is not None, decay is not None].variant(param, grad)
        vhat = v if vhat is None else vhat  # read only by the AMSGrad variants
        c = 0.0 if decay is None else decay  # read only by the variants with DECAY
        kernel(param, grad, state["momentum"], v, vhat, lr, *constants, step, c)
