"""``LossScaleOptimizer``: dynamic loss scaling around any optimizer, as Keras 3's.

The loss is multiplied by a scale (``scale_loss``) before the gradients are taken, so that
small gradients survive a low-precision backward pass; each step divides the gradients by the
scale again. A step whose gradients are not all finite is skipped and the scale halved; after
``dynamic_growth_steps`` finite steps in a row the scale doubles.
"""

from __future__ import annotations

import math

import numpy as np

from ..plugins import REGISTRIES
from ..sparse import IndexedSlices
from .base import Optimizer


class LossScaleOptimizer:
    """Keras's ``LossScaleOptimizer(inner_optimizer, initial_scale=2**15, dynamic_growth_steps=2000)``.

    One call of ``apply``: if every gradient is finite, the inner optimizer steps on
    ``g / scale`` (a parameter chosen by the inner optimizer's ``overwrite_with_gradient`` gets
    its gradient unscaled), then the scale doubles if this was the ``dynamic_growth_steps``-th
    finite step in a row (else the count goes up); otherwise nothing is stepped, the scale
    halves and the count restarts. ``iterations``, ``learning_rate`` and the parameters' EMA
    are the inner optimizer's; the inner optimizer's own ``loss_scale_factor`` is cleared, as
    Keras does. The state (``get_state``) holds the scale and the count with the inner state.
    """

    registry_name = "loss_scale_optimizer"

    def __init__(
        self, inner_optimizer, initial_scale: float = 2.0**15, dynamic_growth_steps: int = 2000, name=None, **kwargs
    ):
        _refuse_base_arguments(kwargs)
        if isinstance(inner_optimizer, (str, dict)):  # a name or a config, optlab's or Keras's
            inner_optimizer = REGISTRIES["optimizers"].create(inner_optimizer)
        if not isinstance(inner_optimizer, Optimizer) and not hasattr(inner_optimizer, "optimizers"):  # or a group
            raise TypeError(
                "LossScaleOptimizer: `inner_optimizer` must be an optimizer (an instance, a name or a config); "
                f"received {inner_optimizer!r}"
            )
        if (
            isinstance(initial_scale, bool)
            or not isinstance(initial_scale, (int, float))
            or not (0 < initial_scale < math.inf)
        ):
            raise ValueError(
                f"LossScaleOptimizer: `initial_scale` must be a finite float > 0; received {initial_scale!r}"
            )
        if (
            isinstance(dynamic_growth_steps, bool)
            or not isinstance(dynamic_growth_steps, int)
            or dynamic_growth_steps < 1
        ):
            raise ValueError(
                f"LossScaleOptimizer: `dynamic_growth_steps` must be an integer >= 1; received {dynamic_growth_steps!r}"
            )
        self.inner_optimizer = inner_optimizer
        self.initial_scale = float(initial_scale)
        self.dynamic_growth_steps = dynamic_growth_steps
        self.name = name or "loss_scale_optimizer"
        self.inner_optimizer.loss_scale_factor = None
        self.dynamic_scale = self.initial_scale
        self.step_counter = 0

    # -- what a training loop uses ------------------------------------------------------------
    def scale_loss(self, loss):
        """``loss`` times the current scale: differentiate this, and pass its gradients to ``apply``."""
        return loss * self.dynamic_scale

    def apply_gradients(self, grads_and_vars) -> int:
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [p for _, p in pairs])
        return self.iterations

    def apply(self, grads, params=None) -> None:
        inner = self.inner_optimizer
        names = None
        if isinstance(grads, dict):
            names, grads = list(grads), list(grads.values())
        grads = list(grads)
        if not all(g is None or np.isfinite(g.values if type(g) is IndexedSlices else g).all() for g in grads):
            self.step_counter = 0
            self.dynamic_scale *= 0.5
            return
        if not inner.built and params is not None:
            inner.build(params)
        overwritten = set(inner._overwrite)  # resolved by the build: these take their gradient as it is
        scale = self.dynamic_scale
        unscaled = [g if g is None or i in overwritten else _divided(g, scale) for i, g in enumerate(grads)]
        inner.apply(unscaled if names is None else dict(zip(names, unscaled)), params)
        if self.step_counter == self.dynamic_growth_steps - 1:
            self.step_counter = 0
            self.dynamic_scale *= 2.0
        else:
            self.step_counter += 1

    def build(self, params) -> None:
        self.inner_optimizer.build(params)

    @property
    def built(self) -> bool:
        return self.inner_optimizer.built

    @property
    def iterations(self) -> int:
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        self.inner_optimizer.learning_rate = value

    @property
    def applied_learning_rate(self):
        return self.inner_optimizer.applied_learning_rate

    def rate_logs(self, applied: bool = False) -> dict[str, float]:
        return self.inner_optimizer.rate_logs(applied)

    def finalize_variable_values(self, var_list=None) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    @property
    def variables(self) -> dict:
        return {
            "step_counter": self.step_counter,
            "dynamic_scale": self.dynamic_scale,
            **self.inner_optimizer.variables,
        }

    # -- config and state ---------------------------------------------------------------------
    def get_config(self) -> dict:
        """Keras's form: the inner optimizer serialized (``{"class_name", "config"}``)."""
        inner = self.inner_optimizer
        return {
            "name": self.name,
            "inner_optimizer": {"class_name": inner.registry_name, "config": inner.get_config()},
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        return cls(config.pop("inner_optimizer"), **config)  # older Keras's base keys at their defaults pass

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta, arrays = self.inner_optimizer.get_state()
        return {"loss_scale": {"dynamic_scale": self.dynamic_scale, "step_counter": self.step_counter}, **meta}, arrays

    def set_state(self, meta: dict, arrays: dict, *, restore_learning_rate: bool = False) -> None:
        own = meta.get("loss_scale") if isinstance(meta, dict) else None
        if not (
            isinstance(own, dict)
            and isinstance(own.get("dynamic_scale"), (int, float))
            and 0 < own["dynamic_scale"] < math.inf
            and isinstance(own.get("step_counter"), int)
            and 0 <= own["step_counter"] < self.dynamic_growth_steps
        ):
            raise ValueError(
                "LossScaleOptimizer: invalid optimizer state: `loss_scale` must hold a finite dynamic_scale > 0 and "
                f"a step_counter in [0, {self.dynamic_growth_steps}); received {own!r}"
            )
        inner_meta = {k: v for k, v in meta.items() if k != "loss_scale"}
        self.inner_optimizer.set_state(inner_meta, arrays, restore_learning_rate=restore_learning_rate)
        self.dynamic_scale, self.step_counter = float(own["dynamic_scale"]), own["step_counter"]


def _divided(g, scale: float):
    if type(g) is IndexedSlices:
        return IndexedSlices(_divided(g.values, scale), g.indices, g.dense_shape)
    g = np.asarray(g)
    return g / g.dtype.type(scale) if g.dtype.kind == "f" else g / scale


#: the base optimizer's arguments, at their defaults: older Keras versions wrote them into a
#: LossScaleOptimizer's config; any other value belongs on the inner optimizer
BASE_DEFAULTS = {
    "weight_decay": None,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


def _refuse_base_arguments(kwargs: dict) -> None:
    """Keras's rules: ``dynamic=False`` and a base argument away from its default are refused,
    each saying where it belongs; any other argument is refused by name."""
    if not kwargs.pop("dynamic", True):
        raise ValueError(
            "LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set `loss_scale_factor` "
            "directly on the `inner_optimizer`."
        )
    for name, default in BASE_DEFAULTS.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if value != default or (default is None and value is not None):
                raise ValueError(
                    f"LossScaleOptimizer does not support `{name}`. Instead, set `{name}` on the `inner_optimizer`."
                )
    if kwargs:
        raise ValueError(f"LossScaleOptimizer does not support arguments: `{'`, `'.join(kwargs)}`.")
