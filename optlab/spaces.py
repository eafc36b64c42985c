"""Search spaces: the range a study tunes each hyperparameter over.

An optimizer declares its own beside its hyperparameters, so that a plugin's optimizer is
tuned over a range that suits it::

    class Adam(Optimizer):
        search_space = {"learning_rate": LogUniform(1e-4, 1.0)}

An optimizer that declares none is tuned over its learning rate only, log-uniform over two
decades either side of its default (:func:`search_space`). A study may replace any of them;
in a config a space is written as text: ``log(1e-4, 1)``, ``uniform(0.8, 0.999)`` or
``choice(true, false)`` (:func:`parse`).

Core layer: no numpy needed to declare one; numbers are Python floats.
"""

from __future__ import annotations

import math
import re
from types import MappingProxyType

from .names import did_you_mean


class Space:
    """One hyperparameter's range. ``from_unit(u)`` maps ``u`` in [0, 1] onto it (random and
    quasi-random designs draw ``u``); ``grid(n)`` gives ``n`` evenly spread values."""

    def from_unit(self, u: float):
        raise NotImplementedError

    def grid(self, n: int) -> list:
        if n == 1:
            return [self.from_unit(0.5)]
        return [self.from_unit(i / (n - 1)) for i in range(n)]

    def to_unit(self, value) -> float:
        """Where ``value`` lies in the space, as a fraction of its range in its own scale."""
        raise NotImplementedError

    def on_edge(self, value, fraction: float) -> bool:
        """True if ``value`` lies within ``fraction`` of the range from either end (in its own scale)."""
        u = self.to_unit(value)
        return u <= fraction or u >= 1.0 - fraction

    def bounds(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.bounds()!r}"


def _short(value: float) -> float:
    """``value`` to 4 significant figures: the values a grid names are read by people."""
    return float(f"{value:.4g}")


class LogUniform(Space):
    """Log-uniform over ``[low, high]`` (``0 < low < high``): the usual prior of a step size."""

    def __init__(self, low: float, high: float):
        low, high = float(low), float(high)
        if not (0 < low < high < math.inf):
            raise ValueError(f"LogUniform: needs 0 < low < high < inf; received low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def from_unit(self, u: float) -> float:
        return _short(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))

    def to_unit(self, value) -> float:
        return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))

    def bounds(self) -> tuple:
        return (self.low, self.high)

    def __str__(self) -> str:
        return f"log({self.low:g}, {self.high:g})"


class Uniform(Space):
    """Uniform over ``[low, high]`` (a momentum, a decay rate)."""

    def __init__(self, low: float, high: float):
        low, high = float(low), float(high)
        if not (-math.inf < low < high < math.inf):
            raise ValueError(f"Uniform: needs finite low < high; received low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def from_unit(self, u: float) -> float:
        return _short(self.low + u * (self.high - self.low))

    def to_unit(self, value) -> float:
        return (value - self.low) / (self.high - self.low)

    def bounds(self) -> tuple:
        return (self.low, self.high)

    def __str__(self) -> str:
        return f"uniform({self.low:g}, {self.high:g})"


class Choice(Space):
    """One of a few values (``nesterov``, ``amsgrad``); a grid of ``n`` cycles through them."""

    def __init__(self, *values):
        if len(values) < 2:
            raise ValueError(f"Choice: needs at least two values; received {values!r}")
        self.values = tuple(values)

    def from_unit(self, u: float):
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]

    def grid(self, n: int) -> list:
        return [self.values[i % len(self.values)] for i in range(n)]

    def to_unit(self, value) -> float:
        return 0.5  # no edge: every value is an end and none is

    def bounds(self) -> tuple:
        return self.values

    def __str__(self) -> str:
        return "choice(" + ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in self.values) + ")"


_TEXT = re.compile(r"^\s*(log|uniform|choice)\s*\((.*)\)\s*$", re.IGNORECASE)


def _value(text: str):
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip("'\"")


def parse(value) -> Space:
    """A space from its text (``log(1e-4, 1)``, ``uniform(0.8, 0.999)``, ``choice(a, b)``) or a Space."""
    if isinstance(value, Space):
        return value
    match = _TEXT.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"a search space is written log(LOW, HIGH), uniform(LOW, HIGH) or choice(A, B, ...); received {value!r}"
        )
    kind, items = match.group(1).lower(), [_value(v) for v in match.group(2).split(",") if v.strip()]
    if kind == "choice":
        return Choice(*items)
    if len(items) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{kind}(LOW, HIGH) takes two numbers; received {value!r}")
    return (LogUniform if kind == "log" else Uniform)(*items)


def default_space(cls) -> dict[str, Space]:
    """The space of an optimizer that declares none: its learning rate, log-uniform over two
    decades either side of its default."""
    default = cls.hyperparameters()["learning_rate"].default
    return {"learning_rate": LogUniform(_short(default / 100), _short(default * 100))}


def search_space(cls, override: dict | None = None) -> dict[str, Space]:
    """The space a study tunes optimizer class ``cls`` over: its declared ``search_space`` (else
    :func:`default_space`), with ``override`` (``{name: space or its text}``) replacing it when
    given. Each name must be one of the class's hyperparameters, and each end of a numeric range
    a value it accepts; else ``ValueError`` naming the field."""
    declared = getattr(cls, "search_space", None)
    space = dict(declared) if declared else default_space(cls)
    if override:
        space = {}
        for name, value in override.items():
            try:
                space[name] = parse(value)
            except ValueError as error:
                raise ValueError(f"{cls.registry_name}: search space of `{name}`: {error}") from None
    check_space(cls, space)
    return space


def check_space(cls, space: dict) -> None:
    hypers = cls.hyperparameters()
    for name, item in space.items():
        if name not in hypers:
            raise ValueError(
                f"{cls.registry_name}: search space names {name!r}, not one of its hyperparameters"
                f"{did_you_mean(name, hypers)}; "
                f"they are {', '.join(hypers)}"
            )
        if not isinstance(item, Space):
            raise ValueError(f"{cls.registry_name}: search space of `{name}` must be a Space; received {item!r}")
        for end in item.bounds():
            try:
                hypers[name].validate(end, cls.__name__)
            except ValueError as error:
                raise ValueError(f"{cls.registry_name}: search space of `{name}` is {item}: {error}") from None


def widened(cls, name: str, space: Space, value, fraction: float) -> tuple[str, Space | None] | None:
    """Where ``value`` lies on an edge of ``space`` (within ``fraction`` of its range, in its own
    scale): ``("low" or "high", the space widened at that end)``; None off the edges and for a
    choice. A log range widens by a factor of 100, a linear one by half its width, each at most to
    what the hyperparameter ``name`` of optimizer class ``cls`` accepts (halfway to an open bound);
    ``(end, None)`` when that end is the hyperparameter's own bound already."""
    if isinstance(space, Choice):
        return None
    u = space.to_unit(value)
    end = "low" if u <= fraction else "high" if u >= 1.0 - fraction else None
    if end is None:
        return None
    low, high = space.bounds()
    old = low if end == "low" else high
    log = isinstance(space, LogUniform)
    if log:
        new = old / 100 if end == "low" else old * 100
    else:
        new = old - (high - low) / 2 if end == "low" else old + (high - low) / 2
    hyper = cls.hyperparameters()[name]
    bound, open_ = (hyper.low, hyper.low_open) if end == "low" else (hyper.high, hyper.high_open)
    if bound is not None and (new < bound if end == "low" else new > bound):
        if not open_:
            new = bound
        else:  # halfway to a bound it must not reach, in the range's own scale
            new = math.sqrt(old * bound) if log and bound > 0 else (old + bound) / 2
    new = float(f"{new:.6g}")
    if new == old:
        return end, None
    try:
        wider = type(space)(new, high) if end == "low" else type(space)(low, new)
        hyper.validate(new, cls.__name__)
    except ValueError:
        return end, None
    return end, wider


def tuned(**spaces: Space) -> MappingProxyType:
    """An optimizer's declared ``search_space`` (read-only: it belongs to the class)::

    search_space = tuned(learning_rate=LogUniform(1e-4, 1.0))
    """
    return MappingProxyType(dict(spaces))
