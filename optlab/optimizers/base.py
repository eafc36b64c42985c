"""The optimizer base class: Keras 3's step around a subclass's update rule.

A subclass declares its hyperparameters (``Hyper``), its state — ``slots()`` (arrays) and
``scalar_slots()`` (floats shared by all parameters) — and one method,
``update(param, grad, state, lr, step, seg)``, which runs its numba kernel over flat arrays.
The base class owns the rest, and one call of ``apply`` runs it in Keras 3's order
(``BaseOptimizer.apply``):

1. the learning rate, evaluated once (a schedule at the raw call count, accumulating calls
   included) and kept as ``applied_learning_rate``;
2. unscale by ``loss_scale_factor``;
3. with ``gradient_accumulation_steps = N``: add the gradient to the accumulator; on every
   N-th call use ``(g + acc) / N`` and reset, otherwise skip to 7;
4. clip (``clipnorm`` per tensor, ``global_clipnorm``, or ``clipvalue``);
5. decoupled weight decay ``p <- p - p * weight_decay * lr`` (in the update rule's own pass
   when its ``update`` takes a ``decay`` argument);
6. the update rule, with ``step = iterations + 1`` (``begin_step`` first);
7. EMA ``avg <- m * avg + (1 - m) * p`` (``m = 0`` while ``iterations == 0``), copied into
   the parameters every ``ema_overwrite_frequency`` steps;
8. count the call (``iterations`` counts applied updates: calls // N).

Where the state lives and how a step walks the parameters: ``layout.py``; the state as data
and its validated loading: ``state.py``; files: ``optlab.files``.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from .. import files
from .. import kernels as K
from ..hparams import DERIVED, Configurable, Hyper
from ..inplace import Pieces
from ..names import auto_name
from ..sparse import Densified, IndexedSlices, rows_of
from . import state as _state
from .layout import Layout, Plan, Segments, Slot, check_parameters, count_of, mismatch
from .selection import Choice, in_order, is_mapping, label, named


def _schedule_text(schedule) -> str:
    """A schedule as the user knows it: its registered name and arguments, or the callable's name."""
    config = getattr(schedule, "get_config", None)
    if callable(config):
        arguments = ", ".join(f"{k}={v!r}" for k, v in config().items() if k != "name")
        return f"{getattr(schedule, 'registry_name', type(schedule).__name__)}({arguments})"
    return getattr(schedule, "__name__", None) or repr(schedule)


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
    """The ``learning_rate`` argument: a float >= 0, a schedule (instance or config), or a callable.

    A callable takes the step (``step -> float``, as schedules do) or nothing. Reading
    ``opt.learning_rate`` gives the rate the next step will use, as a float (a schedule
    evaluated at the current call count), as in Keras.
    """

    def __init__(self, default: float):
        super().__init__(default, low=0.0, doc="step size")

    def allowed(self) -> str:
        return "a float >= 0, a learning-rate schedule (or its config), or a callable"

    def validate(self, value, owner=""):
        if isinstance(value, dict):
            from .. import schedules

            return schedules.get(value)
        if callable(value):
            return value
        return super().validate(value, owner)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj._rate()

    def __set__(self, obj, value):
        obj._set_learning_rate(self.validate(value, type(obj).__name__))


class Optimizer(Configurable):
    """Base class of all optimizers (Keras 3's ``keras.optimizers.Optimizer``).

    Generic arguments, shared by every optimizer:

    - ``learning_rate``: float, schedule (``step -> float``, or its config) or callable.
    - ``weight_decay``: decoupled decay ``p <- p - p * weight_decay * lr`` before the update.
    - ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``: at most one; clip each
      gradient's L2 norm, each element, or the norm of all gradients together.
    - ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``: exponential
      moving average of the weights, written into them every N steps.
    - ``loss_scale_factor``: gradients are divided by it first.
    - ``gradient_accumulation_steps``: update every N calls with the mean gradient.
    - ``name``: a label (Keras's): it does not choose the optimizer. By default the class name in
      snake case, unique in the process as in Keras (``adam``, ``adam_1``, ``adam_w``, ``rm_sprop``).
      ``get_config()`` writes it and ``from_config`` restores it.
    """

    #: ``name`` is a label, kept by ``get_config``/``from_config`` (the registry name selects the class)
    labelled: ClassVar[bool] = True

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

    #: arrays read + written per parameter element by one step (None: 3 + 2 * param-shaped slots);
    #: for the benchmark's bandwidth figures (``optlab.bench.traffic``)
    traffic_per_element: ClassVar[int | None] = None
    #: whether ``update`` applies the decoupled weight decay itself, in its own pass over memory.
    #: Derived, not declared: true when the class's ``update`` takes a ``decay`` argument. It then
    #: receives ``decay=c`` (``c = weight_decay * lr``, in the parameters' dtype) whenever one rate
    #: applies to the whole call, and must compute ``p - p * c`` before its own step, bit for bit
    #: what the separate pass would; a subclass overriding ``update`` without ``decay`` does not fuse.
    fuses_weight_decay: ClassVar[bool] = False
    #: whether the rule is element-wise: ``update`` hands ``param`` and ``grad`` only to
    #: ``@kernel(elementwise=True)`` functions, as their first two arguments, and reads nothing of
    #: them but ``param.dtype`` and ``param.shape``. Separate arrays can then be read where they
    #: are (``optlab.inplace``): ``grad`` may come as ``Pieces`` (flat parameters, separate
    #: gradients), and ``param`` too (separate parameters), one call covering every parameter.
    #: Declared by the class that writes ``update``: a subclass overriding it without declaring it
    #: again gets one flat array per call, as any rule may.
    elementwise_update: ClassVar[bool] = False
    #: derived too: the class overrides ``weight_decay_rate`` / ``begin_step`` (read at every step)
    _decay_by_rule: ClassVar[bool] = False
    _begins_steps: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        declared = cls.__dict__.get("learning_rate")
        if isinstance(declared, Hyper) and not isinstance(declared, LearningRate):
            # the natural declaration `learning_rate = Hyper(0.01)`: only its default is the
            # subclass's own; the rate (float, schedule or callable) is the base class's descriptor
            default = declared.default
            if declared.required or not isinstance(default, (int, float)) or isinstance(default, bool):
                received = "it has none" if declared.required else f"received {declared.default!r}"
                raise TypeError(
                    f"{cls.__name__}.learning_rate must have a float default; write "
                    f"`learning_rate = optlab.optimizers.LearningRate(0.01)` ({received})"
                )
            rate = LearningRate(float(declared.default))
            rate.doc = declared.doc or rate.doc
            cls.learning_rate = rate
            rate.__set_name__(cls, "learning_rate")
        super().__init_subclass__(**kwargs)
        cls.fuses_weight_decay = "decay" in inspect.signature(cls.update).parameters
        if "update" in cls.__dict__ and "elementwise_update" not in cls.__dict__:
            cls.elementwise_update = False  # (a rule of its own: it says so itself if it may)
        cls._decay_by_rule = cls.weight_decay_rate is not Optimizer.weight_decay_rate
        cls._begins_steps = cls.begin_step is not Optimizer.begin_step
        declared = cls.__dict__.get("search_space")
        if declared:  # (a study was the first to say a space naming no hyperparameter, or ends it refuses)
            from ..spaces import check_space

            try:
                check_space(cls, dict(declared))
            except ValueError as error:
                raise TypeError(f"{cls.__name__}.search_space: {error}") from None

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
        self._learning_rate = None  # as given: a float, a schedule or a callable
        self._iterations = 0  # calls of apply, accumulating ones included
        self._layout: Layout | None = None
        self._plan: Plan | None = None
        # parameters chosen before the build (by array, name or position), resolved when a plan is made
        self._exclude_wd_choice = Choice()
        self._exclude_wd: set[int] = set()
        self._constraint_choices: list[tuple[Choice, object]] = []
        self._constraints: dict[int, object] = {}
        self._overwrite_choice = Choice()
        self._overwrite: list[int] = []
        self._densified: dict = {}  # per parameter, the buffer a sparse gradient is made dense in
        self._by_row: tuple | None = None  # (what decided it, [parameter i steps a sparse gradient by row])
        self._row_views: tuple | None = None  # (plan, slots, {i: (parameter, its slots) as row tables})
        self._typed_lr: tuple | None = None  # (rate, dtype, the rate in that dtype): see _typed_rate
        #: the learning rate the latest call of ``apply`` evaluated and its update used (None before)
        self.applied_learning_rate: float | None = None
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
        if name is not None and not isinstance(name, str):
            owner = type(self).__name__
            raise ValueError(f"{owner}: `name` must be a string (a label) or None; received name={name!r}")
        self.name = name or auto_name(type(self).__name__)
        self.check()

    # -- the part a subclass writes --------------------------------------------
    def check(self) -> None:
        """Cross-argument validation beyond each argument's declared range (optional)."""

    def slots(self) -> dict[str, Slot | float | str]:
        """State slots: name -> ``Slot`` (or its ``init`` alone for a parameter-shaped slot)."""
        return {}

    def scalar_slots(self) -> dict[str, float]:
        """Scalar state shared by all parameters: name -> initial value (optional).

        The live values are ``self.scalars`` (Python floats, so float64, whatever the parameters'
        dtype), made when the optimizer is built, advanced by ``begin_step``, read by ``update``,
        and saved and restored with the state like the slots (Nadam's product of momentum factors).
        """
        return {}

    def begin_step(self, step: int, dtype: np.dtype) -> None:
        """Called once per applied update, before ``update`` (for state shared by all parameters)."""

    def update(self, param, grad, state: dict, lr, step: int, seg: Segments) -> None:
        """Update ``param`` in place from ``grad`` (flat arrays, one or many parameters).

        ``state`` maps slot names to flat arrays matching ``param``; ``lr`` is the
        learning rate as a scalar of the parameters' dtype; ``step`` is
        ``iterations + 1``; ``seg`` describes the parameters covered. A rule that also
        takes ``decay=None`` fuses the weight decay (see ``fuses_weight_decay``).
        """
        raise NotImplementedError

    def weight_decay_rate(self, shape: tuple, name: str | None = None) -> float | None:
        """The decoupled weight decay applied to a parameter of this shape and name (None: unnamed).

        A function of the shape, the name and the hyperparameters: it is asked once per parameter,
        and again only after a hyperparameter is set or the optimizer is built again."""
        return self.weight_decay

    def updates_rows_alone(self) -> bool:
        """True if ``update`` leaves a row with a zero gradient, and its slots, exactly as they are,
        and treats rows independently (SGD without momentum, Adagrad): a sparse gradient
        (:class:`~optlab.sparse.IndexedSlices`) then updates only its rows. Otherwise it is applied
        as the dense gradient it stands for (the same numbers, at a dense step's cost)."""
        return False

    # -- learning rate ---------------------------------------------------------
    def _set_learning_rate(self, value) -> None:
        from ..schedules import LearningRateSchedule

        if isinstance(self._learning_rate, LearningRateSchedule) and not callable(value):
            raise TypeError(
                f"{type(self).__name__} was created with a learning-rate schedule, so its learning rate "
                "cannot be set to a number; set a new schedule, or create it with a float learning_rate"
            )
        self._learning_rate = value
        if not callable(value):
            self._rate_at = None
        elif isinstance(value, LearningRateSchedule) or _positional_arity(value) >= 1:
            self._rate_at = value
        else:  # Keras's zero-argument callable
            self._rate_at = lambda step: value()

    def _rate(self) -> float:
        """The learning rate at the current call: the constant, or the schedule at the raw call count."""
        rate_at = self._rate_at
        if rate_at is None:
            return self._learning_rate
        rate = float(rate_at(self._iterations))
        if not 0.0 <= rate < math.inf:  # NaN fails too: the schedule, not the optimizer, is the cause
            raise ValueError(
                f"{type(self).__name__}: the learning rate schedule {_schedule_text(self._learning_rate)} gave "
                f"{rate!r} at step {self._iterations}; a learning rate must be finite and >= 0"
            )
        return rate

    @property
    def learning_rate_schedule(self):
        """The schedule or callable behind the learning rate, or None for a constant."""
        return self._learning_rate if callable(self._learning_rate) else None

    # -- step counter ----------------------------------------------------------
    @property
    def iterations(self) -> int:
        """Applied updates (calls // gradient_accumulation_steps when accumulating)."""
        n = self.gradient_accumulation_steps
        return self._iterations // n if n else self._iterations

    @property
    def built(self) -> bool:
        return self._layout is not None

    # -- building --------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list=None, var_names=None, indices=None):
        """Exempt parameters from weight decay: given as the arrays themselves (``var_list``), by
        name (``var_names``: as in Keras, a parameter whose name contains a match of any of these
        regular expressions, ``re.search``; needs named parameters, see ``build``), or by position.
        Must be called before the optimizer is built, as in Keras."""
        self._before_build("exclude_from_weight_decay()")
        self._exclude_wd_choice = Choice(var_list, var_names, indices, "exclude_from_weight_decay")

    def add_constraint(self, constraint, var_list=None, var_names=None, indices=None):
        """Constrain the chosen parameters (as ``exclude_from_weight_decay`` chooses them) after
        every step: ``p[...] = constraint(p)``, after the update and the EMA, as Keras applies a
        variable's ``constraint``. ``constraint``: an ``optlab.constraints`` name, config or
        instance (Keras's ``NonNeg``, ``MaxNorm``, ``MinMaxNorm``, ``UnitNorm``), or any callable
        returning an array of the parameter's shape. One constraint per parameter."""
        from .. import constraints

        self._before_build("add_constraint()")
        fn = constraints.get(constraint)
        if fn is None:
            raise TypeError(f"{type(self).__name__}.add_constraint: a constraint is required; received None")
        self._constraint_choices.append((Choice(var_list, var_names, indices, "add_constraint"), fn))

    def overwrite_with_gradient(self, var_list=None, var_names=None, indices=None):
        """The chosen parameters take their gradient as their new value (Keras's variable flag
        ``overwrite_with_gradient``, used for float8 scaling factors): no loss scaling, clipping,
        decay, update, EMA or constraint applies to them, and their slots stay as they are. With
        ``gradient_accumulation_steps``, they take the element-wise maximum of the gradients
        over the accumulation, as Keras does."""
        self._before_build("overwrite_with_gradient()")
        self._overwrite_choice = Choice(var_list, var_names, indices, "overwrite_with_gradient")

    def _before_build(self, what: str) -> None:
        if self.built:
            raise ValueError(f"{what} can only be called before the optimizer is built")

    def build(self, params) -> None:
        """Create the state for ``params`` (done by the first ``apply``).

        As in Keras, ``build([])`` builds an optimizer on no parameters (its empty steps are
        no-ops), and a built optimizer updates the parameters it was built for: later calls
        pass those arrays (or others of the same shapes and dtype), never other parameters.
        A state loaded before the parameters were known is kept: ``params`` are checked against
        it (a state for other parameters raises, and nothing changes).
        """
        params, names = named(params, type(self).__name__)
        check_parameters(params, type(self).__name__)  # everything is checked before anything is replaced
        if self._layout is not None and not self._layout.params_known:
            self._plan = self._new_plan(self._layout, params, names)
            return
        layout = self._new_layout([p.shape for p in params], params[0].dtype if params else np.float32, names)
        layout.params_known = True
        plan = self._new_plan(layout.allocate(params), params)
        self._layout, self._plan, self.scalars = layout, plan, dict(self.scalar_slots())

    def _new_layout(self, shapes, dtype, names=None) -> Layout:
        specs = {k: (v if isinstance(v, Slot) else Slot(v)) for k, v in self.slots().items()}
        return Layout(
            shapes, dtype, specs, ema=self.use_ema, accumulator=bool(self.gradient_accumulation_steps), names=names
        )

    def _new_plan(self, layout: Layout, params: list, names=None) -> Plan:
        """Check ``params`` against the layout and lay out their steps (once, not per step)."""
        if not layout.params_known:  # a loaded state meets its parameters: say so if they differ
            check_parameters(params, type(self).__name__)
            dtype = params[0].dtype if params else layout.dtype
            difference = mismatch(layout, [p.shape for p in params], dtype, "the given", names)
            if difference:
                raise ValueError(
                    f"{type(self).__name__}: the loaded state does not fit these parameters: {difference} "
                    "(pass the parameters it was saved for, or load a state saved for these)"
                )
            if layout.names is None and names is not None:
                layout.name_parameters(names)
        owner = type(self).__name__
        excluded = self._exclude_wd_choice.resolve(params, layout.names, owner)
        overwrite = sorted(self._overwrite_choice.resolve(params, layout.names, owner))
        constraints: dict[int, object] = {}
        for choice, fn in self._constraint_choices:
            for i in sorted(choice.resolve(params, layout.names, owner)):
                if i in constraints:
                    raise ValueError(f"{owner}: parameter {label(layout, i)} has two constraints; give it one")
                constraints[i] = fn
        plan = Plan(layout, params, owner, in_place=self.elementwise_update)
        self._exclude_wd, self._overwrite = excluded, overwrite
        self._constraints = {i: fn for i, fn in constraints.items() if i not in overwrite}
        layout.params_known = True
        return plan

    # -- one step --------------------------------------------------------------
    def apply_gradients(self, grads_and_vars: Iterable) -> int:
        """Apply one step from ``(gradient, parameter)`` pairs; returns ``iterations``."""
        grads, params = [], []
        items = iter(grads_and_vars)  # (not made a list first: 0.2 us of a small step)
        for item in items:
            if type(item) is not tuple or len(item) != 2:
                pairs = [*zip(grads, params), item, *items]
                self._check_pairs(pairs)  # raises, unless every item is a pair (lists too)
                grads, params = [g for g, _ in pairs], [p for _, p in pairs]
                break
            grads.append(item[0])
            params.append(item[1])
        self.apply(grads, params)
        n = self.__dict__["gradient_accumulation_steps"]
        return self._iterations // n if n else self._iterations

    def _check_pairs(self, pairs: list) -> None:
        for i, item in enumerate(pairs):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(
                    f"{type(self).__name__}.apply_gradients expects (gradient, parameter) pairs, "
                    f"e.g. zip(grads, params); item {i} is {_describe(item)}"
                )

    def apply(self, grads, params=None) -> None:
        """Apply one step. ``params`` defaults to those the optimizer was built with.

        An empty call does nothing on an optimizer built on no parameters (as in Keras) and is
        an error otherwise: an empty list is almost always an iterator consumed by an earlier call.
        """
        plan = self._plan
        if isinstance(params, list) and params and isinstance(grads, list) and plan is not None and not self._overwrite:
            derived = self.__dict__.get(DERIVED) or self._derive()
            whole = derived["plain"] or (derived["decay_only"] and self._whole(derived))
            # the case of every step: nothing to convert, nothing to decide (the list as it is now, checked
            # and read as one: another thread changing it meanwhile cannot put an unchecked array in the step)
            work = plan.fitting(tuple(grads), params, whole)
            if work is not None:
                self._step(work)
                read = work[0][1]
                if read.__class__ is Pieces:
                    read.arrays = ()  # (the gradients read in place: not held past their step)
                if self._constraints:
                    self._constrain(grads)
                return
        names = None
        if isinstance(params, list):
            pass
        elif params is None:
            if self._plan is None:
                raise ValueError(
                    f"{type(self).__name__}.apply(grads) without parameters needs an optimizer built on them "
                    "(by build(params) or an earlier apply(grads, params)); pass apply(grads, params)"
                )
            params = self._plan.params
            if is_mapping(grads):
                grads = in_order(grads, self._layout.names, type(self).__name__, "gradients")
        elif is_mapping(params):
            order = self._layout.names if self._layout is not None and self._layout.names is not None else None
            names = list(params) if order is None else order
            params = in_order(params, names, type(self).__name__, "parameters")
            if is_mapping(grads):
                grads = in_order(grads, names, type(self).__name__, "gradients")
        else:
            params = list(params)
        if isinstance(grads, list):
            grads = grads.copy()  # (as it is now: checked and read as one, whatever another thread does to it)
        else:
            if is_mapping(grads):
                raise TypeError(
                    f"{type(self).__name__}.apply: gradients given as a dict need the parameters' names: pass the "
                    "parameters as a dict too, or build(params) with a dict first"
                )
            grads = list(grads)
        if (not grads or not params) and self._nothing_to_apply(grads, params):
            return
        if self._layout is None:
            self.build(params if names is None else dict(zip(names, params)))
        plan = self._plan
        if plan is None or not plan.covers(params):
            plan = self._plan = self._new_plan(self._layout, params, names)
        # the signature check of every step; what fails it (sparse or missing gradients,
        # array-likes, misfits) takes the full path, which handles or reports it
        checked = plan.conforms(grads)
        given, rows = grads, ()
        if not checked and any(type(g) is IndexedSlices for g in grads):
            grads, rows = self._sparse(grads)
        held = None
        if self._overwrite:
            grads, held = self._hold_overwritten(grads)  # (the zeros it puts in conform)
        self._step(plan.work(grads, {i for i, _, _ in rows} if rows else (), checked), rows)
        if held:
            self._put_overwritten(held)
        if self._constraints:
            self._constrain(given)

    def _sparse(self, grads: list) -> tuple[list, list]:
        """The ``IndexedSlices`` among ``grads``, checked: those this step updates row by row as
        ``(index, rows, values)`` (their place in ``grads`` becomes None), the others made dense."""
        layout, owner = self._layout, type(self).__name__
        by_row = self._rows_alone()
        grads, rows = list(grads), []
        for i, g in enumerate(grads):
            if type(g) is not IndexedSlices:
                continue
            shape = layout.shapes[i]
            r, values = rows_of(g, shape, layout.dtype, owner, lambda i=i: f"gradient {label(layout, i)}")
            if by_row[i]:
                rows.append((i, r, values))
                grads[i] = None
            else:  # the dense gradient it stands for
                dense = self._densified.get(i)
                if dense is None or dense.buffer.shape != shape or dense.buffer.dtype != layout.dtype:
                    dense = self._densified[i] = Densified(shape, layout.dtype)
                grads[i] = dense.of(r, values)
        return grads, rows

    def _rows_alone(self) -> list[bool]:
        """For each parameter, whether a sparse gradient is stepped on its rows alone: the rule
        allows it (``updates_rows_alone``), no EMA or accumulation, no weight decay on it, no
        overwrite, slots of its size. Decided once per layout and settings, not at each step."""
        layout = self._layout
        key = (layout, self.weight_decay, self.use_ema, self.gradient_accumulation_steps, tuple(self._overwrite))
        key += (tuple(sorted(self._exclude_wd)),)
        if self._by_row is not None and self._by_row[0] == key:
            return self._by_row[1]
        alone = self.updates_rows_alone() and not self.use_ema and not self.gradient_accumulation_steps
        rates = self._decay_rates() if alone else None
        decided = []
        for i in range(len(layout.shapes)):
            size = int(layout.offsets[i + 1] - layout.offsets[i])
            decided.append(
                alone
                and i not in self._overwrite
                and not (rates and rates[i])
                and all(int(so[i + 1] - so[i]) == size for so in layout.slot_offsets.values())
            )
        self._by_row = (key, decided)
        return decided

    def _nothing_to_apply(self, grads: list, params: list) -> bool:
        """An empty call: a no-op for an optimizer built on no parameters (as in Keras), else an error."""
        owner = type(self).__name__
        if not grads and not params:
            if self.built and not self._layout.shapes:
                return True  # Keras: an empty step does nothing and is not counted
            if self.built:
                built = f"it was built for {count_of(len(self._layout.shapes))}"
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

    def _step(self, work, rows=()) -> None:
        """One call of ``apply`` on ``work`` (chunks with their flat gradients) and ``rows`` (the
        sparse gradients updated row by row: ``(index, rows, values)``), in Keras's order."""
        lr = self.applied_learning_rate = self._rate()
        dt = self._layout.dtype.type
        options = self.__dict__  # the generic options' values (where each Hyper keeps it), read once a step
        if (options.get(DERIVED) or self._derive())["plain"]:  # none of the options below: the update alone
            self._update(work, None, self._typed_rate(lr, dt), rows)
            self._iterations += 1
            return
        if options["loss_scale_factor"] is not None:
            inv = dt(1.0) / dt(self.loss_scale_factor)
            work = [(c, self._into_scratch(K.scale_into, c, g, inv)) for c, g in work]
            rows = [(i, r, v * inv) for i, r, v in rows]
        if options["gradient_accumulation_steps"]:  # (rows are made dense with accumulation)
            work = self._accumulate(work, dt)
        if work is not None:
            clip = options["clipnorm"], options["global_clipnorm"], options["clipvalue"]
            if clip != (None, None, None):
                work, rows = self._clip(work, dt, rows)
            decays = None
            if options["weight_decay"] is not None or self._decay_by_rule:
                decays = self._apply_weight_decay(work, lr, dt)
            self._update(work, decays, self._typed_rate(lr, dt), rows)
        if options["use_ema"]:
            self._update_ema(dt)
        self._iterations += 1

    def _derive(self) -> dict:
        """What the step derives from the hyperparameters, kept until one of them is set (``Hyper``
        drops it): ``plain``, whether a step is the update alone (no loss scale, accumulation,
        clipping, weight decay or EMA; 0.3 us of every small step to find out otherwise); the
        update rules keep their own constants in it too, by the parameters' dtype."""
        options = self.__dict__
        alone = (  # none of the options but weight decay
            options["loss_scale_factor"] is None
            and not options["gradient_accumulation_steps"]
            and options["clipnorm"] is None
            and options["global_clipnorm"] is None
            and options["clipvalue"] is None
            and not options["use_ema"]
        )
        decays = options["weight_decay"] is not None or self._decay_by_rule
        plain = alone and not decays
        # a weight decay alone, which the rule applies in its own pass: a step over separate arrays in
        # pieces can take it when its rate is the same for all of them (``_whole``)
        decay_only = alone and decays and self.fuses_weight_decay
        derived = options[DERIVED] = {"plain": plain, "decay_only": decay_only}
        return derived

    def _whole(self, derived: dict) -> bool:
        """Whether a step may run over every parameter at once, separate arrays read in place: the
        update alone, or with a weight decay the rule fuses at one rate for every parameter (kept
        with the derived values, for this layout and its exclusions)."""
        if derived["plain"] or not derived["decay_only"]:
            return derived["plain"]
        kept = derived.get("whole")
        if kept is None or kept[0] is not self._layout or kept[1] is not self._exclude_wd:
            decays = self._chunk_decays(self._layout.dtype.type)
            rates = None if decays is None else decays[0]
            same = rates is None or (rates[0] is not None and all(r == rates[0] for r in rates))
            kept = derived["whole"] = (self._layout, self._exclude_wd, same)
        return kept[2]

    def _typed_rate(self, lr, dt):
        """``dt(lr)``, made once while the rate stays the same object (a constant rate: every step)."""
        typed = self.__dict__.get("_typed_lr")  # (absent from an optimizer unpickled from an older optlab)
        if typed is None or typed[0] is not lr or typed[1] is not dt:
            typed = self._typed_lr = (lr, dt, dt(lr))
        return typed[2]

    def _hold_overwritten(self, grads: list) -> tuple[list, list]:
        """Take the ``overwrite_with_gradient`` parameters out of this step: their new values (the
        gradient; with accumulation, Keras's running maximum) and their state as it is now, to
        be put back after the step, which sees them with a zero gradient (so that a global norm
        for clipping leaves them out, as Keras does)."""
        layout, params = self._layout, self._plan.params
        n = self.gradient_accumulation_steps
        update_call = not n or (self._iterations + 1) % n == 0
        grads, held = list(grads), []
        for i in self._overwrite:
            if i >= len(grads) or grads[i] is None:
                continue  # no gradient: not part of this step at all (the step warns)
            g = np.asarray(grads[i])
            if g.shape != layout.shapes[i]:
                continue  # the step refuses it, naming it, before anything changes
            a, b = layout.offsets[i], layout.offsets[i + 1]
            state = {key: (buf, *self._segment(key, i)) for key, buf in layout.arrays.items()}
            saved = {key: buf[lo:hi].copy() for key, (buf, lo, hi) in state.items()}
            value, accumulated = g.reshape(-1), None
            if n:
                merged = np.maximum(value, layout.accumulator[a:b])
                value, accumulated = (merged, np.zeros_like(merged)) if update_call else (None, merged)
            if value is None:  # an accumulating call: the parameter keeps its value
                value = params[i].reshape(-1).copy()
            held.append((params[i], state, saved, value, accumulated))
            grads[i] = np.zeros(layout.shapes[i], layout.dtype)
        return grads, held

    def _segment(self, key: str, i: int) -> tuple[int, int]:
        offsets = self._layout.slot_offsets[key[5:]] if key.startswith("slot/") else self._layout.offsets
        return int(offsets[i]), int(offsets[i + 1])

    def _put_overwritten(self, held: list) -> None:
        for param, state, saved, value, accumulated in held:
            for key, (buf, lo, hi) in state.items():
                buf[lo:hi] = saved[key]
            if accumulated is not None:
                buf, lo, hi = state["accumulator"]
                buf[lo:hi] = accumulated
            np.copyto(param, value.reshape(param.shape), casting="unsafe")

    def _constrain(self, grads: list) -> None:
        """Keras's last part of a step: each constrained parameter (that had a gradient) becomes
        ``constraint(parameter)``."""
        params = self._plan.params
        for i, fn in self._constraints.items():
            if grads[i] is None:
                continue
            p = params[i]
            value = np.asarray(fn(p))
            if value.shape != p.shape:
                raise ValueError(
                    f"{type(self).__name__}: the constraint {fn!r} of parameter {label(self._layout, i)} returned "
                    f"shape {value.shape} for a parameter of shape {p.shape}"
                )
            np.copyto(p, value, casting="unsafe")

    def _into_scratch(self, fn, chunk, g, *args):
        out = self._layout.scratch(chunk.start, chunk.stop)
        fn(out, g, *args)
        return out

    def _accumulate(self, work, dt):
        """Add the gradients to the accumulator; on every N-th call, their mean with it (else None)."""
        n, acc = self.gradient_accumulation_steps, self._layout.accumulator
        if (self._iterations + 1) % n != 0:
            for c, g in work:
                K.accumulate(acc[c.start : c.stop], g)
            return None
        return [(c, self._into_scratch(K.average_into, c, g, acc[c.start : c.stop], dt(n))) for c, g in work]

    def _clip(self, work, dt, rows=()):
        """Keras's clipping (one of clipnorm, global_clipnorm, clipvalue) of ``work`` and ``rows``:
        a sparse gradient's norm is its values' (the rows it leaves out are zero)."""
        if self.clipnorm is not None or self.global_clipnorm is not None:  # (norms of whole arrays)
            work = [(chunk, g.gathered() if g.__class__ is Pieces else g) for chunk, g in work]
        if self.clipnorm is not None:
            c = dt(self.clipnorm)
            out = []
            for chunk, g in work:
                dst = self._layout.scratch(chunk.start, chunk.stop)
                seg = chunk.seg
                for k in range(len(seg)):
                    a, b = seg.offsets[k], seg.offsets[k + 1]
                    l2 = dt(np.sqrt(dt(K.sumsq(g[a:b]))))
                    K.mul_div_into(dst[a:b], g[a:b], c, max(l2, c))
                out.append((chunk, dst))
            clipped = []
            for i, r, v in rows:
                l2 = dt(np.sqrt(dt(K.sumsq(v.reshape(-1)))))
                K.mul_div_into(v.reshape(-1), v.reshape(-1), c, max(l2, c))
                clipped.append((i, r, v))
            return out, clipped
        if self.global_clipnorm is not None:
            total = sum(K.sumsq(g) for _, g in work) + sum(K.sumsq(v.reshape(-1)) for _, _, v in rows)
            norm = np.sqrt(dt(total))
            c = dt(self.global_clipnorm)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = c * min(dt(1.0) / norm, dt(1.0) / c) + (norm - norm)
            for _, _, v in rows:
                K.scale_into(v.reshape(-1), v.reshape(-1), dt(scale))
            return [(chunk, self._into_scratch(K.scale_into, chunk, g, dt(scale))) for chunk, g in work], rows
        if self.clipvalue is not None:
            c = dt(self.clipvalue)
            for _, _, v in rows:
                K.clip_into(v.reshape(-1), v.reshape(-1), c)
            return [(chunk, self._into_scratch(K.clip_into, chunk, g, c)) for chunk, g in work], rows
        return work, rows

    def _apply_weight_decay(self, work, lr, dt) -> list | None:
        """Decay the parameters of each work item; returns, per item, the decay left to an update
        rule that fuses it (one rate for the whole chunk), else None (None alone: no decay at all)."""
        kept = self._chunk_decays(dt)
        if kept is None:
            return None
        rates, decays = kept
        lr = dt(lr)
        fused = [None] * len(work)
        for n, (chunk, _) in enumerate(work):
            seg = chunk.seg
            rate = decays.get(seg.indices)
            if rate is None:
                rate = decays[seg.indices] = _decay_of(rates, seg, dt)
            if rate.__class__ is list:  # rates that differ within the chunk: each parameter decays apart
                for k, r in rate:
                    K.decay(chunk.param[seg.offsets[k] : seg.offsets[k + 1]], r * lr)
            elif rate:
                if self.fuses_weight_decay:
                    fused[n] = rate * lr
                else:
                    K.decay(chunk.param, rate * lr)
        return fused

    def _chunk_decays(self, dt) -> tuple[list, dict] | None:
        """Each parameter's rate (``weight_decay_rate``, exclusions applied) and ``{parameter range:
        its decay}`` (:func:`_decay_of`), filled as chunks come; None when no parameter decays. Kept
        with the derived values (made again when a hyperparameter is set) for this layout, its
        exclusions and ``dt``: the rates are asked once per parameter, not at each step (3 us of a
        small step)."""
        derived = self.__dict__.get(DERIVED) or self._derive()
        kept = derived.get("decays")
        if kept is None or kept[0] is not self._layout or kept[1] is not self._exclude_wd or kept[2] is not dt:
            rates = self._decay_rates()
            kept = derived["decays"] = (self._layout, self._exclude_wd, dt, (rates, {}) if rates else None)
        return kept[3]

    def _decay_rates(self):
        if type(self).weight_decay_rate is Optimizer.weight_decay_rate and self.weight_decay is None:
            return None
        rates = list(map(self.weight_decay_rate, self._layout.shapes, self._layout.name_list))
        for i in self._exclude_wd:
            rates[i] = None
        return None if not any(rates) else rates

    def _update(self, work, decays, lr, rows=()) -> None:
        n = self.__dict__["gradient_accumulation_steps"]
        step = (self._iterations // n if n else self._iterations) + 1
        if self._begins_steps:
            self.begin_step(step, self._layout.dtype)
        update = self.update
        if decays is None:
            for chunk, g in work:
                update(chunk.param, g, chunk.state, lr, step, chunk.seg)
        else:
            for (chunk, g), decay in zip(work, decays):
                if decay is None:
                    update(chunk.param, g, chunk.state, lr, step, chunk.seg)
                else:
                    update(chunk.param, g, chunk.state, lr, step, chunk.seg, decay=decay)
        for i, r, values in rows:
            self._update_rows(i, r, values, lr, step)

    def _update_rows(self, i: int, rows: np.ndarray, values: np.ndarray, lr, step: int) -> None:
        """``update`` on rows ``rows`` of parameter ``i`` and of its slots alone: gathered, updated
        by the optimizer's own kernel, put back (see :meth:`updates_rows_alone`)."""
        layout = self._layout
        shape = layout.shapes[i]
        if self._row_views is None or self._row_views[0] is not self._plan or self._row_views[1] is not layout.slots:
            self._row_views = (self._plan, layout.slots, {})  # (loading state puts new slot arrays in)
        views = self._row_views[2].get(i)
        if views is None:
            param = self._plan.params[i].reshape(shape[0], -1)
            slots = {
                name: layout.slots[name][so[i] : so[i + 1]].reshape(param.shape)
                for name, so in layout.slot_offsets.items()
            }
            views = self._row_views[2][i] = (param, slots)
        param, slots = views
        gathered = param[rows]
        state = {name: view[rows] for name, view in slots.items()}
        n = np.array([0, gathered.size], dtype=np.int64)
        seg = Segments([(len(rows), *shape[1:])], n, dict.fromkeys(slots, n), range(i, i + 1), [layout.name_list[i]])
        self.update(
            gathered.reshape(-1), values.reshape(-1), {k: v.reshape(-1) for k, v in state.items()}, lr, step, seg
        )
        param[rows] = gathered
        for name, view in slots.items():
            view[rows] = state[name]

    def _update_ema(self, dt) -> None:
        m = dt(0.0) if self.iterations == 0 else dt(self.ema_momentum)
        one_minus = dt(1) - m
        ema = self._layout.ema
        for chunk in self._plan.chunks:
            K.ema(ema[chunk.start : chunk.stop], chunk.param, m, one_minus)
        freq = self.ema_overwrite_frequency
        if freq and (self.iterations + 1) % freq == 0:
            self.finalize_variable_values()

    def rate_logs(self, applied: bool = False) -> dict[str, float]:
        """What the training loop logs of the rate: ``{"learning_rate": ...}``, the rate the last
        step used (``applied``) or the next one's (a ``MultiOptimizer`` logs one per optimizer)."""
        return {"learning_rate": self.applied_learning_rate if applied else float(self._rate())}

    def scale_loss(self, loss):
        """``loss * loss_scale_factor`` (``loss`` itself without one), as Keras: differentiate
        the scaled loss; each step divides the gradients by the factor again."""
        return loss if self.loss_scale_factor is None else loss * self.loss_scale_factor

    def finalize_variable_values(self, var_list=None) -> None:
        """Write the moving average into the parameters (when ``use_ema``)."""
        if not self.use_ema or not self.built:
            return
        ema = self._layout.ema
        if var_list is None:
            if self._plan is None:
                raise ValueError(
                    f"{type(self).__name__}.finalize_variable_values(): pass var_list (the parameters); this "
                    "optimizer has not been given its parameters since its state was loaded"
                )
            for chunk in self._plan.chunks:
                chunk.param[...] = ema[chunk.start : chunk.stop]
            return
        offsets = self._layout.offsets
        for k, p in enumerate(var_list):
            p.reshape(-1)[...] = ema[offsets[k] : offsets[k + 1]]

    @property
    def ema_weights(self) -> list[np.ndarray] | None:
        """Views of the moving average, shaped like the parameters (None without EMA)."""
        if not self.use_ema or not self.built:
            return None
        return self._layout.views(self._layout.ema)

    @property
    def variables(self) -> dict[str, np.ndarray | float | int]:
        """The optimizer's state by name, read-only (Keras's ``optimizer.variables``, as a dict).

        ``iterations``, ``learning_rate`` (a constant rate; a schedule's is not a variable, as in
        Keras), each per-step scalar, then for each parameter (by its name, or its position if
        unnamed) ``<param>/<slot>`` for every slot (shaped like the parameter, or flat for a slot
        of its own size), ``<param>/ema`` and ``<param>/accumulated_gradient`` where used. The
        arrays are views of the live state: they change as the optimizer steps; write through
        ``set_state``.
        """
        return _state.variables(self)

    # -- config ----------------------------------------------------------------
    def get_config(self) -> dict:
        """``{"name": label, "learning_rate": ..., hyperparameter: value, ...}``, as Keras writes it."""
        config = super().get_config()
        config["name"] = self.name
        lr = self._learning_rate
        config["learning_rate"] = lr.get_config() if hasattr(lr, "get_config") else self._rate()
        return config

    @classmethod
    def from_config(cls, config: dict):
        """Rebuild an optimizer from ``get_config()`` output, optlab's or Keras's (unchanged).

        ``name`` is the label, restored as it was; the class is ``cls``. A learning-rate schedule
        may be optlab's config or Keras's serialized form (``{"class_name": ..., "config": ...}``).
        """
        if not isinstance(config, dict):
            raise ValueError(f"{cls.__name__}.from_config expects a dict; received {config!r}")
        return cls(**config)

    # -- state -----------------------------------------------------------------
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The full state as (JSON-able metadata, named arrays): enough to resume bit for bit.

        The arrays are the live buffers (not copies): save or copy them before the next step.
        """
        return _state.get_state(self)

    def set_state(self, meta: dict, arrays: dict[str, np.ndarray], *, restore_learning_rate: bool = False) -> None:
        """Restore what ``get_state`` returned (into an optimizer of the same kind and options).

        A transaction: everything is read and validated first — format, optimizer name, step
        count, the saved config (with the constructor's own validators), parameter shapes, dtype
        (float32 / float64), every array's name, dtype and exact size (no broadcasting), the
        scalars, no negative element in a slot declared ``nonnegative``, and, when the optimizer
        knows its parameters (built), that the state is for them (their number, shapes and
        dtype; an unbuilt optimizer keeps the state until ``build`` or the first ``apply`` checks
        it) — then new buffers are built on the side and swapped in at once. On any error
        the optimizer is left exactly as it was. The arrays are copied. Slot values are not
        checked for finiteness: the state of a run that diverged is still its state.

        The optimizer keeps its own hyperparameters, as its user configured them; the state
        brings slots, counters, the EMA and the accumulator. The learning rate: a schedule or
        a callable keeps governing; a constant is kept too, and a different saved rate is
        ignored with a warning, unless ``restore_learning_rate=True``, which takes the saved
        rate (``BackupAndRestore`` does: a callback such as ``ReduceLROnPlateau`` may have
        changed the rate during the run it resumes).
        """
        attributes, notes = _state.read_state(self, meta, arrays, restore_learning_rate)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        self.__dict__.update(attributes)  # the swap: one dict update, after everything has passed

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


def _describe(item) -> str:
    if isinstance(item, np.ndarray):
        return f"an ndarray of shape {item.shape}"
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of {len(item)} items"
    return f"a {type(item).__name__}"


def _decay_of(rates: list, seg, dt):
    """The decay of the parameters ``seg`` covers, of ``rates`` (one per parameter): one rate in
    ``dt`` (0 for none) when they all share it, else ``[(k, rate), ...]`` for each parameter k of
    ``seg`` that decays."""
    chunk_rates = [rates[i] for i in seg.indices]
    if all(r == chunk_rates[0] for r in chunk_rates):
        return dt(chunk_rates[0]) if chunk_rates[0] else 0
    return [(k, dt(r)) for k, r in enumerate(chunk_rates) if r]
