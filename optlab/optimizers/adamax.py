"""Adamax (Kingma and Ba, 2014, section 7.1)."""

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot


@kernel(elementwise=True)
def _adamax(p, g, m, u, lr, one_minus_b1, b2, bias, eps):
    for i in prange(p.shape[0]):
        m[i] += (g[i] - m[i]) * one_minus_b1
        u[i] = max(b2 * u[i], abs(g[i]))
        p[i] -= lr * m[i] / (bias * (u[i] + eps))


class Adamax(Optimizer):
    r"""Adamax: Adam with the infinity norm in place of the second moment.

    .. math::
        m \leftarrow m + (1-\beta_1)(g - m), \quad u \leftarrow \max(\beta_2 u, |g|), \quad
        p \leftarrow p - \frac{\eta\, m}{(1-\beta_1^t)(u + \epsilon)}

    Reference: Kingma and Ba, 2014, "Adam: A Method for Stochastic Optimization", section 7.1.
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "adamax"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the first moment")
    beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="decay of the infinity norm")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added to the norm")

    def slots(self):
        return {"momentum": 0.0, "norm": Slot(0.0, nonnegative=True)}  # u: a maximum of |g|

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        bias = dt(1) - dt(self.beta_1) ** dt(step)
        _adamax(
            param,
            grad,
            state["momentum"],
            state["norm"],
            lr,
            dt(1.0 - self.beta_1),
            dt(self.beta_2),
            bias,
            dt(self.epsilon),
        )
