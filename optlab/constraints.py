"""Parameter constraints, Keras 3's: applied to a parameter after each step (``Optimizer.add_constraint``).

A constraint is any callable ``w -> new w`` (same shape); these four are Keras's, with its
arguments, defaults and numbers (``keras.constraints``, epsilon ``1e-7`` as Keras's backend)::

    opt.add_constraint(optlab.constraints.MaxNorm(2.0, axis=0), var_names=["kernel"])
    opt.add_constraint("non_neg", indices=[1])
"""

from __future__ import annotations

import numpy as np

from .hparams import Configurable, Hyper
from .names import did_you_mean

#: Keras's ``backend.epsilon()``, added to the norms it divides by
EPSILON = 1e-7


def _axis(value, owner: str):
    """An axis as Keras takes it: an integer or a list of integers."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in items):
        raise ValueError(f"{owner}: `axis` must be an integer or a list of integers; received axis={value!r}")
    return tuple(int(a) for a in items) if isinstance(value, (list, tuple)) else int(value)


class Constraint(Configurable):
    """A constraint: ``constraint(w)`` returns the constrained values of ``w`` (a new array)."""

    registry_name = "constraint"

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return w  # as Keras's base class: no constraint

    def get_config(self) -> dict:
        """Keras's: the arguments alone (``{}`` for ``NonNeg``); :func:`serialize` adds the class."""
        config = super().get_config()
        config.pop("name", None)
        return config

    def _norms(self, w: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum(np.square(w), axis=self.axis, keepdims=True))


class NonNeg(Constraint):
    """``max(w, 0)``: every element >= 0."""

    registry_name = "non_neg"

    def __call__(self, w):
        return np.maximum(w, 0)


class MaxNorm(Constraint):
    """``w * clip(n, 0, max_value) / (eps + n)``, ``n`` the L2 norms of ``w`` along ``axis``."""

    registry_name = "max_norm"
    max_value = Hyper(2.0, low=0.0, doc="the largest norm")
    axis = Hyper(0, kind=object, doc="the axis (or axes) of the norms: 0 constrains each column of a dense kernel")

    def check(self):
        self.axis = _axis(self.axis, type(self).__name__)

    def __call__(self, w):
        norms = self._norms(w)
        return w * (np.clip(norms, 0, self.max_value) / (w.dtype.type(EPSILON) + norms))


class MinMaxNorm(Constraint):
    """``w * d / (eps + n)`` with ``d = rate * clip(n, min_value, max_value) + (1 - rate) * n``."""

    registry_name = "min_max_norm"
    min_value = Hyper(0.0, low=0.0, doc="the smallest norm")
    max_value = Hyper(1.0, low=0.0, doc="the largest norm")
    rate = Hyper(1.0, low=0.0, high=1.0, doc="1: enforce at once; below 1: move that fraction of the way per step")
    axis = Hyper(0, kind=object, doc="the axis (or axes) of the norms")

    def check(self):
        self.axis = _axis(self.axis, type(self).__name__)
        if self.min_value > self.max_value:
            raise ValueError(
                f"MinMaxNorm: `min_value` must be <= `max_value`; received min_value={self.min_value}, "
                f"max_value={self.max_value}"
            )

    def __call__(self, w):
        norms = self._norms(w)
        desired = self.rate * np.clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        return w * (desired / (w.dtype.type(EPSILON) + norms))


class UnitNorm(Constraint):
    """``w / (eps + n)``: unit L2 norm along ``axis``."""

    registry_name = "unit_norm"
    axis = Hyper(0, kind=object, doc="the axis (or axes) of the norms")

    def check(self):
        self.axis = _axis(self.axis, type(self).__name__)

    def __call__(self, w):
        return w / (w.dtype.type(EPSILON) + self._norms(w))


BUILTIN = (NonNeg, MaxNorm, MinMaxNorm, UnitNorm)
_BY_NAME = {**{c.registry_name: c for c in BUILTIN}, **{c.__name__.lower(): c for c in BUILTIN}}


def serialize(constraint: Constraint) -> dict:
    """Keras's serialized form: ``{"class_name": "MaxNorm", "config": {...}}`` (:func:`get` reads it)."""
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}


def get(identifier):
    """A constraint from a name (``"max_norm"``, ``"MaxNorm"``), a config ``{"name": ..., **args}``,
    Keras's serialized form ``{"class_name": "MaxNorm", "config": {...}}``, an instance, or any
    callable ``w -> w``; ``None`` gives ``None``."""
    if identifier is None or callable(identifier):
        return identifier
    if isinstance(identifier, dict) and "class_name" in identifier:
        inner = identifier.get("config") or {}
        if not isinstance(inner, dict):
            raise TypeError(f"a constraint's serialized 'config' must be a dict; received {identifier!r}")
        identifier = {**inner, "name": identifier["class_name"]}
    config = {"name": identifier} if isinstance(identifier, str) else identifier
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise TypeError(f"a constraint is a name, a config with a 'name', or a callable; received {identifier!r}")
    config = dict(config)
    name = config.pop("name")
    cls = _BY_NAME.get(name.lower())
    if cls is None:
        known = [c.registry_name for c in BUILTIN]
        raise ValueError(f"Unknown constraint {name!r}{did_you_mean(name, known)}. Known: {', '.join(known)}")
    return cls(**config)


__all__ = ["BUILTIN", "Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "get", "serialize"]
