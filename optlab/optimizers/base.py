"""The optimizer base class: everything that is not an update rule.

A subclass declares its hyperparameters (``Hyper``), its state slots
(``slots()``) and one method, ``update(param, grad, state, lr, step, seg)``,
which runs its numba kernel over flat arrays. The base class owns the
learning rate (float, schedule or callable), the step counter, loss scaling,
gradient accumulation, clipping (``clipnorm``, ``clipvalue``,
``global_clipnorm``), decoupled weight decay, the EMA of the weights, state
creation, save/restore and the flat-buffer fast path.

One call of ``apply`` follows Keras 3 (``BaseOptimizer.apply``):

1. unscale by ``loss_scale_factor``;
2. with ``gradient_accumulation_steps = N``: add the gradient to the
   accumulator; on every N-th call use ``(g + acc) / N`` and reset,
   otherwise stop here (EMA still updates, see 6);
3. clip (``clipnorm`` per tensor, ``global_clipnorm``, or ``clipvalue``);
4. decoupled weight decay ``p <- p - p * weight_decay * lr`` (fused into the update rule's
   own pass where it declares ``fuses_weight_decay``);
5. the update rule, with ``step = iterations + 1``;
6. EMA ``avg <- m * avg + (1 - m) * p`` (``m = 0`` while ``iterations == 0``),
   copied into the parameters every ``ema_overwrite_frequency`` steps;
7. ``iterations += 1``.

``lr`` is the learning rate at the raw call count (a schedule sees every call,
accumulating ones included), while ``iterations`` (and so ``step``, which
drives bias corrections) counts applied updates: ``calls // N``.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import is_
from typing import ClassVar

import numpy as np

from .. import kernels as K
from ..flat import flat_view
from ..hparams import Configurable, Hyper

STATE_FORMAT = "optlab.optimizer_state/1"
#: the options every optimizer takes (besides learning_rate and name), in Keras's order
GENERIC_OPTIONS = (
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)


class LearningRate(Hyper):
    """The ``learning_rate`` argument: a float >= 0, a schedule ``step -> float``, or a callable.

    Reading ``opt.learning_rate`` gives the current value as a float (a
    schedule evaluated at the current step), as in Keras.
    """

    def __init__(self, default: float):
        super().__init__(default, low=0.0, doc="step size")

    def allowed(self) -> str:
        return "a float >= 0, a learning-rate schedule, or a callable"

    def validate(self, value, owner=""):
        if callable(value):
            return value
        return super().validate(value, owner)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj._current_learning_rate()

    def __set__(self, obj, value):
        obj._set_learning_rate(self.validate(value, type(obj).__name__))


@dataclass(frozen=True)
class Slot:
    """A state slot: its initial value (a number, or ``"param"`` for a copy of the
    parameter) and, for slots not shaped like the parameter, ``size(shape)`` elements."""

    init: float | str = 0.0
    size: Callable[[tuple], int] | None = None


class Segments:
    """The parameters one ``update`` call covers: their shapes and flat offsets.

    ``offsets[k]:offsets[k+1]`` is parameter k inside the flat chunk;
    ``slot_offsets[name]`` the same for a slot with its own ``size``.
    """

    __slots__ = ("indices", "offsets", "shapes", "slot_offsets")

    def __init__(self, shapes, offsets, slot_offsets, indices):
        self.shapes = shapes
        self.offsets = offsets
        self.slot_offsets = slot_offsets
        self.indices = indices

    def __len__(self):
        return len(self.shapes)

    def views(self, flat: np.ndarray, slot: str | None = None):
        """Yield the per-parameter views of ``flat`` (shaped like each parameter, or flat for a sized slot)."""
        offsets = self.offsets if slot is None else self.slot_offsets[slot]
        for k, shape in enumerate(self.shapes):
            view = flat[offsets[k] : offsets[k + 1]]
            yield view.reshape(shape) if slot is None else view


class _Plan:
    """How one step walks the parameters: one flat chunk, or one chunk per array."""

    __slots__ = ("chunks", "flat", "params")

    def __init__(self, params, chunks, flat):
        self.params = params  # the parameter list this plan was made for (identity cache)
        self.chunks = chunks  # [(start, stop, param_1d, state, segments)]
        self.flat = flat


class Optimizer(Configurable):
    """Base class of all optimizers (Keras 3's ``keras.optimizers.Optimizer``).

    Generic arguments, shared by every optimizer:

    - ``learning_rate``: float, schedule (``step -> float``) or zero-argument callable.
    - ``weight_decay``: decoupled decay ``p <- p - p * weight_decay * lr`` before the update.
    - ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``: at most one; clip each
      gradient's L2 norm, each element, or the norm of all gradients together.
    - ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``: exponential
      moving average of the weights, written into them every N steps.
    - ``loss_scale_factor``: gradients are divided by it first.
    - ``gradient_accumulation_steps``: update every N calls with the mean gradient.
    - ``name``: a label.
    """

    learning_rate = LearningRate(0.001)
    weight_decay = Hyper(None, low=0.0, doc="decoupled weight decay rate")
    clipnorm = Hyper(None, low=0.0, low_open=True, doc="clip each gradient to this L2 norm")
    clipvalue = Hyper(None, low=0.0, low_open=True, doc="clip each gradient element to [-clipvalue, clipvalue]")
    global_clipnorm = Hyper(None, low=0.0, low_open=True, doc="clip all gradients to this global L2 norm")
    use_ema = Hyper(False, kind=bool, doc="keep an exponential moving average of the weights")
    ema_momentum = Hyper(0.99, low=0.0, high=1.0, doc="momentum of the weights' moving average")
    ema_overwrite_frequency = Hyper(None, kind=int, low=1, doc="copy the average into the weights every N steps")
    loss_scale_factor = Hyper(None, low=0.0, low_open=True, doc="gradients are divided by this factor")
    gradient_accumulation_steps = Hyper(None, kind=int, low=2, doc="update every N calls with the mean gradient")

    #: arrays read + written per parameter element by one step (None: 3 + 2 * param-shaped slots)
    traffic_per_element: ClassVar[int | None] = None
    #: the update rule applies the decoupled weight decay itself, in the same pass over memory:
    #: ``update`` then receives ``decay=c`` (``c = weight_decay * lr``) and must compute
    #: ``p - p * c`` before its own step, bit for bit what the separate pass would. Declared
    #: beside the ``update`` it describes: a subclass overriding ``update`` does not inherit it.
    fuses_weight_decay: ClassVar[bool] = False

    @classmethod
    def _fuses_decay(cls) -> bool:
        for klass in cls.__mro__:
            if "update" in vars(klass):
                return bool(vars(klass).get("fuses_weight_decay", False))
        return False

    @classmethod
    def _order_hypers(cls, hypers):
        first = {"learning_rate": hypers["learning_rate"]}
        specific = {k: v for k, v in hypers.items() if k not in first and k not in GENERIC_OPTIONS}
        generic = {k: hypers[k] for k in GENERIC_OPTIONS}
        return {**first, **specific, **generic}

    @classmethod
    def _extra_parameters(cls):
        return [inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None)]

    def __init__(self, *args, name: str | None = None, **kwargs):
        self._lr = None
        self._iterations = 0
        self._built = False
        self._exclude_wd: set[int] = set()
        self._exclude_wd_arrays: list = []
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored.", stacklevel=2)
        leftovers = self._assign_hypers(args, kwargs)
        if leftovers:
            raise self._unknown_arguments(leftovers)
        clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if getattr(self, k) is not None]
        if len(clips) > 1:
            raise ValueError(
                f"{type(self).__name__}: only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set; "
                f"received {', '.join(f'{k}={getattr(self, k)}' for k in clips)}"
            )
        self.name = name or self.registry_name
        self.check()

    # -- the part a subclass writes --------------------------------------------
    def check(self) -> None:
        """Cross-argument validation beyond each argument's declared range (optional)."""

    def slots(self) -> dict[str, Slot | float | str]:
        """State slots: name -> ``Slot`` (or its ``init`` alone for a parameter-shaped slot)."""
        return {}

    def begin_step(self, step: int, dtype: np.dtype) -> None:
        """Called once per applied update, before ``update`` (for state shared by all parameters)."""

    def update(self, param, grad, state: dict, lr, step: int, seg: Segments) -> None:
        """Update ``param`` in place from ``grad`` (flat arrays, one or many parameters).

        ``state`` maps slot names to flat arrays matching ``param``; ``lr`` is the
        learning rate as a scalar of the parameters' dtype; ``step`` is
        ``iterations + 1``; ``seg`` describes the parameters covered.
        """
        raise NotImplementedError

    def weight_decay_rate(self, shape: tuple) -> float | None:
        """The decoupled weight decay applied to a parameter of this shape."""
        return self.weight_decay

    # -- learning rate ---------------------------------------------------------
    def _set_learning_rate(self, value):
        from ..schedules import LearningRateSchedule

        if self._lr is not None and isinstance(self._lr, LearningRateSchedule) and not callable(value):
            raise TypeError(
                f"{type(self).__name__} was created with a learning-rate schedule, so its learning rate "
                "cannot be set to a number; set a new schedule, or create it with a float learning_rate"
            )
        if callable(value) and not isinstance(value, LearningRateSchedule):
            n_args = _positional_arity(value)
            self._lr_call = (lambda: value(self._iterations)) if n_args >= 1 else value
        else:
            self._lr_call = None
        self._lr = value

    def _current_learning_rate(self) -> float:
        lr = self._lr
        if self._lr_call is not None:
            return float(self._lr_call())
        if callable(lr):
            return float(lr(self._iterations))
        return lr

    @property
    def learning_rate_schedule(self):
        """The schedule or callable behind the learning rate, or None for a constant."""
        return self._lr if callable(self._lr) else None

    # -- step counter ----------------------------------------------------------
    @property
    def iterations(self) -> int:
        """Applied updates (calls // gradient_accumulation_steps when accumulating)."""
        n = self.gradient_accumulation_steps
        return self._iterations // n if n else self._iterations

    @property
    def built(self) -> bool:
        return self._built

    # -- building --------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list=None, indices=None):
        """Exempt parameters (given as the arrays themselves, or by position) from weight decay."""
        if self._built:
            raise ValueError("exclude_from_weight_decay() can only be called before the optimizer is built")
        self._exclude_wd = set(indices or ())
        self._exclude_wd_arrays = list(var_list or ())

    def build(self, params) -> None:
        """Create the state for ``params`` (done by the first ``apply``)."""
        params = list(params)
        self._check_params(params)
        for a in self._exclude_wd_arrays:
            self._exclude_wd.update(i for i, p in enumerate(params) if p is a)
        self._allocate([p.shape for p in params], params[0].dtype)
        for name, slot in self._slot_specs.items():
            if slot.init == "param":
                buf = self._slots[name]
                for k, p in enumerate(params):
                    buf[self._offsets[k] : self._offsets[k + 1]] = p.reshape(-1)

    def _check_params(self, params):
        owner = type(self).__name__
        if not params:
            raise ValueError(f"{owner}: no parameters given")
        dtype = params[0].dtype if isinstance(params[0], np.ndarray) else None
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{owner}: parameter {i} is a {type(p).__name__}, not a numpy array")
            if p.dtype not in (np.float32, np.float64):
                raise TypeError(f"{owner}: parameter {i} has dtype {p.dtype}; float32 and float64 are supported")
            if p.dtype != dtype:
                raise TypeError(f"{owner}: parameter {i} has dtype {p.dtype} but parameter 0 has {dtype}")
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"{owner}: parameter {i} must be a writeable C-contiguous array (updated in place)")

    def _allocate(self, shapes, dtype):
        dtype = np.dtype(dtype)
        self._shapes = [tuple(int(d) for d in s) for s in shapes]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self._shapes]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._dtype = dtype
        n = int(self._offsets[-1])
        self._slot_specs = {k: (v if isinstance(v, Slot) else Slot(v)) for k, v in self.slots().items()}
        self._slots, self._slot_offsets = {}, {}
        for name, slot in self._slot_specs.items():
            if slot.size is None:
                offsets, total = self._offsets, n
            else:
                ssizes = [int(slot.size(s)) for s in self._shapes]
                offsets = np.concatenate([[0], np.cumsum(ssizes)]).astype(np.int64)
                total = int(offsets[-1])
            init = 0.0 if slot.init == "param" else slot.init
            self._slots[name] = np.full(total, init, dtype=dtype)
            self._slot_offsets[name] = offsets
        self._ema = np.zeros(n, dtype) if self.use_ema else None
        self._acc = np.zeros(n, dtype) if self.gradient_accumulation_steps else None
        needs_scratch = (
            self.loss_scale_factor is not None
            or self.gradient_accumulation_steps
            or self.clipnorm is not None
            or self.clipvalue is not None
            or self.global_clipnorm is not None
        )
        self._gbuf = np.empty(n, dtype) if needs_scratch else None
        self._scalars: dict[str, float] = {}
        self._plan: _Plan | None = None
        self._grad_cache: tuple[list, np.ndarray | None] | None = None
        self._built = True

    def _segments(self, i0, i1) -> Segments:
        base = self._offsets[i0]
        offsets = self._offsets[i0 : i1 + 1] - base
        slot_offsets = {}
        for name, so in self._slot_offsets.items():
            slot_offsets[name] = so[i0 : i1 + 1] - so[i0]
        return Segments(self._shapes[i0:i1], offsets, slot_offsets, range(i0, i1))

    def _chunk(self, i0, i1, param_1d):
        state = {}
        for name, buf in self._slots.items():
            so = self._slot_offsets[name]
            state[name] = buf[so[i0] : so[i1]]
        return (int(self._offsets[i0]), int(self._offsets[i1]), param_1d, state, self._segments(i0, i1))

    def _make_plan(self, params) -> _Plan:
        owner = type(self).__name__
        if len(params) != len(self._shapes):
            raise ValueError(f"{owner} was built for {len(self._shapes)} parameters, received {len(params)}")
        self._check_params(params)
        for i, (p, shape) in enumerate(zip(params, self._shapes)):
            if p.shape != shape or p.dtype != self._dtype:
                raise ValueError(
                    f"{owner} was built for parameter {i} of shape {shape} and dtype {self._dtype}, "
                    f"received shape {p.shape} and dtype {p.dtype}"
                )
        flat = flat_view(params)
        if flat is not None:
            chunks = [self._chunk(0, len(params), flat)]
        else:
            chunks = [self._chunk(i, i + 1, p.reshape(-1)) for i, p in enumerate(params)]
        return _Plan(list(params), chunks, flat)

    # -- one step --------------------------------------------------------------
    def apply_gradients(self, grads_and_vars: Iterable) -> int:
        """Apply one step from ``(gradient, parameter)`` pairs; returns ``iterations``."""
        pairs = list(grads_and_vars)
        grads = [g for g, _ in pairs]
        params = [p for _, p in pairs]
        self.apply(grads, params)
        return self.iterations

    def apply(self, grads, params=None) -> None:
        """Apply one step. ``params`` defaults to those the optimizer was built with."""
        grads = list(grads)
        if params is None:
            if not self._built or self._plan is None:
                raise ValueError("When passing `grads` without parameters, the optimizer must already be built on them")
            params = self._plan.params
        else:
            params = list(params)
        if not self._built:
            self.build(params)
        plan = self._plan
        if plan is None or len(params) != len(plan.params) or not all(map(is_, params, plan.params)):
            plan = self._plan = self._make_plan(params)
            self._grad_cache = None
        work = self._gradient_chunks(plan, grads)
        self._step(work)

    def _gradient_chunks(self, plan: _Plan, grads):
        """Pair each chunk of the plan with its flat gradient; validates the gradients."""
        owner = type(self).__name__
        cache = self._grad_cache
        if cache is not None and len(grads) == len(cache[0]) and all(map(is_, grads, cache[0])):
            gflat = cache[1]
        else:
            if len(grads) != len(plan.params):
                raise ValueError(f"{owner}: received {len(grads)} gradients for {len(plan.params)} parameters")
            if any(g is None for g in grads):
                return self._partial_chunks(plan, grads)
            grads = [np.asarray(g) for g in grads]
            for i, (g, shape) in enumerate(zip(grads, self._shapes)):
                if g.shape != shape:
                    raise ValueError(f"{owner}: gradient {i} has shape {g.shape} but its parameter has shape {shape}")
                if g.dtype != self._dtype:
                    raise ValueError(
                        f"{owner}: gradient {i} has dtype {g.dtype} but its parameter has dtype {self._dtype}"
                    )
            gflat = flat_view(grads) if plan.flat is not None else None
            self._grad_cache = (grads, gflat)
        if plan.flat is None:
            return [(c, np.ascontiguousarray(g).reshape(-1)) for c, g in zip(plan.chunks, grads)]
        if gflat is None:
            # parameters are flat but gradients are not: gather them once into the scratch buffer
            if self._gbuf is None:
                self._gbuf = np.empty(int(self._offsets[-1]), self._dtype)
            for k, g in enumerate(grads):
                self._gbuf[self._offsets[k] : self._offsets[k + 1]] = g.reshape(-1)
            gflat = self._gbuf
        return [(plan.chunks[0], gflat)]

    def _partial_chunks(self, plan: _Plan, grads):
        missing = [i for i, g in enumerate(grads) if g is None]
        if len(missing) == len(grads):
            raise ValueError("No gradients provided for any parameter.")
        warnings.warn(f"Gradients do not exist for parameters {missing}; they are not updated.", stacklevel=4)
        work = []
        for i, g in enumerate(grads):
            if g is None:
                continue
            p = plan.params[i]
            g = np.asarray(g)
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"gradient {i} has shape {g.shape}/{g.dtype}; parameter has {p.shape}/{p.dtype}")
            work.append((self._chunk(i, i + 1, p.reshape(-1)), np.ascontiguousarray(g).reshape(-1)))
        self._grad_cache = None
        return work

    def _scratch(self, start, stop):
        if self._gbuf is None:
            self._gbuf = np.empty(int(self._offsets[-1]), self._dtype)
        return self._gbuf[start:stop]

    def _step(self, work) -> None:
        dt = self._dtype.type
        if self.loss_scale_factor is not None:
            inv = dt(1.0) / dt(self.loss_scale_factor)
            work = [(c, self._into_scratch(K.scale_into, c, g, inv)) for c, g in work]
        n_acc = self.gradient_accumulation_steps
        if n_acc:
            if (self._iterations + 1) % n_acc != 0:
                for c, g in work:
                    K.accumulate(self._acc[c[0] : c[1]], g)
                self._finish_step()
                return
            work = [(c, self._into_scratch(K.average_into, c, g, self._acc[c[0] : c[1]], dt(n_acc))) for c, g in work]
        work = self._clip(work, dt)
        lr = self._current_learning_rate()
        fused = self._apply_weight_decay(work, lr, dt)
        step = self.iterations + 1
        self.begin_step(step, self._dtype)
        lr_t = dt(lr)
        for ((_, _, param, state, seg), g), decay in zip(work, fused):
            if decay is None:
                self.update(param, g, state, lr_t, step, seg)
            else:
                self.update(param, g, state, lr_t, step, seg, decay=decay)
        self._finish_step()

    def _into_scratch(self, fn, chunk, g, *args):
        out = self._scratch(chunk[0], chunk[1])
        fn(out, g, *args)
        return out

    def _clip(self, work, dt):
        if self.clipnorm is not None:
            c = dt(self.clipnorm)
            out = []
            for chunk, g in work:
                dst = self._scratch(chunk[0], chunk[1])
                seg = chunk[4]
                for k in range(len(seg)):
                    a, b = seg.offsets[k], seg.offsets[k + 1]
                    l2 = dt(np.sqrt(dt(K.sumsq(g[a:b]))))
                    K.mul_div_into(dst[a:b], g[a:b], c, max(l2, c))
                out.append((chunk, dst))
            return out
        if self.global_clipnorm is not None:
            total = sum(K.sumsq(g) for _, g in work)
            norm = np.sqrt(dt(total))
            c = dt(self.global_clipnorm)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = c * min(dt(1.0) / norm, dt(1.0) / c) + (norm - norm)
            return [(chunk, self._into_scratch(K.scale_into, chunk, g, dt(scale))) for chunk, g in work]
        if self.clipvalue is not None:
            v = dt(self.clipvalue)
            return [(chunk, self._into_scratch(K.clip_into, chunk, g, v)) for chunk, g in work]
        return work

    def _apply_weight_decay(self, work, lr, dt) -> list:
        """Decay the parameters of each work item; returns, per item, the decay left to a
        ``fuses_weight_decay`` update rule (one rate for the whole chunk), else None."""
        fused = [None] * len(work)
        rates = self._decay_rates()
        if rates is None:
            return fused
        fuse = self._fuses_decay()
        for n, ((_, _, param, _, seg), _) in enumerate(work):
            idx = seg.indices
            chunk_rates = [rates[i] for i in idx]
            if all(r == chunk_rates[0] for r in chunk_rates):
                if chunk_rates[0]:
                    c = dt(chunk_rates[0]) * dt(lr)
                    if fuse:
                        fused[n] = c
                    else:
                        K.decay(param, c)
                continue
            for k, r in enumerate(chunk_rates):
                if r:
                    K.decay(param[seg.offsets[k] : seg.offsets[k + 1]], dt(r) * dt(lr))
        return fused

    def _decay_rates(self):
        if type(self).weight_decay_rate is Optimizer.weight_decay_rate and self.weight_decay is None:
            return None
        rates = [self.weight_decay_rate(s) for s in self._shapes]
        for i in self._exclude_wd:
            rates[i] = None
        return None if not any(rates) else rates

    def _finish_step(self) -> None:
        if self.use_ema:
            self._update_ema()
        self._iterations += 1

    def _update_ema(self) -> None:
        dt = self._dtype.type
        m = dt(0.0) if self.iterations == 0 else dt(self.ema_momentum)
        one_minus = dt(1) - m
        for start, stop, param, _, _ in self._plan.chunks:
            K.ema(self._ema[start:stop], param, m, one_minus)
        freq = self.ema_overwrite_frequency
        if freq and (self.iterations + 1) % freq == 0:
            self.finalize_variable_values()

    def finalize_variable_values(self, var_list=None) -> None:
        """Write the moving average into the parameters (when ``use_ema``)."""
        if not self.use_ema or not self._built:
            return
        if var_list is None:
            for start, stop, param, _, _ in self._plan.chunks:
                param[...] = self._ema[start:stop]
            return
        for k, p in enumerate(var_list):
            p.reshape(-1)[...] = self._ema[self._offsets[k] : self._offsets[k + 1]]

    @property
    def ema_weights(self) -> list[np.ndarray] | None:
        """Views of the moving average, shaped like the parameters (None without EMA)."""
        if not self.use_ema or not self._built:
            return None
        return [self._ema[self._offsets[k] : self._offsets[k + 1]].reshape(s) for k, s in enumerate(self._shapes)]

    # -- config ----------------------------------------------------------------
    def get_config(self) -> dict:
        config = super().get_config()
        lr = self._lr
        if hasattr(lr, "get_config"):
            config["learning_rate"] = lr.get_config()
        else:
            config["learning_rate"] = self._current_learning_rate()
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        lr = config.get("learning_rate")
        if isinstance(lr, dict):
            from .. import schedules

            config["learning_rate"] = schedules.get(lr)
        return super().from_config(config)

    # -- state -----------------------------------------------------------------
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The full state as (JSON-able metadata, named arrays): enough to resume bit for bit."""
        meta = {
            "format": STATE_FORMAT,
            "optimizer": self.registry_name,
            "config": self.get_config(),
            "raw_iterations": self._iterations,
            "built": self._built,
        }
        arrays: dict[str, np.ndarray] = {}
        if self._built:
            meta["shapes"] = [list(s) for s in self._shapes]
            meta["dtype"] = self._dtype.name
            meta["scalars"] = {k: float(v) for k, v in self._scalars.items()}
            for name, buf in self._slots.items():
                arrays[f"slot/{name}"] = buf
            if self._ema is not None:
                arrays["ema"] = self._ema
            if self._acc is not None:
                arrays["accumulator"] = self._acc
        return meta, arrays

    def set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restore what ``get_state`` returned (into an optimizer of the same kind and options)."""
        owner = type(self).__name__
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{owner}: not an optlab optimizer state (format {meta.get('format')!r})")
        if meta["optimizer"] != self.registry_name:
            raise ValueError(f"{owner}: the state is of optimizer {meta['optimizer']!r}, not {self.registry_name!r}")
        if meta["built"]:
            self._allocate([tuple(s) for s in meta["shapes"]], meta["dtype"])
            expected = {f"slot/{n}" for n in self._slots}
            expected |= {"ema"} if self._ema is not None else set()
            expected |= {"accumulator"} if self._acc is not None else set()
            if set(arrays) != expected:
                raise ValueError(
                    f"{owner}: the state holds {sorted(arrays)} but this optimizer's options need {sorted(expected)}"
                )
            for name in self._slots:
                self._slots[name][...] = arrays[f"slot/{name}"]
            if self._ema is not None:
                self._ema[...] = arrays["ema"]
            if self._acc is not None:
                self._acc[...] = arrays["accumulator"]
            self._scalars = {k: float(v) for k, v in meta["scalars"].items()}
        else:
            self._built = False
        self._iterations = int(meta["raw_iterations"])
        lr = meta["config"]["learning_rate"]
        if not isinstance(lr, dict) and not callable(self._lr):
            self._lr = float(lr)

    def save_state(self, path) -> None:
        """Write the state to ``path`` (``.npz``: arrays plus JSON metadata, no pickle), atomically."""
        meta, arrays = self.get_state()
        save_npz_atomic(path, meta, arrays)

    def load_state(self, path) -> None:
        """Restore a state written by ``save_state``."""
        meta, arrays = load_npz(path)
        self.set_state(meta, arrays)

    def traffic(self) -> int:
        """Parameter-sized arrays one step reads plus writes (for bandwidth figures).

        The update rule's own count (``3 + 2 *`` parameter-shaped slots unless the class sets
        ``traffic_per_element``) plus the generic passes in use: weight decay reads and writes
        the parameters (2, unless the rule fuses it), the EMA reads the average and the parameters
        and writes the average (3).
        """
        if self.traffic_per_element is not None:
            own = self.traffic_per_element
        else:
            specs = self._slot_specs if self._built else self._specs()
            own = 3 + 2 * sum(1 for s in specs.values() if s.size is None)
        if self.weight_decay and not self._fuses_decay():
            own += 2
        if self.use_ema:
            own += 3
        return own

    def _specs(self):
        return {k: (v if isinstance(v, Slot) else Slot(v)) for k, v in self.slots().items()}


def _positional_arity(fn) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 0
    return sum(
        1
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


def save_npz_atomic(path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and JSON ``meta`` to one ``.npz`` file via a temporary file and rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a file written by ``save_npz_atomic`` (never unpickles)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["__meta__"]).decode("utf-8"))
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
    return meta, arrays
