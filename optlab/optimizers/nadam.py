"""Nadam (Dozat, 2016): Adam with Nesterov momentum."""

import math

from ..hparams import Hyper
from ..kernels import kernel, prange
from .base import Optimizer


@kernel
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

    :math:`\Pi_t` is optimizer state (``u_product``), advanced once per applied step.
    Reference: Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    """

    registry_name = "nadam"
    beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the first moment")
    beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="decay of the second moment")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="added to the root of the second moment")

    def slots(self):
        return {"momentum": 0.0, "velocity": 0.0}

    def begin_step(self, step, dtype):
        dt = dtype.type
        u_product = self._scalars.get("u_product", dt(1.0))
        self._scalars["u_product"] = dt(u_product * dt(self.beta_1) * (dt(1.0) - dt(0.5) * dt(0.96) ** dt(step)))

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        b1 = dt(self.beta_1)
        u_t = b1 * (dt(1.0) - dt(0.5) * dt(0.96) ** dt(step))
        u_t1 = b1 * (dt(1.0) - dt(0.5) * dt(0.96) ** dt(step + 1))
        u_product_t = self._scalars["u_product"]
        u_product_t1 = u_product_t * u_t1
        c_m = dt(u_t1 / (dt(1) - u_product_t1))
        c_g = dt((dt(1) - u_t) / (dt(1) - u_product_t))
        v_scale = dt(1) - dt(self.beta_2) ** dt(step)
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
