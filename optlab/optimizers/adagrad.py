"""Adagrad (Duchi, Hazan and Singer, 2011)."""

import math

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot


@kernel(elementwise=True)
def _adagrad(p, g, acc, lr, eps):
    for i in prange(p.shape[0]):
        acc[i] += g[i] * g[i]
        p[i] -= lr * g[i] / math.sqrt(acc[i] + eps)


class Adagrad(Optimizer):
    r"""Adagrad: per-coordinate steps shrinking with the sum of squared gradients.

    .. math::
        a \leftarrow a + g^2, \qquad p \leftarrow p - \eta\, g / \sqrt{a + \epsilon}

    with :math:`a` starting at ``initial_accumulator_value``; epsilon is inside the root.
    Reference: Duchi, Hazan and Singer, 2011, "Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization", JMLR 12.
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "adagrad"
    search_space = tuned(learning_rate=LogUniform(1e-3, 10.0))  # what a study tunes (optlab.spaces)
    initial_accumulator_value = Hyper(0.1, low=0.0, doc="starting value of the accumulator")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added inside the square root")

    def slots(self):
        return {"accumulator": Slot(self.initial_accumulator_value, nonnegative=True)}  # a sum of g^2

    def updates_rows_alone(self):
        return True  # a zero row adds nothing to its accumulator and does not move

    def update(self, param, grad, state, lr, step, seg):
        _adagrad(param, grad, state["accumulator"], lr, param.dtype.type(self.epsilon))
