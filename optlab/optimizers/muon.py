"""Muon (Jordan et al., 2024): orthogonalized momentum for matrices, AdamW for the rest."""

import math

import numpy as np

from ..hparams import Hyper
from ..kernels import kernel, prange
from ..names import name_pattern
from .adam import _ADAM, adam_scalars
from .base import Optimizer
from .layout import Slot


@kernel
def _muon_momentum(m, g, look, mu, mu_minus_one, nesterov):
    """m <- mu m + g (Keras's m += g + (mu - 1) m); look <- g + mu m (Nesterov) or m."""
    for i in prange(m.shape[0]):
        m[i] += g[i] + m[i] * mu_minus_one
        if nesterov:
            look[i] = g[i] + mu * m[i]
        else:
            look[i] = m[i]


def newton_schulz5(x: np.ndarray, steps: int, a: float, b: float, c: float) -> np.ndarray:
    """Approximate the orthogonal factor U V^T of ``x = U S V^T`` by a quintic Newton-Schulz iteration."""
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    x = x / (np.linalg.norm(x) + x.dtype.type(1e-7))
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    return x.T if transpose else x


class Muon(Optimizer):
    r"""Muon: momentum orthogonalized by Newton-Schulz for 2-D parameters; AdamW for all others.

    For a 2-D parameter of shape :math:`(r, c)`:

    .. math::
        m &\leftarrow \mu m + g, \qquad o = g + \mu m \ (\text{Nesterov}) \text{ or } m \\
        p &\leftarrow p - \eta\, \operatorname{NS}_5(o)\, \sqrt{\max(r, c)}\ \text{rms\_rate}

    where :math:`\operatorname{NS}_5` runs ``ns_steps`` iterations of
    :math:`X \leftarrow aX + (bA + cA^2)X`, :math:`A = XX^T`, from :math:`X = o/(\|o\|_F + 10^{-7})`.
    Parameters of any other rank take an Adam step with ``adam_beta_1``, ``adam_beta_2``,
    ``epsilon`` and learning rate ``learning_rate * adam_lr_ratio``, and decay with
    ``adam_weight_decay`` instead of ``weight_decay``.

    As in Keras, named 2-D parameters take the AdamW step too where their name contains
    ``embedding`` (any case; with ``exclude_embeddings``) or a match of one of the regular
    expressions ``exclude_layers`` (``re.search``). Parameters are named by passing them as a
    dict ``{name: array}`` (see ``Optimizer.build``); unnamed ones are routed by rank alone, and
    ``exclude_layers`` then needs names.
    Reference: Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"
    (kellerjordan.github.io/posts/muon); Liu et al., 2025, "Muon is Scalable for LLM Training" (rms_rate).
    """

    registry_name = "muon"
    adam_beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="Adam first-moment decay (non-2-D)")
    adam_beta_2 = Hyper(0.999, low=0.0, high=1.0, high_open=True, doc="Adam second-moment decay (non-2-D)")
    adam_weight_decay = Hyper(0.004, low=0.0, doc="weight decay of non-2-D parameters")
    epsilon = Hyper(1e-7, low=0.0, low_open=True, doc="Adam epsilon (non-2-D)")
    weight_decay = Hyper(0.004, low=0.0, doc="weight decay of 2-D parameters")
    muon_a = Hyper(3.4445, doc="Newton-Schulz coefficient a")
    muon_b = Hyper(-4.775, doc="Newton-Schulz coefficient b")
    muon_c = Hyper(2.0315, doc="Newton-Schulz coefficient c")
    adam_lr_ratio = Hyper(1.0, low=0.0, doc="learning-rate multiplier of the Adam parameters")
    momentum = Hyper(0.95, low=0.0, high=1.0, high_open=True, doc="momentum of the 2-D parameters")
    ns_steps = Hyper(5, kind=int, low=0, doc="Newton-Schulz iterations")
    nesterov = Hyper(True, kind=bool, doc="use the Nesterov look-ahead")
    rms_rate = Hyper(0.2, low=0.0, low_open=True, optional=True, doc="match AdamW's update RMS (None: no scaling)")
    exclude_embeddings = Hyper(True, kind=bool, doc="2-D parameters named like an embedding take the AdamW step")
    exclude_layers = Hyper(
        None, kind=list, item=Hyper(kind=str), doc="regular expressions: named parameters matching one take AdamW"
    )

    def check(self):
        name_pattern(self.exclude_layers, "Muon: `exclude_layers`")  # each a regular expression

    def uses_adam(self, shape: tuple, name: str | None) -> bool:
        """Keras's rule (``_should_use_adamw``): AdamW for every parameter but the 2-D ones, and
        for 2-D ones named like an embedding or matching ``exclude_layers``."""
        if len(shape) != 2:
            return True
        if name is None:
            return False
        if self.exclude_embeddings and "embedding" in name.lower():
            return True
        pattern = name_pattern(self.exclude_layers, "Muon: `exclude_layers`")
        return pattern is not None and pattern.search(name) is not None

    def _adam_size(self, shape, name):
        return math.prod(shape) if self.uses_adam(shape, name) else 0

    def slots(self):
        return {"momentum": 0.0, "velocity": Slot(0.0, self._adam_size, nonnegative=True)}  # Adam's v

    def weight_decay_rate(self, shape, name=None):
        return self.adam_weight_decay if self.uses_adam(shape, name) else self.weight_decay

    def _new_plan(self, layout, params, names=None):
        if self.exclude_layers and layout.names is None and names is None:
            raise ValueError(
                f"Muon: exclude_layers={self.exclude_layers!r} selects parameters by name, and these are "
                "unnamed: pass them as a dict {name: array} to build() or apply()"
            )
        return super()._new_plan(layout, params, names)

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        adam = None
        mu = dt(self.momentum)
        for p, g, m, v, shape, name in zip(
            seg.views(param),
            seg.views(grad),
            seg.views(state["momentum"]),
            seg.views(state["velocity"], "velocity"),
            seg.shapes,
            seg.names,
        ):
            if self.uses_adam(shape, name):
                if adam is None:
                    adam = adam_scalars(dt, lr * dt(self.adam_lr_ratio), self.adam_beta_1, self.adam_beta_2, step)
                _ADAM[False, False](p.reshape(-1), g.reshape(-1), m.reshape(-1), v, v, *adam, dt(self.epsilon), 0.0)
                continue
            look = np.empty_like(p)
            _muon_momentum(m.reshape(-1), g.reshape(-1), look.reshape(-1), mu, dt(self.momentum - 1), self.nesterov)
            direction = newton_schulz5(look, self.ns_steps, self.muon_a, self.muon_b, self.muon_c)
            direction *= lr
            if self.rms_rate is not None:
                direction *= dt(math.sqrt(max(shape)))
                direction *= dt(self.rms_rate)
            p -= direction
