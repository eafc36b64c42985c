"""AdamW (Loshchilov and Hutter, 2017): Adam with decoupled weight decay."""

from ..hparams import Hyper
from ..spaces import LogUniform, tuned
from .adam import Adam


class AdamW(Adam):
    r"""Adam with decoupled weight decay (default ``weight_decay=0.004``).

    Before each Adam step: :math:`p \leftarrow p - \eta \lambda p`. The decay is
    multiplied by the learning rate (Keras's convention), not by a separate schedule multiplier.
    Reference: Loshchilov and Hutter, 2017, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    """

    registry_name = "adamw"
    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))  # what a study tunes (optlab.spaces)
    weight_decay = Hyper(0.004, low=0.0, doc="decoupled weight decay rate")
