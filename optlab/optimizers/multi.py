"""Optimizer groups: ``MultiOptimizer`` applies different optimizers to different parameters in
one step (Keras 3's ``MultiOptimizer`` and ``OptimizerMap``; optax's ``multi_transform``, torch's
parameter groups). Muon for the matrices and AdamW for the rest, or another learning rate for
one layer::

    groups = OptimizerMap(AdamW(1e-3), {".*/kernel": Muon(0.02), "embedding/.*": AdamW(1e-4)})
    opt = MultiOptimizer(groups)
    opt.apply(grads, {"embedding/table": e, "dense/kernel": w, "dense/bias": b})
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping

import numpy as np

from ..plugins import REGISTRIES
from .base import Optimizer
from .layout import count_of
from .loss_scale import LossScaleOptimizer
from .selection import in_order, named

STATE_FORMAT = "optlab-multi-optimizer-state-1"


def _optimizer(value, what: str) -> Optimizer:
    if isinstance(value, (str, dict)):  # a name or a config, optlab's or Keras's
        value = REGISTRIES["optimizers"].create(value)
    if isinstance(value, (LossScaleOptimizer, MultiOptimizer)):
        raise ValueError(f"{what} cannot be a {type(value).__name__} (wrap the MultiOptimizer instead)")
    if not isinstance(value, Optimizer):
        raise TypeError(f"{what} must be an optimizer (an instance, a name or a config); received {value!r}")
    return value


class OptimizerMap(MutableMapping):
    """Parameter names to optimizers, as Keras's ``OptimizerMap``: a name's optimizer is the one
    under exactly that key, else the one whose key (a regular expression) matches the whole
    name (``re.fullmatch``; two matches are an error), else ``default_optimizer``. Unnamed
    parameters are known by their position (``"0"``, ``"1"``, ...)."""

    def __init__(self, default_optimizer, optimizer_map=None):
        if optimizer_map is not None and not isinstance(optimizer_map, Mapping):
            raise TypeError(f"OptimizerMap: optimizer_map must be a dict; received {optimizer_map!r}")
        self._default_optimizer = _optimizer(default_optimizer, "OptimizerMap: default_optimizer")
        self._optimizer_map: dict[str, Optimizer] = {}
        for key, value in (optimizer_map or {}).items():
            self[key] = value

    @property
    def default_optimizer(self) -> Optimizer:
        return self._default_optimizer

    def __getitem__(self, key: str) -> Optimizer:
        if key in self._optimizer_map:
            return self._optimizer_map[key]
        matching = [pattern for pattern in self._optimizer_map if re.fullmatch(pattern, key)]
        if len(matching) > 1:
            raise ValueError(f"Multiple optimizers assigned to parameter {key!r}: by the patterns {matching}")
        return self._optimizer_map[matching[0]] if matching else self._default_optimizer

    def __setitem__(self, key: str, optimizer) -> None:
        if not isinstance(key, str):
            raise ValueError(f"OptimizerMap: a key must be a string (a name or a pattern); received {key!r}")
        if key in self._optimizer_map:
            raise ValueError(f"OptimizerMap: {key!r} is already mapped (to {self._optimizer_map[key].name})")
        try:
            re.compile(key)
        except re.error as error:
            raise ValueError(f"OptimizerMap: the key {key!r} is not a regular expression ({error})") from None
        self._optimizer_map[key] = _optimizer(optimizer, f"OptimizerMap[{key!r}]")

    def __delitem__(self, key: str) -> None:
        del self._optimizer_map[key]

    def __len__(self) -> int:
        return len(self._optimizer_map)

    def __iter__(self):
        return iter(self._optimizer_map)

    def __call__(self, name: str) -> Optimizer:
        return self[name]

    def get_config(self) -> dict:
        def serialize(opt):
            return {"class_name": opt.registry_name, "config": opt.get_config()}

        return {
            "default_optimizer": serialize(self._default_optimizer),
            "optimizer_map": {k: serialize(v) for k, v in self._optimizer_map.items()},
        }

    @classmethod
    def from_config(cls, config: dict) -> OptimizerMap:
        return cls(config["default_optimizer"], config.get("optimizer_map") or {})


class MultiOptimizer:
    """Keras's ``MultiOptimizer(optimizer_map, loss_scale_factor=None, name=None)``.

    ``optimizer_map`` is an ``OptimizerMap``, or a callable ``name -> optimizer`` (the
    parameter's name; its position as a string where parameters are unnamed). At ``build``
    each parameter goes to its optimizer, which is built on its share (named, if the
    parameters are); each step hands every optimizer its parameters' gradients. Each keeps
    its own state, learning rate and schedule; ``iterations`` counts the group's steps. As in
    Keras, there is no single ``learning_rate``: the training loop and the callbacks log
    ``learning_rate_<optimizer name>`` for each, and ``LearningRateScheduler`` /
    ``ReduceLROnPlateau`` set each one. ``loss_scale_factor`` is set on every optimizer.
    """

    registry_name = "multi_optimizer"

    def __init__(self, optimizer_map, loss_scale_factor=None, name=None):
        if not callable(optimizer_map):
            raise TypeError(
                "MultiOptimizer: optimizer_map must be an OptimizerMap or a callable name -> optimizer; "
                f"received {optimizer_map!r}"
            )
        self._optimizer_map = optimizer_map
        self.name = name or "multi_optimizer"
        self._inner: list[Optimizer] = []
        if isinstance(optimizer_map, OptimizerMap):
            for opt in [*optimizer_map.values(), optimizer_map.default_optimizer]:
                if opt not in self._inner:
                    self._inner.append(opt)
        self._loss_scale_factor = None
        self.loss_scale_factor = loss_scale_factor
        self._iterations = 0
        self._assignment: list[int] | None = None  # each parameter's optimizer (index into optimizers)
        self._names: list[str] | None = None

    # -- the groups ----------------------------------------------------------------------------
    @property
    def optimizers(self) -> list[Optimizer]:
        return list(self._inner)

    @property
    def loss_scale_factor(self):
        return self._loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value) -> None:
        for opt in self._inner:
            opt.loss_scale_factor = value  # validated by each optimizer
        self._loss_scale_factor = value

    @property
    def built(self) -> bool:
        return self._assignment is not None

    @property
    def iterations(self) -> int:
        return self._iterations

    @property
    def learning_rate(self):
        raise AttributeError(
            "Learning rate cannot be accessed on a MultiOptimizer. Access the learning rate on the individual "
            "sub-optimizers instead (multi.optimizers)."
        )

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        raise AttributeError(
            "Learning rate cannot be set on a MultiOptimizer. Set the learning rate on the individual "
            "sub-optimizers instead (multi.optimizers)."
        )

    def scale_loss(self, loss):
        return loss if self._loss_scale_factor is None else loss * self._loss_scale_factor

    @property
    def _overwrite(self) -> list[int]:
        """The parameters (positions in the group) that an optimizer takes ``overwrite_with_gradient``."""
        found = []
        for k, opt in enumerate(self._inner):
            share = [i for i, a in enumerate(self._assignment or ()) if a == k]
            found += [share[j] for j in getattr(opt, "_overwrite", ()) if j < len(share)]
        return sorted(found)

    def build(self, params) -> None:
        if self.built:
            return
        arrays, names = named(params, "MultiOptimizer")
        labels = names if names is not None else [str(i) for i in range(len(arrays))]
        inner = list(self._inner)
        assignment = []
        for label in labels:
            opt = _optimizer(self._optimizer_map(label), f"MultiOptimizer: the optimizer of parameter {label!r}")
            if opt not in inner:
                inner.append(opt)
                opt.loss_scale_factor = self._loss_scale_factor
            assignment.append(inner.index(opt))
        for k, opt in enumerate(inner):
            share = [i for i, a in enumerate(assignment) if a == k]
            if share:
                opt.build({names[i]: arrays[i] for i in share} if names is not None else [arrays[i] for i in share])
        self._inner, self._assignment, self._names = inner, assignment, names

    def apply_gradients(self, grads_and_vars) -> int:
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [p for _, p in pairs])
        return self.iterations

    def apply(self, grads, params=None) -> None:
        if params is None:
            if not self.built:
                raise ValueError(
                    "MultiOptimizer.apply(grads) without parameters needs it built on them: "
                    "pass apply(grads, params) or build(params) first"
                )
            grads = in_order(grads, self._names, "MultiOptimizer", "gradients") if isinstance(grads, Mapping) else grads
            grads, params = list(grads), None
        else:
            if not self.built:
                self.build(params)
            if isinstance(params, Mapping):
                order = self._names if self._names is not None else list(params)
                params = in_order(params, order, "MultiOptimizer", "parameters")
                if isinstance(grads, Mapping):
                    grads = in_order(grads, order, "MultiOptimizer", "gradients")
            params = list(params)
            if len(params) != len(self._assignment):
                raise ValueError(
                    f"MultiOptimizer was built for {count_of(len(self._assignment))}, received {len(params)}"
                )
        grads = list(grads)
        if len(grads) != len(self._assignment):
            raise ValueError(
                f"Gradients must match the parameters one to one: received {len(grads)} gradients for "
                f"{len(self._assignment)} parameters"
            )
        for k, opt in enumerate(self._inner):
            share = [i for i, a in enumerate(self._assignment) if a == k]
            if share:
                opt.apply([grads[i] for i in share], None if params is None else [params[i] for i in share])
        self._iterations += 1

    def finalize_variable_values(self, var_list=None) -> None:
        for k, opt in enumerate(self._inner):
            share = [i for i, a in enumerate(self._assignment or ()) if a == k]
            if share:
                opt.finalize_variable_values(None if var_list is None else [var_list[i] for i in share])

    # -- what the training loop and the callbacks log --------------------------------------------
    def rate_logs(self, applied: bool = False) -> dict[str, float]:
        """``learning_rate_<name>`` of each optimizer: the rate the last step used (``applied``),
        else the rate of the next one."""
        if applied:
            return {f"learning_rate_{o.name}": o.applied_learning_rate for o in self._inner}
        return {f"learning_rate_{o.name}": float(o.learning_rate) for o in self._inner}

    @property
    def variables(self) -> dict:
        found = {"iterations": self._iterations}
        for opt in self._inner:
            found.update({f"{opt.name}/{k}": v for k, v in opt.variables.items()})
        return found

    # -- config and state ---------------------------------------------------------------------
    def get_config(self) -> dict:
        if not isinstance(self._optimizer_map, OptimizerMap):
            raise TypeError("MultiOptimizer with a function as optimizer_map has no plain-data config")
        return {
            "optimizer_map": self._optimizer_map.get_config(),
            "loss_scale_factor": self._loss_scale_factor,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> MultiOptimizer:
        config = dict(config)
        groups = config.pop("optimizer_map")
        if isinstance(groups, dict) and "class_name" in groups:  # Keras's serialized form
            groups = groups.get("config") or {}
        return cls(OptimizerMap.from_config(groups), **config)

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {
            "format": STATE_FORMAT,
            "iterations": self._iterations,
            "assignment": self._assignment,
            "optimizers": [],
        }
        arrays = {}
        for k, opt in enumerate(self._inner):
            inner_meta, inner_arrays = opt.get_state()
            meta["optimizers"].append(inner_meta)
            arrays.update({f"{k}/{key}": a for key, a in inner_arrays.items()})
        return meta, arrays

    def set_state(self, meta: dict, arrays: dict, *, restore_learning_rate: bool = False) -> None:
        """Restore each optimizer's state, all or none: each is checked before any is changed."""
        ok = (
            isinstance(meta, dict)
            and meta.get("format") == STATE_FORMAT
            and isinstance(meta.get("iterations"), int)
            and meta["iterations"] >= 0
            and isinstance(meta.get("optimizers"), list)
            and len(meta["optimizers"]) == len(self._inner)
        )
        if not ok:
            raise ValueError(
                f"MultiOptimizer: invalid optimizer state: not a state of a MultiOptimizer of {len(self._inner)} "
                "optimizers (format, iterations, one state per optimizer)"
            )
        if self.built and meta.get("assignment") != self._assignment:
            raise ValueError(
                "MultiOptimizer: the state assigns the parameters to the optimizers differently: "
                f"{meta.get('assignment')} (state) vs {self._assignment} (this optimizer)"
            )
        before = [opt.get_state() for opt in self._inner]
        before = [(m, {k: a.copy() for k, a in arr.items()}) for m, arr in before]
        done = []
        try:
            for k, opt in enumerate(self._inner):
                share = {key.split("/", 1)[1]: a for key, a in arrays.items() if key.split("/", 1)[0] == str(k)}
                opt.set_state(meta["optimizers"][k], share, restore_learning_rate=restore_learning_rate)
                done.append(k)
        except ValueError:
            for k in done:  # put back those already restored: the group changes as one
                self._inner[k].set_state(*before[k], restore_learning_rate=True)
            raise
        self._iterations = meta["iterations"]
