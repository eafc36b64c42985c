"""The problem protocol: something to optimize, with analytic gradients.

A problem owns its data and its parameters' layout. The trainer asks it for:

- ``init(seed, dtype)``: the initial parameters, as views of one flat buffer
  (``optlab.FlatArrays``), so the optimizer updates them all in one kernel call;
- ``batches(rng, batch_size)``: the batches of one epoch (index arrays, shuffled with ``rng``;
  full-batch problems yield ``None`` once), ``steps_per_epoch(batch_size)`` of them;
- ``loss_and_grad(params, grads, batch, rng)``: the loss on a batch, with the gradient written
  into ``grads`` (same layout as ``params``); ``rng`` is for problems with gradient noise;
- ``evaluate(params)``: metrics after an epoch (``val_loss``, ``val_accuracy``,
  ``distance_to_optimum``, ...), a dict of floats;
- ``metric_directions`` (class attribute): which way each of its metrics improves, for the
  callbacks' ``mode="auto"`` and the reports (Keras asks the metric's ``_direction``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from ..flat import FlatArrays, flat_parameters
from ..hparams import Configurable


class Problem(Configurable):
    """Base class of the problems; subclasses declare ``Hyper`` arguments and implement the protocol."""

    #: the 2-D test functions set this: the trainer records the parameters after every step
    record_path: bool = False
    #: which way each metric improves, ``{"accuracy": "max", "excess": "min"}`` (a ``val_`` prefix
    #: is matched without it): read by ``EarlyStopping``/``ReduceLROnPlateau``/``ModelCheckpoint`` in
    #: ``mode="auto"`` and by the reports; metrics not listed fall back to Keras's metric names
    metric_directions: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        directions = cls.__dict__.get("metric_directions")
        if directions is None:
            return
        if not isinstance(directions, dict):
            raise TypeError(
                f"{cls.__name__}.metric_directions must be a dict of metric name -> 'min' or 'max'; "
                f"received {directions!r}"
            )
        for key, way in directions.items():
            if not isinstance(key, str) or way not in ("min", "max"):
                raise ValueError(
                    f"{cls.__name__}.metric_directions[{key!r}] must be 'min' or 'max' (keyed by a metric "
                    f"name); received {way!r}"
                )

    # -- the protocol -------------------------------------------------------------------------
    def shapes(self) -> list[tuple[int, ...]]:
        """The parameters' shapes."""
        raise NotImplementedError

    def parameter_names(self) -> list[str] | None:
        """Each parameter's name, Keras-style (``dense/kernel``), or None: the trainer hands the
        optimizer named parameters, for its name rules (``exclude_from_weight_decay(var_names=)``,
        Muon's ``exclude_layers``, ``OptimizerMap`` patterns)."""
        return None

    def initial_values(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The initial parameters (float64); ``rng`` is seeded by the trainer."""
        raise NotImplementedError

    def init(self, seed: int = 0, dtype=np.float32) -> FlatArrays:
        """Seeded initial parameters as views of one flat buffer of ``dtype``."""
        params = flat_parameters(self.shapes(), dtype)
        for view, value in zip(params, self.initial_values(np.random.default_rng(seed))):
            view[...] = value
        return params

    @property
    def num_examples(self) -> int | None:
        """Training examples per epoch, or None for a full-batch problem (one step per epoch)."""
        return None

    def steps_per_epoch(self, batch_size: int | None = None) -> int:
        """Batches in one epoch: ``ceil(num_examples / batch_size)``, or 1 (full batch, or no data)."""
        n = self.num_examples
        if n is None or batch_size is None:
            return 1
        return max(1, -(-n // batch_size))

    def batches(self, rng: np.random.Generator, batch_size: int | None = None) -> Iterator[np.ndarray | None]:
        """The batches of one epoch: shuffled index arrays, or ``None`` once for full-batch problems."""
        n = self.num_examples
        if n is None or batch_size is None or batch_size >= n:
            if n is None:
                yield None
            else:
                yield rng.permutation(n)
            return
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]

    def loss_and_grad(self, params, grads, batch=None, rng=None) -> float:
        """Loss on ``batch``; writes the gradient into ``grads``."""
        raise NotImplementedError

    def loss(self, params, batch=None) -> float:
        """The loss alone (a gradient is computed into a scratch buffer)."""
        grads = [np.empty_like(p) for p in params]
        return self.loss_and_grad(params, grads, batch, None)

    def evaluate(self, params) -> dict[str, float]:
        """Metrics of the current parameters (after each epoch)."""
        return {}

    def optimum(self) -> list[np.ndarray] | None:
        """The known minimiser, if there is one (for ``distance_to_optimum``)."""
        return None


def distance(params, optimum) -> float:
    return float(np.sqrt(sum(np.sum((np.asarray(p, np.float64) - o) ** 2) for p, o in zip(params, optimum))))
