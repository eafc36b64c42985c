"""Schedule-Free AdamW (Defazio et al., 2024)."""

import math

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import LearningRate, Optimizer
from .layout import Slot


@kernel(elementwise=True)
def _sf_adamw(y, g, z, v, lr, one_minus_b2, bc2, eps, b1, one_minus_b1, w, one_minus_w):
    for i in prange(y.shape[0]):
        v[i] += (g[i] * g[i] - v[i]) * one_minus_b2
        z_old = z[i]
        z[i] -= lr * g[i] / (math.sqrt(v[i] / bc2) + eps)
        x_old = (y[i] - one_minus_b1 * z_old) / b1
        x_new = one_minus_w * x_old + w * z[i]
        y[i] = one_minus_b1 * z[i] + b1 * x_new


class ScheduleFreeAdamW(Optimizer):
    r"""Schedule-Free AdamW: iterate averaging replaces the learning-rate schedule.

    The parameters hold :math:`y`, where gradients are evaluated; the optimizer keeps
    :math:`z` (``momentum``, starting at the parameters) and :math:`v`; :math:`x` is implied.

    .. math::
        v &\leftarrow v + (1-\beta_2)(g^2 - v), \qquad
        z \leftarrow z - \eta_t\, g / (\sqrt{v/(1-\beta_2^t)} + \epsilon) \\
        x &= (y_{old} - (1-\beta_1) z_{old})/\beta_1, \qquad
        x \leftarrow (1 - \tfrac1t) x + \tfrac1t z, \qquad y \leftarrow (1-\beta_1) z + \beta_1 x

    with :math:`\eta_t = \eta \min(1, t/\text{warmup\_steps})`. Evaluate the model at :math:`x`
    for validation if you need the averaged iterate (Keras does not expose it either).
    Reference: Defazio et al., 2024, "The Road Less Scheduled", arXiv:2405.15682.
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "schedule_free_adamw"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    learning_rate = LearningRate(0.0025)
    beta_1 = Hyper(0.9, low=0.0, high=1.0, low_open=True, high_open=True, doc="interpolation between z and x")
    beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="decay of the second moment")
    epsilon = Hyper(1e-8, low=0.0, low_open=True, doc="added to the root of the second moment")
    warmup_steps = Hyper(0, kind=int, low=0, doc="linear learning-rate warmup steps")

    def slots(self):
        return {"momentum": "param", "velocity": Slot(0.0, nonnegative=True)}  # v: an average of g^2

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        t = dt(step)
        if self.warmup_steps > 0:
            lr = lr * min(t / dt(self.warmup_steps), dt(1.0))
        b1 = dt(self.beta_1)
        w = dt(1.0) / t
        _sf_adamw(
            param,
            grad,
            state["momentum"],
            state["velocity"],
            dt(lr),
            dt(1.0 - self.beta_2),
            dt(1.0) - dt(self.beta_2) ** t,
            dt(self.epsilon),
            b1,
            dt(1.0) - b1,
            w,
            dt(1.0) - w,
        )
