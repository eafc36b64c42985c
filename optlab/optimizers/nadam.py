"""Nadam (Dozat, 2016): Adam with Nesterov momentum."""

import math

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer
from .layout import Slot


@kernel(elementwise=True)
def _nadam(p, g, m, v, lr, one_minus_b1, one_minus_b2, c_m, c_g, v_scale, eps):
    for i in prange(p.shape[0]):
        m[i] += (g[i] - m[i]) * one_minus_b1
        v[i] += (g[i] * g[i] - v[i]) * one_minus_b2
        m_hat = c_m * m[i] + c_g * g[i]
        p[i] -= m_hat * lr / (math.sqrt(v[i] / v_scale) + eps)


class Nadam(Optimizer):
    r"""Nadam: Adam whose first moment uses a Nesterov look-ahead, with a momentum schedule.

    With :math:`\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t})` and :math:`\Pi_t = \prod_{i\le t} \mu_i`:

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad v \leftarrow v + (1-\beta_2)(g^2 - v) \\
        \hat m &= \frac{\mu_{t+1} m}{1 - \Pi_t \mu_{t+1}} + \frac{(1-\mu_t) g}{1 - \Pi_t},
        \qquad \hat v = \frac{v}{1-\beta_2^t} \\
        p &\leftarrow p - \eta\, \hat m / (\sqrt{\hat v} + \epsilon)

    :math:`\Pi_t` is a scalar slot (``u_product``), advanced once per applied step.
    Reference: Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "nadam"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the first moment")
    beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="decay of the second moment")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added to the root of the second moment")

    def slots(self):
        return {"momentum": 0.0, "velocity": Slot(0.0, nonnegative=True)}  # v: an average of g^2

    def scalar_slots(self):
        return {"u_product": 1.0}

    def begin_step(self, step, dtype):
        # The step scalars are computed in float64 and rounded once when handed to the kernel:
        # 1 - beta_2**t and 1 - u_product lose relative precision by cancellation, and doing
        # them in float32 costs ~1e-5 relative error in the first steps' update.
        self.scalars["u_product"] *= self._momentum_schedule(step)

    def _momentum_schedule(self, step):
        return self.beta_1 * (1.0 - 0.5 * 0.96**step)

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        u_t = self._momentum_schedule(step)
        u_t1 = self._momentum_schedule(step + 1)
        u_product_t = self.scalars["u_product"]
        c_m = dt(u_t1 / (1.0 - u_product_t * u_t1))
        c_g = dt((1.0 - u_t) / (1.0 - u_product_t))
        v_scale = dt(1.0 - self.beta_2**step)
        _nadam(
            param,
            grad,
            state["momentum"],
            state["velocity"],
            lr,
            dt(1.0 - self.beta_1),
            dt(1.0 - self.beta_2),
            c_m,
            c_g,
            v_scale,
            dt(self.epsilon),
        )
