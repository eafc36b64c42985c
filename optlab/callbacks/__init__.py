"""Callbacks: Keras's hooks, names and semantics (History, LearningRateScheduler, EarlyStopping,
ReduceLROnPlateau, TerminateOnNaN, ModelCheckpoint, BackupAndRestore, CSVLogger), a progress
bar, and a threshold stop."""

from __future__ import annotations

from ..plugins import REGISTRIES
from .base import Callback, CallbackList, Monitor, direction
from .checkpoint import BackupAndRestore, ModelCheckpoint, load_checkpoint
from .core import (
    CSVLogger,
    EarlyStopping,
    History,
    LearningRateScheduler,
    ProgressBar,
    ReduceLROnPlateau,
    TerminateOnNaN,
    ThresholdStop,
)

BUILTIN = (
    History,
    LearningRateScheduler,
    EarlyStopping,
    ReduceLROnPlateau,
    TerminateOnNaN,
    ThresholdStop,
    ModelCheckpoint,
    BackupAndRestore,
    CSVLogger,
    ProgressBar,
)

#: callback names (filled by the plugin hooks on first use: the built-ins and installed plugins)
registry = REGISTRIES["callbacks"]


def get(identifier, **overrides) -> Callback:
    """A callback from a name, a config dict (``{"name": ..., **arguments}``) or an instance."""
    if isinstance(identifier, Callback):
        return identifier
    return registry.create(identifier, **overrides)


__all__ = [
    "Callback",
    "CallbackList",
    "Monitor",
    "direction",
    "get",
    "load_checkpoint",
    "registry",
    *(c.__name__ for c in BUILTIN),
]
