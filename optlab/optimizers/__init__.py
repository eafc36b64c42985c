"""Optimizers with Keras 3's names, arguments, defaults and numerics.

>>> opt = get("adam")                                   # by name, Keras defaults
>>> opt = get({"name": "adam", "learning_rate": 0.01})  # from a flat config: name = registry name
>>> opt = get({"class_name": "Adam", "config": {"name": "my_adam"}})  # Keras's form: name = label
>>> opt.apply_gradients(zip(grads, params))             # one in-place step  # doctest: +SKIP
"""

from __future__ import annotations

from ..plugins import REGISTRIES
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .adamw import AdamW
from .base import LearningRate, Optimizer
from .ftrl import Ftrl
from .lamb import Lamb
from .layout import Segments, Slot
from .lion import Lion
from .loss_scale import LossScaleOptimizer
from .multi import MultiOptimizer, OptimizerMap
from .muon import Muon
from .nadam import Nadam
from .rmsprop import RMSprop
from .schedule_free_adamw import ScheduleFreeAdamW
from .sgd import SGD

BUILTIN = (
    SGD,
    RMSprop,
    Adagrad,
    Adadelta,
    Adam,
    Adamax,
    Nadam,
    Ftrl,
    AdamW,
    Lion,
    Lamb,
    Adafactor,
    Muon,
    ScheduleFreeAdamW,
)

#: optimizer names (filled by the plugin hooks on first use: the built-ins and installed plugins)
registry = REGISTRIES["optimizers"]


def get(identifier, **overrides) -> Optimizer | None:
    """An optimizer from a name, a config dict or an instance.

    A config is flat, ``{"name": <registered name>, **arguments}`` (``name`` selects the class; the
    optimizer gets a default label), or Keras's ``{"class_name": "Adam", "config": {...}}``, where
    ``config`` is ``get_config()`` output (Keras's or optlab's) and its ``name`` is the label.
    Names are case-insensitive and accept Keras's aliases (``"RMSprop"``,
    ``"schedulefreeadamw"``); installed plugins' optimizers are found the same way.
    ``None`` gives ``None``. Keyword ``overrides``
    are passed to the constructor (with a name or a config).
    """
    if identifier is None or isinstance(identifier, (Optimizer, LossScaleOptimizer, MultiOptimizer)):
        return identifier
    if isinstance(identifier, dict) and str(identifier.get("class_name", "")).lower() in _WRAPPERS:
        return _WRAPPERS[identifier["class_name"].lower()].from_config(identifier.get("config") or {})
    return registry.create(identifier, **overrides)


#: optimizers that wrap another (not registered: they take an optimizer, not hyperparameters)
_WRAPPERS = {
    "lossscaleoptimizer": LossScaleOptimizer,
    "loss_scale_optimizer": LossScaleOptimizer,
    "multioptimizer": MultiOptimizer,
    "multi_optimizer": MultiOptimizer,
}


def serialize(optimizer) -> dict:
    """``{"class_name": registry name, "config": get_config()}`` (Keras's form; ``get`` rebuilds it, label included)."""
    return {"class_name": optimizer.registry_name, "config": optimizer.get_config()}


def deserialize(config: dict) -> Optimizer:
    return get(config)


__all__ = [
    "Optimizer",
    "LearningRate",
    "LossScaleOptimizer",
    "MultiOptimizer",
    "OptimizerMap",
    "Slot",
    "Segments",
    "get",
    "serialize",
    "deserialize",
    "registry",
    *(c.__name__ for c in BUILTIN),
]
