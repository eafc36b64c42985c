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
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import is_
from typing import ClassVar

import numpy as np

from .. import files
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
        self._plan: _Plan | None = None
        self._grad_cache: tuple[list, np.ndarray | None] | None = None
        self._exclude_wd: set[int] = set()  # resolved when a plan is made
        self._exclude_wd_indices: set[int] = set()
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
        indices = list(indices or ())
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"exclude_from_weight_decay: indices must be integers; received {i!r}")
        self._exclude_wd_indices = {int(i) for i in indices}
        self._exclude_wd_arrays = list(var_list or ())

    def build(self, params) -> None:
        """Create the state for ``params`` (done by the first ``apply``).

        As in Keras, ``build([])`` builds an optimizer on no parameters (its empty steps are
        no-ops), and a built optimizer updates the parameters it was built for: later calls
        pass those arrays (or others of the same shapes and dtype), never other parameters.
        """
        params = list(params)
        self._check_params(params)  # everything is checked before anything is replaced
        dtype = params[0].dtype if params else np.dtype(np.float32)
        state = self._new_state([p.shape for p in params], dtype)
        for name, slot in state["_slot_specs"].items():
            if slot.init == "param":
                buf, offsets = state["_slots"][name], state["_offsets"]
                for k, p in enumerate(params):
                    buf[offsets[k] : offsets[k + 1]] = p.reshape(-1)
        self.__dict__.update(state)
        self._plan = self._make_plan(params)

    def _check_params(self, params):
        owner = type(self).__name__
        dtype = params[0].dtype if params and isinstance(params[0], np.ndarray) else None
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{owner}: parameter {i} is a {type(p).__name__}, not a numpy array")
            if p.dtype not in (np.float32, np.float64):
                raise TypeError(f"{owner}: parameter {i} has dtype {p.dtype}; float32 and float64 are supported")
            if p.dtype != dtype:
                raise TypeError(f"{owner}: parameter {i} has dtype {p.dtype} but parameter 0 has {dtype}")
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"{owner}: parameter {i} must be a writeable C-contiguous array (updated in place)")
        overlap = _first_overlap(params)
        if overlap is not None:
            i, j = overlap
            raise ValueError(
                f"{owner}: parameters {i} and {j} share memory (the same array twice, or overlapping views of "
                "one buffer): each would be updated twice, with separate state; pass every parameter once"
            )
        n = len(params)
        bad = sorted(i for i in self._exclude_wd_indices if not -n <= i < n)
        if bad:
            raise ValueError(
                f"{owner}: exclude_from_weight_decay(indices=...) names parameter(s) {bad}, "
                f"but there are {n} parameters (allowed: 0 to {n - 1}, or -{n} to -1)"
            )

    def _new_state(self, shapes, dtype, source: dict | None = None) -> dict:
        """The attributes of a built optimizer for parameters of ``shapes``, made on the side.

        Nothing of ``self`` changes; the caller installs the result at once. Buffers hold the
        slots' initial values, or, with ``source`` (named arrays as ``get_state`` gives them),
        copies of those arrays after checking their names, dtypes and exact sizes.
        """
        dtype = np.dtype(dtype)
        shapes = [tuple(int(d) for d in s) for s in shapes]
        offsets = _offsets([math.prod(s) for s in shapes])
        n = int(offsets[-1])
        specs = self._specs()
        slot_offsets: dict[str, np.ndarray] = {}
        expected: dict[str, tuple[int, float]] = {}  # array name -> (elements, initial value)
        for name, slot in specs.items():
            so = offsets if slot.size is None else _offsets([int(slot.size(s)) for s in shapes])
            slot_offsets[name] = so
            expected[f"slot/{name}"] = (int(so[-1]), 0.0 if slot.init == "param" else slot.init)
        if self.use_ema:
            expected["ema"] = (n, 0.0)
        if self.gradient_accumulation_steps:
            expected["accumulator"] = (n, 0.0)
        if source is None:
            buffers = {key: np.full(size, init, dtype=dtype) for key, (size, init) in expected.items()}
        else:
            buffers = self._copies_of(source, {key: size for key, (size, _) in expected.items()}, dtype)
        needs_scratch = (
            self.loss_scale_factor is not None
            or self.gradient_accumulation_steps
            or self.clipnorm is not None
            or self.clipvalue is not None
            or self.global_clipnorm is not None
        )
        return {
            "_shapes": shapes,
            "_offsets": offsets,
            "_dtype": dtype,
            "_slot_specs": specs,
            "_slots": {name: buffers[f"slot/{name}"] for name in specs},
            "_slot_offsets": slot_offsets,
            "_ema": buffers.get("ema"),
            "_acc": buffers.get("accumulator"),
            "_gbuf": np.empty(n, dtype) if needs_scratch else None,
            "_scalars": {},
            "_plan": None,
            "_grad_cache": None,
            "_built": True,
        }

    def _copies_of(self, source: dict, sizes: dict[str, int], dtype: np.dtype) -> dict[str, np.ndarray]:
        """Copies of the state arrays ``source``, which must be exactly ``sizes`` (name -> elements) in ``dtype``."""
        owner = type(self).__name__
        missing = sorted(set(sizes) - set(source))
        unexpected = sorted(set(source) - set(sizes))
        if missing or unexpected:
            detail = "; ".join(
                part
                for part in (f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "")
                if part
            )
            raise ValueError(
                f"{owner}: the state holds {sorted(source)} but this optimizer's options need {sorted(sizes)} "
                f"({detail})"
            )
        out = {}
        for key, size in sizes.items():
            a = source[key]
            if not isinstance(a, np.ndarray):
                raise self._invalid_state(f"{key!r} is a {type(a).__name__}, not a numpy array")
            if a.dtype != dtype:
                raise self._invalid_state(f"array {key!r} has dtype {a.dtype}; the state's dtype is {dtype}")
            if a.shape != (size,):
                raise self._invalid_state(
                    f"array {key!r} has shape {a.shape}; the state's parameter shapes need ({size},)"
                )
            out[key] = np.array(a, dtype=dtype, copy=True)
        return out

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
        """Check ``params`` against what the optimizer was built for and lay out one step (not per step)."""
        owner = type(self).__name__
        if len(params) != len(self._shapes):
            raise ValueError(
                f"{owner} was built for {len(self._shapes)} parameters, received {len(params)} (an optimizer "
                "keeps updating the parameters it was built for; create a new one for other parameters)"
            )
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
        n = len(params)
        excluded = {i % n for i in self._exclude_wd_indices}
        for a in self._exclude_wd_arrays:
            excluded.update(i for i, p in enumerate(params) if p is a)
        self._exclude_wd = excluded
        return _Plan(list(params), chunks, flat)

    # -- one step --------------------------------------------------------------
    def apply_gradients(self, grads_and_vars: Iterable) -> int:
        """Apply one step from ``(gradient, parameter)`` pairs; returns ``iterations``."""
        pairs = list(grads_and_vars)
        for i, item in enumerate(pairs):
            if type(item) is not tuple or len(item) != 2:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise TypeError(
                        f"{type(self).__name__}.apply_gradients expects (gradient, parameter) pairs, "
                        f"e.g. zip(grads, params); item {i} is {_describe(item)}"
                    )
        grads = [g for g, _ in pairs]
        params = [p for _, p in pairs]
        self.apply(grads, params)
        return self.iterations

    def apply(self, grads, params=None) -> None:
        """Apply one step. ``params`` defaults to those the optimizer was built with.

        An empty call does nothing on an optimizer built on no parameters (as in Keras) and is
        an error otherwise: an empty list is almost always an iterator consumed by an earlier call.
        """
        grads = list(grads)
        if params is None:
            if not self._built or self._plan is None:
                raise ValueError(
                    f"{type(self).__name__}.apply(grads) without parameters needs an optimizer built on them "
                    "(by build(params) or an earlier apply(grads, params)); pass apply(grads, params)"
                )
            params = self._plan.params
        else:
            params = list(params)
        if (not grads or not params) and self._nothing_to_apply(grads, params):
            return
        if not self._built:
            self.build(params)
        plan = self._plan
        if plan is None or len(params) != len(plan.params) or not all(map(is_, params, plan.params)):
            plan = self._plan = self._make_plan(params)
            self._grad_cache = None
        work = self._gradient_chunks(plan, grads)
        self._step(work)

    def _nothing_to_apply(self, grads: list, params: list) -> bool:
        """An empty call: a no-op for an optimizer built on no parameters (as in Keras), else an error."""
        owner = type(self).__name__
        if not grads and not params:
            if self._built and not self._shapes:
                return True  # Keras: an empty step does nothing and is not counted
            if self._built:
                built = f"it was built for {len(self._shapes)} parameters"
            else:
                built = "it is not built yet; build([]) builds an optimizer on no parameters"
            raise ValueError(
                f"{owner} received no gradients and no parameters ({built}): the iterable was empty. "
                "A zip can be iterated only once: pass a new zip(grads, params) at every step"
            )
        if not grads:
            raise ValueError(
                f"{owner} received no gradients for {len(params)} parameters: the gradient iterable was empty "
                "(an iterator can be consumed only once)"
            )
        raise ValueError(f"{owner} received {len(grads)} gradients but no parameters: the parameter iterable was empty")

    def _gradient_chunks(self, plan: _Plan, grads):
        """Pair each chunk of the plan with its flat gradient; validates the gradients."""
        owner = type(self).__name__
        cache = self._grad_cache
        if (
            cache is not None
            and len(grads) == len(cache[0])
            and all(map(is_, grads, cache[0]))
            and _same_layout(grads, self._shapes, self._dtype)
        ):
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
            if self._plan is None:
                raise ValueError(
                    f"{type(self).__name__}.finalize_variable_values(): pass var_list (the parameters); this "
                    "optimizer has not been given its parameters since its state was loaded"
                )
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
        """The full state as (JSON-able metadata, named arrays): enough to resume bit for bit.

        The arrays are the live buffers (not copies): save or copy them before the next step.
        """
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

    def set_state(self, meta: dict, arrays: dict[str, np.ndarray], *, restore_learning_rate: bool = False) -> None:
        """Restore what ``get_state`` returned (into an optimizer of the same kind and options).

        A transaction: everything is read and validated first — format, optimizer name, step
        count, the saved config (with the constructor's own validators), parameter shapes, dtype
        (float32 / float64), every array's name, dtype and exact size (no broadcasting), the
        scalars — then new buffers are built on the side and swapped in at once. On any error
        the optimizer is left exactly as it was. The arrays are copied. Slot values are not
        checked for finiteness: the state of a run that diverged is still its state.

        The optimizer keeps its own hyperparameters, as its user configured them; the state
        brings slots, counters, the EMA and the accumulator. The learning rate: a schedule or
        a callable keeps governing; a constant is kept too, and a different saved rate is
        ignored with a warning, unless ``restore_learning_rate=True``, which takes the saved
        rate (``BackupAndRestore`` does: a callback such as ``ReduceLROnPlateau`` may have
        changed the rate during the run it resumes).
        """
        if not isinstance(meta, dict):
            raise self._invalid_state(f"the metadata is a {type(meta).__name__}, not a dict")
        owner = type(self).__name__
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{owner}: not an optlab optimizer state (format {_short(meta.get('format'))})")
        if meta.get("optimizer") != self.registry_name:
            raise ValueError(
                f"{owner}: the state is of optimizer {_short(meta.get('optimizer'))}, not {self.registry_name!r}"
            )
        if not isinstance(arrays, dict):
            raise self._invalid_state(f"the arrays are a {type(arrays).__name__}, not a dict")
        raw = meta.get("raw_iterations")
        if not _is_int(raw) or raw < 0:
            raise self._invalid_state(f"`raw_iterations` must be an integer >= 0; received {_short(raw)}")
        built = meta.get("built")
        if not isinstance(built, bool):
            raise self._invalid_state(f"`built` must be True or False; received {_short(built)}")
        lr, notes = self._config_from_state(meta.get("config"), restore_learning_rate)
        if built:
            state = self._built_state_from(meta, arrays)
        elif arrays:
            raise self._invalid_state(f"the state is of an unbuilt optimizer but holds arrays {sorted(arrays)}")
        else:
            state = {"_built": False, "_plan": None, "_grad_cache": None}
        state["_iterations"] = int(raw)
        state["_lr"] = lr
        for note in notes:
            warnings.warn(note, stacklevel=2)
        self.__dict__.update(state)  # the swap: one dict update, after everything has passed

    def _invalid_state(self, what: str) -> ValueError:
        return ValueError(f"{type(self).__name__}: invalid optimizer state: {what}")

    def _config_from_state(self, config, restore_learning_rate: bool) -> tuple[object, list[str]]:
        """Validate the saved config; returns the learning rate to install and the warnings to give."""
        owner = type(self).__name__
        if not isinstance(config, dict):
            raise self._invalid_state(f"`config` must be a dict; received {_short(config)}")
        if "learning_rate" not in config:
            raise self._invalid_state("its config has no `learning_rate`")
        for key, value in config.items():
            hyper = self._hypers.get(key)
            if hyper is not None and key != "learning_rate":
                hyper.validate(value, f"{owner} state")  # the constructor's own check and message
        saved_n = config.get("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if saved_n != self.gradient_accumulation_steps:
            raise self._invalid_state(
                f"it was saved with gradient_accumulation_steps={saved_n}, this optimizer has "
                f"{self.gradient_accumulation_steps} (the step count and the accumulator depend on it)"
            )
        saved, live = config["learning_rate"], self._lr
        if isinstance(saved, dict):
            from .. import schedules

            try:
                saved_config = schedules.get(saved).get_config()
            except (ValueError, TypeError) as error:
                raise self._invalid_state(f"its learning-rate schedule is invalid: {error}") from None
            if not callable(live):
                return live, [
                    f"{owner}: the state was saved with a learning-rate schedule ({saved_config.get('name')}); "
                    f"this optimizer's own learning_rate={live!r} is kept"
                ]
            if hasattr(live, "get_config") and live.get_config() != saved_config:
                return live, [
                    f"{owner}: the state was saved with the learning-rate schedule {saved_config}; this "
                    f"optimizer's own {live.get_config()} is kept"
                ]
            return live, []
        if callable(saved):
            raise self._invalid_state(
                f"its `learning_rate` must be a number or a schedule config; received {_short(saved)}"
            )
        value = type(self)._hypers["learning_rate"].validate(saved, f"{owner} state")
        if callable(live) or value == live:
            return live, []  # a schedule or callable keeps governing
        if restore_learning_rate:
            return value, []
        return live, [
            f"{owner}: the state was saved with learning_rate={value!r}; this optimizer's own "
            f"learning_rate={live!r} is kept (restore_learning_rate=True restores the saved one)"
        ]

    def _built_state_from(self, meta: dict, arrays: dict) -> dict:
        shapes = meta.get("shapes")
        if not (
            isinstance(shapes, (list, tuple))
            and all(isinstance(s, (list, tuple)) and all(_is_int(d) and d >= 0 for d in s) for s in shapes)
        ):
            raise self._invalid_state(f"`shapes` must be a list of lists of integers >= 0; received {_short(shapes)}")
        if sum(math.prod(s) for s in shapes) >= 2**62:
            raise self._invalid_state(f"`shapes` describe more elements than any array can hold: {_short(shapes)}")
        dtype = meta.get("dtype")
        if dtype not in ("float32", "float64"):
            raise self._invalid_state(f"`dtype` must be 'float32' or 'float64'; received {_short(dtype)}")
        scalars = meta.get("scalars")
        if not isinstance(scalars, dict):
            raise self._invalid_state(f"`scalars` must be a dict of finite floats; received {_short(scalars)}")
        for key, value in scalars.items():
            if not isinstance(key, str) or not _is_number(value) or not math.isfinite(value):
                raise self._invalid_state(f"scalar {_short(key)} must be a finite float; received {_short(value)}")
        state = self._new_state(shapes, dtype, source=arrays)
        state["_scalars"] = {k: float(v) for k, v in scalars.items()}
        return state

    def save_state(self, path) -> None:
        """Write the state to ``path`` (``.npz``: arrays plus JSON metadata, no pickle), atomically."""
        meta, arrays = self.get_state()
        files.save_npz_atomic(path, meta, arrays)

    def load_state(self, path, *, restore_learning_rate: bool = False) -> None:
        """Restore a state written by ``save_state``, as ``set_state`` does (a transaction).

        A file that is missing, unreadable, corrupt, not optlab's, or whose state does not fit
        this optimizer raises ``optlab.files.StateFileError`` (a ``ValueError``) naming the file;
        the optimizer is then unchanged. The learning rate follows ``set_state``: the
        optimizer's own is kept unless ``restore_learning_rate=True``.
        """
        meta, arrays = files.load_npz(path)
        try:
            self.set_state(meta, arrays, restore_learning_rate=restore_learning_rate)
        except ValueError as error:
            raise files.StateFileError(f"{os.fspath(path)}: {error}") from None

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


def _offsets(sizes) -> np.ndarray:
    """``[0, s0, s0 + s1, ...]`` as int64: where each of consecutive blocks of ``sizes`` starts."""
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.asarray(sizes, dtype=np.int64), out=out[1:])
    return out


def _first_overlap(params) -> tuple[int, int] | None:
    """The positions ``(i, j)`` of two parameters that share memory, or None.

    Parameters are C-contiguous (checked first), so each one's memory is exactly
    ``[address, address + nbytes)``: sorting these spans finds any overlap in n log n.
    """
    spans = []
    for i, p in enumerate(params):
        if p.nbytes:
            start = p.__array_interface__["data"][0]
            spans.append((start, start + p.nbytes, i))
    spans.sort()
    reach, owner = -1, -1
    for start, stop, i in spans:
        if start < reach:
            return (min(owner, i), max(owner, i))
        if stop > reach:
            reach, owner = stop, i
    return None


def _same_layout(grads, shapes, dtype) -> bool:
    """Whether cached gradient arrays still have the shapes and dtype they were validated with.

    The same array objects can change in place (``g.shape = ...``, ``g.dtype = ...``), so the
    identity cache is not enough; a mismatch (or a dtype that is equal but not the same object)
    sends the caller to the full validation, which reports it.
    """
    for g, shape in zip(grads, shapes):
        if g.shape != shape or g.dtype is not dtype:
            return False
    return True


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _short(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a bad state can hold anything, of any size)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(item) -> str:
    if isinstance(item, np.ndarray):
        return f"an ndarray of shape {item.shape}"
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of {len(item)} items"
    return f"a {type(item).__name__}"
