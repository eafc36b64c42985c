"""Hyperparameters declared once, with their default, type and allowed range.

A component (optimizer, schedule, ...) declares each hyperparameter as a class
attribute::

    class Adam(Optimizer):
        beta_1 = Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="decay of the first moment")

Everything else is derived from these declarations: the constructor signature
and its validation, assignment checks (``opt.beta_1 = 2.0`` raises),
``get_config`` / ``from_config`` and the documentation tables.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, ClassVar

from .names import closest

_MISSING = object()


#: what an experiment can fill an argument with (``Hyper(fill=...)``)
FILLS = ("learning_rate", "run_steps", "metric")


#: the attribute where an object keeps what it derives from its hyperparameters (an optimizer: whether
#: its step is plain, its constants in the parameters' dtype); setting any hyperparameter drops it
DERIVED = "_derived"


class Hyper:
    """A declared hyperparameter: default, kind (float, int, bool, str, list), range.

    ``low``/``high`` bound numeric values (``low_open``/``high_open`` make the
    bound exclusive); ``choices`` restricts strings, or, for a number, lists the strings
    allowed besides numbers (``save_freq``: ``"epoch"`` or an integer); ``optional`` allows None;
    ``item`` (a ``Hyper``) validates each element of a list.
    Numbers must be finite (nan is always rejected; ``allow_inf=True`` admits
    ``inf``/``-inf`` within the bounds, for a value where infinity has a meaning).
    A ``default`` of ``Hyper.REQUIRED`` makes the argument mandatory.

    ``fill`` names what an experiment (the command line) puts here when the user does not:
    ``"learning_rate"`` (the optimizer's learning rate: a schedule's starting value),
    ``"run_steps"`` (the run's total number of steps: a schedule's decay length) or
    ``"metric"`` (the run's metric: a callback's ``monitor``). The library itself never fills.

    Used as a class attribute, it validates every assignment (``obj.name = value``); its
    ``validate`` serves any code that checks a value of this kind (the trainer's arguments).
    """

    REQUIRED: ClassVar[object] = _MISSING

    def __init__(
        self,
        default: Any = _MISSING,
        *,
        kind: type = float,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        optional: bool = False,
        choices: tuple | None = None,
        allow_inf: bool = False,
        item: Hyper | None = None,
        fill: str | None = None,
        doc: str = "",
    ):
        if fill is not None and fill not in FILLS:
            raise ValueError(f"Hyper: fill must be one of {', '.join(map(repr, FILLS))} or None; received {fill!r}")
        self.default = default
        self.kind = kind
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.optional = optional or default is None
        self.choices = choices
        self.allow_inf = allow_inf
        self.item = item
        self.fill = fill
        self.doc = doc
        self.name = "?"

    # -- descriptor protocol -------------------------------------------------
    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj.__dict__[self.name]

    def __set__(self, obj, value):
        state = obj.__dict__
        state[self.name] = self.validate(value, type(obj).__name__)
        state.pop(DERIVED, None)  # what the object derived from its hyperparameters is made again

    # -- validation -----------------------------------------------------------
    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``a float in [0, 1)``."""
        if self.kind is bool:
            text = "True or False"
        elif self.choices is not None and self.kind is str:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            noun = {float: "a float", int: "an integer", str: "a string", list: "a list", object: "a value"}[self.kind]
            noun = "a non-empty string" if self.kind is str and self.required else noun
            text = noun + _range_text(self.low, self.high, self.low_open, self.high_open)
            if self.item is not None:
                text += f" (each item {self.item.allowed()})"
            if self.choices is not None:
                text = " or ".join([*(repr(c) for c in self.choices), text])
        return text + (" or None" if self.optional else "")

    def _error(self, owner: str, value, why: str = "") -> ValueError:
        why = f" ({why})" if why else quoted_truth(value) if self.kind is bool else ""
        text = repr(value)
        text = text if len(text) <= 80 else text[:77] + "..."
        return ValueError(f"{owner}: `{self.name}` must be {self.allowed()}; received {self.name}={text}{why}")

    def validate(self, value, owner: str = ""):
        """Return ``value`` coerced to the declared kind, or raise ``ValueError``."""
        if value is None:
            if self.optional:
                return None
            raise self._error(owner, value)
        kind = self.kind
        if kind is bool:
            if not isinstance(value, bool):
                raise self._error(owner, value)
            return value
        if kind is str:
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise self._error(owner, value)
            if self.required and not value:  # a file or folder name given as "" is a name not given
                raise self._error(owner, value)
            return value
        if kind is object:
            return value
        if kind is list:
            if not isinstance(value, (list, tuple)):
                raise self._error(owner, value)
            if self.item is None:
                return list(value)
            try:
                return [self.item.validate(v, owner) for v in value]
            except ValueError:
                raise self._error(owner, value) from None
        if isinstance(value, str) and self.choices is not None and value in self.choices:
            return value
        if isinstance(value, bool) or not _is_number(value):
            raise self._error(owner, value)
        number = float(value)
        if math.isnan(number):
            raise self._error(owner, value, "nan is not allowed")
        if math.isinf(number) and (kind is int or not self.allow_inf):
            raise self._error(owner, value, "infinite values are not allowed")
        if kind is int:
            if number != int(value):
                raise self._error(owner, value)
            if not isinstance(value, numbers.Integral) and abs(number) > 2**53:  # 1e20: not an exact count
                raise self._error(owner, value, "a float this large is not an exact integer; write it in digits")
            value = int(value)
        else:
            value = number
        if not _in_range(value, self.low, self.high, self.low_open, self.high_open):
            raise self._error(owner, value)
        return value


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return False
    return not isinstance(value, (str, bytes))


def _in_range(value, low, high, low_open, high_open) -> bool:
    if low is not None and (value < low or (low_open and value == low)):
        return False
    if high is not None and (value > high or (high_open and value == high)):
        return False
    return True


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {_fmt(low)}"
    if low is None:
        return f" {'<' if high_open else '<='} {_fmt(high)}"
    return f" in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"


class Configurable:
    """Base of every component built from declared hyperparameters.

    Subclasses get a constructor taking the declared names (positionally in
    declaration order, or by keyword), ``get_config``/``from_config``, and a
    generated ``__signature__`` so that ``help()`` shows the real arguments (a class that
    writes its own ``__init__`` with named parameters shows that one's instead).
    ``registry_name`` is the lower-case name the component is looked up by.
    """

    registry_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: an explicit constructor order for these names (e.g. Keras's, where inherited arguments
    #: sit in the middle); the other arguments follow in the default order
    positional: ClassVar[tuple[str, ...]] = ()
    _hypers: ClassVar[dict[str, Hyper]] = {}
    #: whether the config's ``name`` is the instance's label (optimizers, as in Keras) rather than
    #: the registry name (the other components)
    labelled: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "registry_name" not in cls.__dict__:
            cls.registry_name = _snake(cls.__name__)
        order: dict[str, Hyper] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, Hyper):
                    order[attr] = value  # a redeclaration keeps the first position
        cls._hypers = cls._order_hypers(order)
        if not _binds_declarations(cls.__init__):
            cls.__signature__ = None  # its own __init__ says what it takes: inspect reads that one
            return
        params = []
        for name, hyper in cls._hypers.items():
            default = inspect.Parameter.empty if hyper.required else hyper.default
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
        # on the class, not on the shared __init__: each class shows its own arguments in help()
        cls.__signature__ = inspect.Signature(params + cls._extra_parameters())

    def __init__(self, *args, **kwargs):
        """Bind the declared arguments (positionally or by keyword), refuse any other, then ``check()``."""
        leftovers = self._assign_hypers(args, kwargs)
        if leftovers:
            raise self._unknown_arguments(leftovers)
        self.check()

    def check(self) -> None:
        """Cross-argument validation (optional)."""

    @classmethod
    def _order_hypers(cls, hypers: dict[str, Hyper]) -> dict[str, Hyper]:
        """Constructor order: ``positional``, then required arguments, then the others, each in declaration order."""
        unknown = [k for k in cls.positional if k not in hypers]
        if unknown:
            raise TypeError(f"{cls.__name__}.positional names undeclared arguments: {unknown}")
        first = {k: hypers[k] for k in cls.positional}
        rest = {k: h for k, h in hypers.items() if k not in first}
        return {
            **first,
            **{k: h for k, h in rest.items() if h.required},
            **{k: h for k, h in rest.items() if not h.required},
        }

    @classmethod
    def _extra_parameters(cls) -> list[inspect.Parameter]:
        return []

    @classmethod
    def hyperparameters(cls) -> dict[str, Hyper]:
        """The declared hyperparameters, in constructor order."""
        return dict(cls._hypers)

    def _assign_hypers(self, args: tuple, kwargs: dict) -> dict:
        """Bind ``args``/``kwargs`` to the declarations, validate, assign; return leftovers."""
        names = list(self._hypers)
        owner = type(self).__name__
        if len(args) > len(names):
            raise TypeError(f"{owner} takes at most {len(names)} positional arguments ({len(args)} given)")
        values = dict(zip(names, args))
        for key in list(kwargs):
            if key in self._hypers:
                if key in values:
                    raise TypeError(f"{owner}: got multiple values for argument `{key}`")
                values[key] = kwargs.pop(key)
        for name, hyper in self._hypers.items():
            if name not in values:
                if hyper.required:
                    raise TypeError(f"{owner}: missing required argument `{name}` ({hyper.allowed()})")
                values[name] = hyper.default
            setattr(self, name, values[name])
        return kwargs

    def _unknown_arguments(self, kwargs: dict) -> ValueError:
        owner = type(self).__name__
        parts = []
        for key in kwargs:
            match = closest(key, self._hypers)
            parts.append(f"`{key}`" + (f" (did you mean `{match}`?)" if match else ""))
        return ValueError(
            f"{owner}: argument(s) not recognized: {', '.join(parts)}. Accepted arguments: {', '.join(self._hypers)}"
        )

    def get_config(self) -> dict:
        """Plain-data description: ``{"name": registry name, hyperparameter: value, ...}``."""
        config = {"name": self.registry_name}
        for name in self._hypers:
            config[name] = _plain(getattr(self, name))
        return config

    @classmethod
    def from_config(cls, config: dict):
        """Rebuild an instance from ``get_config()`` output."""
        config = dict(config)
        name = config.pop("name", None)
        if name is not None and (not isinstance(name, str) or name.lower() not in cls._names()):
            raise ValueError(f"config is for {name!r}, not for {cls.__name__} ({cls.registry_name!r})")
        return cls(**config)

    @classmethod
    def _names(cls) -> set[str]:
        return {cls.registry_name, cls.__name__.lower(), *(a.lower() for a in cls.aliases)}

    def __repr__(self) -> str:
        args = []
        for name, hyper in self._hypers.items():
            value = getattr(self, name)
            if hyper.required or value != hyper.default:
                args.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(args)})"


def _binds_declarations(init) -> bool:
    """Whether ``init`` passes its arguments on to the declarations (``*args, **kwargs``), as the base classes' do."""
    kinds = {p.kind for p in inspect.signature(init).parameters.values()}
    return inspect.Parameter.VAR_POSITIONAL in kinds and inspect.Parameter.VAR_KEYWORD in kinds


def _plain(value):
    if hasattr(value, "get_config"):
        return value.get_config()
    if isinstance(value, tuple):
        return list(value)
    return value


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (name[i - 1].islower() or (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def quoted_truth(value) -> str:
    """`` (a string: without the quotes it is a boolean)`` for ``"false"`` or ``"true"`` given where a
    boolean is wanted (``key='false'`` on the command line, ``amsgrad="false"`` in Python), else
    ``""``: the note for an error that would otherwise read "must be true or false; received 'false'"."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return " (a string: without the quotes it is a boolean)"
    return ""
