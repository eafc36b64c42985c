"""Lion (Chen et al., 2023): sign-based momentum."""

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import Optimizer

#: compile-time switch of ``_lion``, fixed per variant (``Kernel.specialize``)
DECAY = False


@kernel(elementwise=True)
def _lion(p, g, m, lr, b1, one_minus_b1, b2, one_minus_b2, one, zero, c):
    """One Lion step; ``DECAY``: ``p`` decays by ``c`` first, in the same pass."""
    for i in prange(p.shape[0]):
        u = m[i] * b1 + g[i] * one_minus_b1
        # sign(u) as selects (NaN stays NaN), so the loop vectorises
        s = one if u > 0 else zero
        s = -one if u < 0 else s
        s = u if u != u else s
        if DECAY:
            p[i] = (p[i] - p[i] * c) - lr * s
        else:
            p[i] -= lr * s
        m[i] = m[i] * b2 + g[i] * one_minus_b2


_LION = {d: _lion.specialize(DECAY=d) for d in (False, True)}


class Lion(Optimizer):
    r"""Lion: the sign of an interpolated momentum is the step.

    .. math::
        p \leftarrow p - \eta\,\operatorname{sign}(\beta_1 m + (1-\beta_1) g), \qquad
        m \leftarrow \beta_2 m + (1-\beta_2) g

    Use a learning rate 3-10x smaller than for Adam.
    Reference: Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "lion"
    search_space = tuned(learning_rate=LogUniform(1e-5, 0.1))  # what a study tunes (optlab.spaces)
    beta_1 = Hyper(0.9, low=0.0, high=1.0, low_open=True, doc="interpolation for the step's sign (0 gives SignSGD)")
    beta_2 = Hyper(0.99, low=0.0, high=1.0, high_open=True, doc="decay of the momentum")

    def slots(self):
        return {"momentum": 0.0}

    def update(self, param, grad, state, lr, step, seg, decay=None):
        dt = param.dtype.type
        b1, b2 = dt(self.beta_1), dt(self.beta_2)
        c = 0.0 if decay is None else decay  # read only by the variant with DECAY
        _LION[decay is not None](
            param, grad, state["momentum"], lr, b1, dt(1.0) - b1, b2, dt(1.0) - b2, dt(1.0), dt(0.0), c
        )
