"""Adadelta (Zeiler, 2012)."""

import math

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot


@kernel(elementwise=True)
def _adadelta(p, g, ag, adv, lr, rho, one_minus_rho, eps):
    for i in prange(p.shape[0]):
        ag[i] = rho * ag[i] + one_minus_rho * (g[i] * g[i])
        delta = -(math.sqrt(adv[i] + eps) * g[i]) / math.sqrt(ag[i] + eps)
        adv[i] = rho * adv[i] + one_minus_rho * (delta * delta)
        p[i] += lr * delta


class Adadelta(Optimizer):
    r"""Adadelta: steps scaled by the ratio of running RMS of updates and of gradients.

    .. math::
        G &\leftarrow \rho G + (1-\rho) g^2 \\
        \Delta &= -\frac{\sqrt{D + \epsilon}}{\sqrt{G + \epsilon}}\, g \\
        D &\leftarrow \rho D + (1-\rho) \Delta^2 \\
        p &\leftarrow p + \eta \Delta

    Keras keeps a learning rate (default 0.001); the paper's method is ``learning_rate=1.0``.
    Reference: Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701.
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "adadelta"
    search_space = tuned(learning_rate=LogUniform(1e-2, 100.0))  # what a study tunes (optlab.spaces)
    rho = Hyper(0.95, low=0.0, high=1.0, high_open=True, doc="decay of the running averages")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added inside the square roots")

    def slots(self):
        # averages of g^2 and of the squared updates
        return {"accumulated_grad": Slot(0.0, nonnegative=True), "accumulated_delta_var": Slot(0.0, nonnegative=True)}

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        rho = dt(self.rho)
        _adadelta(
            param,
            grad,
            state["accumulated_grad"],
            state["accumulated_delta_var"],
            lr,
            rho,
            dt(1.0 - self.rho),
            dt(self.epsilon),
        )
