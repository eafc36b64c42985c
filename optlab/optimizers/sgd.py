"""SGD with optional (Nesterov) momentum."""

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..spaces import LogUniform, tuned
from .base import LearningRate, Optimizer


@kernel(elementwise=True)
def _sgd(p, g, lr):
    for i in prange(p.shape[0]):
        p[i] -= g[i] * lr


@kernel(elementwise=True)
def _sgd_momentum(p, g, m, lr, momentum):
    for i in prange(p.shape[0]):
        m[i] = m[i] * momentum - g[i] * lr
        p[i] += m[i]


@kernel(elementwise=True)
def _sgd_nesterov(p, g, m, lr, momentum):
    for i in prange(p.shape[0]):
        m[i] = m[i] * momentum - g[i] * lr
        p[i] += m[i] * momentum - g[i] * lr


class SGD(Optimizer):
    r"""Gradient descent with optional momentum (Keras's ``SGD``).

    Without momentum: :math:`p \leftarrow p - \eta g`. With momentum :math:`\mu`:
    :math:`m \leftarrow \mu m - \eta g`, then :math:`p \leftarrow p + m`, or with
    ``nesterov=True`` :math:`p \leftarrow p + \mu m - \eta g`.
    Reference: Sutskever et al., 2013, "On the importance of initialization and momentum in deep learning".
    """

    elementwise_update = True  # (update hands grad to element-wise kernels alone)
    registry_name = "sgd"
    search_space = tuned(learning_rate=LogUniform(1e-3, 10.0))  # what a study tunes (optlab.spaces)
    learning_rate = LearningRate(0.01)
    momentum = Hyper(0.0, low=0.0, high=1.0, doc="momentum factor")
    nesterov = Hyper(False, kind=bool, doc="use Nesterov momentum")

    def slots(self):
        return {"momentum": 0.0} if self.momentum != 0 else {}

    def updates_rows_alone(self):
        return self.momentum == 0  # p -= lr * g: a zero row stays as it is

    def update(self, param, grad, state, lr, step, seg):
        if "momentum" not in state:
            _sgd.variant(param, grad)(param, grad, lr)
            return
        mu = param.dtype.type(self.momentum)
        (_sgd_nesterov if self.nesterov else _sgd_momentum)(param, grad, state["momentum"], lr, mu)
