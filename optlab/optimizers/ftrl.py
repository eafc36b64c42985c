"""FTRL-Proximal (McMahan et al., 2013)."""

import math

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot


@kernel(elementwise=True)
def _ftrl(p, g, acc, lin, lr, neg_power, two_l2s, two_l2_reg, l1, sqrt_power):
    for i in prange(p.shape[0]):
        gi = g[i]
        new_acc = acc[i] + gi * gi
        if sqrt_power:
            pow_new = math.sqrt(new_acc)
            pow_old = math.sqrt(acc[i])
        else:
            pow_new = new_acc**neg_power
            pow_old = acc[i] ** neg_power
        lin[i] += (gi + two_l2s * p[i]) - (pow_new - pow_old) / lr * p[i]
        quadratic = pow_new / lr + two_l2_reg
        clipped = min(max(lin[i], -l1), l1)
        p[i] = (clipped - lin[i]) / quadratic
        acc[i] = new_acc


class Ftrl(Optimizer):
    r"""FTRL-Proximal with L1, L2 and L2-shrinkage regularization.

    With :math:`c = -` ``learning_rate_power`` (0.5 by default), :math:`\lambda_1, \lambda_2`
    the L1/L2 strengths, :math:`\lambda_s` the shrinkage strength:

    .. math::
        n' &= n + g^2 \\
        z &\leftarrow z + (g + 2\lambda_s p) - \frac{n'^{c} - n^{c}}{\eta} p \\
        p &\leftarrow \frac{\operatorname{clip}(z, -\lambda_1, \lambda_1) - z}
                           {n'^{c}/\eta + 2(\lambda_2 + \beta / (2\eta))}, \qquad n \leftarrow n'

    Reference: McMahan et al., 2013, "Ad Click Prediction: a View from the Trenches", KDD.
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "ftrl"
    search_space = tuned(learning_rate=LogUniform(1e-3, 10.0))  # what a study tunes (optlab.spaces)
    learning_rate_power = Hyper(-0.5, high=0.0, doc="power of the step-size decay (<= 0)")
    initial_accumulator_value = Hyper(0.1, low=0.0, doc="starting value of the accumulator")
    l1_regularization_strength = Hyper(0.0, low=0.0, doc="L1 regularization strength")
    l2_regularization_strength = Hyper(0.0, low=0.0, doc="L2 regularization strength")
    l2_shrinkage_regularization_strength = Hyper(0.0, low=0.0, doc="L2 shrinkage (magnitude penalty) strength")
    beta = Hyper(0.0, low=0.0, doc="the beta of the per-coordinate rate (added as beta / (2 lr) to L2)")

    def slots(self):
        # n (a sum of g^2, under a root or a power); z is signed
        return {"accumulator": Slot(self.initial_accumulator_value, nonnegative=True), "linear": 0.0}

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        l2_reg = dt(self.l2_regularization_strength) + dt(self.beta) / (dt(2.0) * lr)
        _ftrl(
            param,
            grad,
            state["accumulator"],
            state["linear"],
            lr,
            dt(-self.learning_rate_power),
            dt(2 * self.l2_shrinkage_regularization_strength),
            dt(2) * l2_reg,
            dt(self.l1_regularization_strength),
            self.learning_rate_power == -0.5,
        )
