"""RMSprop (Tieleman and Hinton, 2012), optionally centered and with momentum."""

import math

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot


@kernel(elementwise=True)
def _rmsprop(p, g, v, lr, rho, one_minus_rho, eps):
    for i in prange(p.shape[0]):
        v[i] = rho * v[i] + one_minus_rho * (g[i] * g[i])
        p[i] -= lr * g[i] / math.sqrt(v[i] + eps)


@kernel(elementwise=True)
def _rmsprop_general(p, g, v, a, mo, lr, rho, one_minus_rho, eps, momentum, centered, use_momentum):
    for i in prange(p.shape[0]):
        v[i] = rho * v[i] + one_minus_rho * (g[i] * g[i])
        if centered:
            a[i] = rho * a[i] + one_minus_rho * g[i]
            denom = v[i] - a[i] * a[i] + eps
        else:
            denom = v[i] + eps
        inc = lr * g[i] / math.sqrt(denom)
        if use_momentum:
            mo[i] = momentum * mo[i] + inc
            p[i] -= mo[i]
        else:
            p[i] -= inc


class RMSprop(Optimizer):
    r"""RMSprop: divide the step by a running root-mean-square of the gradient.

    .. math::
        v &\leftarrow \rho v + (1-\rho) g^2 \\
        \bar g &\leftarrow \rho \bar g + (1-\rho) g \quad\text{(centered only)} \\
        \Delta &= \eta\, g / \sqrt{v - \bar g^2 + \epsilon} \quad(\bar g = 0 \text{ unless centered}) \\
        p &\leftarrow p - \Delta \quad\text{or, with momentum } \mu:\ m \leftarrow \mu m + \Delta,\ p \leftarrow p - m

    Note that epsilon sits inside the square root (as in Keras).
    Reference: Tieleman and Hinton, 2012, Lecture 6.5 of "Neural Networks for Machine Learning";
    centered: Graves, 2013, "Generating sequences with recurrent neural networks".
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "rmsprop"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    rho = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the squared-gradient average")
    momentum = Hyper(0.0, low=0.0, high=1.0, high_open=True, doc="momentum factor")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added to the mean square inside the root")
    centered = Hyper(False, kind=bool, doc="subtract the squared mean gradient (variance estimate)")

    def slots(self):
        slots = {"velocity": Slot(0.0, nonnegative=True)}  # an average of g^2 (the others are signed)
        if self.momentum > 0:
            slots["momentum"] = 0.0
        if self.centered:
            slots["average_gradient"] = 0.0
        return slots

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        rho, eps = dt(self.rho), dt(self.epsilon)
        v = state["velocity"]
        if len(state) == 1:
            _rmsprop(param, grad, v, lr, rho, dt(1.0 - self.rho), eps)
            return
        a = state.get("average_gradient", v)
        mo = state.get("momentum", v)
        _rmsprop_general(
            param,
            grad,
            v,
            a,
            mo,
            lr,
            rho,
            dt(1.0 - self.rho),
            eps,
            dt(self.momentum),
            self.centered,
            "momentum" in state,
        )
