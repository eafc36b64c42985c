"""Where an optimizer's state lives, and how one step walks the parameters.

A built optimizer keeps each slot (``Slot``), the EMA of the weights and the gradient
accumulator as one flat buffer over all its parameters, back to back: parameter k is
``offsets[k]:offsets[k+1]`` (a slot with its own ``size`` has its own offsets). That is the
``Layout``. A ``Plan`` pairs the layout with the parameter arrays of a step: when they are
views of one flat buffer (``optlab.flat_parameters``), a step is one ``Chunk`` and one kernel
call over everything; otherwise one chunk per array. Gradients are checked at every step by
their signature (ndarrays of the parameters' shapes and dtype), so fresh arrays cost no more
than the same ones. With flat parameters and a rule that reads gradients in place
(``elementwise_update``), separate gradient arrays are checked and read where they are
(``optlab.inplace``); for other rules they are gathered into a scratch buffer (one
``np.concatenate``), and the plan remembers whether the last step's arrays were flat, so that
the same arrays are not looked at again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from operator import is_

import numpy as np

from .. import inplace, object_layout
from ..flat import flat_view


@dataclass(frozen=True)
class Slot:
    """A state slot: its initial value (a number, or ``"param"`` for a copy of the
    parameter) and, for slots not shaped like the parameter, ``size(shape)`` elements
    (``size(shape, name)`` if it takes two arguments: ``name`` is the parameter's name, or
    None for unnamed parameters).

    ``nonnegative=True`` declares that the update rule keeps every element >= 0 (a sum or
    running average of squares, a running maximum of ``|g|``): a loaded state with a negative
    element there is refused, since no run can produce one and the next step would take the
    square root of it. NaN and +inf are not refused: a run that diverged can hold them.
    """

    init: float | str = 0.0
    size: Callable[[tuple], int] | None = None
    nonnegative: bool = False

    def __post_init__(self):
        if self.nonnegative and not (isinstance(self.init, (int, float)) and self.init >= 0):
            raise ValueError(f"a Slot declared nonnegative=True needs an initial value >= 0; received {self.init!r}")

    def elements(self, shape: tuple, name: str | None) -> int:
        """How many elements this slot holds for a parameter of ``shape`` named ``name``."""
        if self.size is None:
            return math.prod(shape)
        return int(self.size(shape, name) if _takes_two(self.size) else self.size(shape))


def _takes_two(fn) -> bool:
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [q for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(q.kind is q.VAR_POSITIONAL for q in params)


class Segments:
    """The parameters one ``update`` call covers: their shapes and flat offsets.

    ``offsets[k]:offsets[k+1]`` is parameter k inside the flat chunk;
    ``slot_offsets[name]`` the same for a slot with its own ``size``; ``names[k]`` its name (or None).
    """

    __slots__ = ("indices", "names", "offsets", "shapes", "slot_offsets")

    def __init__(self, shapes, offsets, slot_offsets, indices, names):
        self.shapes = shapes
        self.offsets = offsets
        self.slot_offsets = slot_offsets
        self.indices = indices
        self.names = names  # each parameter's name, or None where parameters are unnamed

    def __len__(self):
        return len(self.shapes)

    def views(self, flat: np.ndarray, slot: str | None = None):
        """Yield the per-parameter views of ``flat`` (shaped like each parameter, or flat for a sized slot)."""
        offsets = self.offsets if slot is None else self.slot_offsets[slot]
        for k, shape in enumerate(self.shapes):
            view = flat[offsets[k] : offsets[k + 1]]
            yield view.reshape(shape) if slot is None else view


class Chunk:
    """The parameters ``indices`` of one kernel call: ``start:stop`` of the layout, the parameters
    as one flat array, each slot's matching flat view (``state``) and their ``Segments``."""

    __slots__ = ("param", "seg", "start", "state", "stop")

    def __init__(self, start: int, stop: int, param: np.ndarray, state: dict, seg: Segments):
        self.start, self.stop, self.param, self.state, self.seg = start, stop, param, state, seg


class Layout:
    """The flat buffers of a built optimizer for parameters of ``shapes`` and ``dtype``.

    Made in two steps, so that a state being loaded is checked before anything is allocated:
    ``Layout(...)`` computes the geometry — ``sizes`` and ``initial`` values of the named
    arrays (``"slot/<name>"``, ``"ema"``, ``"accumulator"``) — then ``allocate(params)`` makes
    fresh buffers or ``install(arrays)`` takes checked ones.

    ``params_known`` tells whether ``shapes`` and ``dtype`` are known to be those of the
    optimizer's parameters (a layout built for them, or loaded into an optimizer that knew them);
    a state loaded into an unbuilt optimizer waits, unchecked, until its parameters are given.
    """

    def __init__(self, shapes, dtype, specs: dict[str, Slot], *, ema: bool, accumulator: bool, names=None):
        self.params_known = False
        self.dtype = np.dtype(dtype)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.names = None if names is None else [str(n) for n in names]
        self.specs = specs
        self.offsets = _offsets([math.prod(s) for s in self.shapes])
        self.size = int(self.offsets[-1])
        self.slot_offsets: dict[str, np.ndarray] = {}
        self.sizes: dict[str, int] = {}
        self.initial: dict[str, float | str] = {}
        for name, slot in specs.items():
            so = self.offsets if slot.size is None else _offsets(list(map(slot.elements, self.shapes, self.name_list)))
            self.slot_offsets[name] = so
            self.sizes[f"slot/{name}"], self.initial[f"slot/{name}"] = int(so[-1]), slot.init
        for name, wanted in (("ema", ema), ("accumulator", accumulator)):
            if wanted:
                self.sizes[name], self.initial[name] = self.size, 0.0
        self.arrays: dict[str, np.ndarray] = {}
        self._scratch: np.ndarray | None = None

    def name_parameters(self, names) -> None:
        """Give an unnamed layout (a state saved for unnamed parameters) the names of its
        parameters, which its slot sizes may depend on: only where they do not change any size."""
        before = dict(self.slot_offsets)
        self.names = [str(n) for n in names]
        for key, slot in self.specs.items():
            if slot.size is not None:
                sizes = list(map(slot.elements, self.shapes, self.names))
                if not np.array_equal(_offsets(sizes), before[key]):
                    self.names = None
                    raise ValueError(
                        f"the state's slot {key!r} was laid out for unnamed parameters and these names change "
                        "its size (a rule that routes parameters by name): load a state saved for named parameters"
                    )

    @property
    def name_list(self) -> list:
        """Each parameter's name, or None for each where the parameters are unnamed."""
        return self.names if self.names is not None else [None] * len(self.shapes)

    def allocate(self, params=()) -> Layout:
        """Fresh buffers at their initial values (a ``"param"`` slot copies ``params``)."""
        arrays = {}
        for key, size in self.sizes.items():
            init = self.initial[key]
            arrays[key] = np.full(size, 0.0 if init == "param" else init, dtype=self.dtype)
            if init == "param":
                for k, p in enumerate(params):
                    arrays[key][self.offsets[k] : self.offsets[k + 1]] = p.reshape(-1)
        return self.install(arrays)

    def install(self, arrays: dict[str, np.ndarray]) -> Layout:
        """Use ``arrays`` (exactly ``sizes``, in ``dtype``: the caller has checked them) as the buffers."""
        self.arrays = arrays
        self.slots = {name: arrays[f"slot/{name}"] for name in self.specs}
        self.ema = arrays.get("ema")
        self.accumulator = arrays.get("accumulator")
        return self

    def scratch(self, start: int, stop: int) -> np.ndarray:
        """``start:stop`` of a parameter-sized scratch buffer (for transformed gradients), made on first use."""
        if self._scratch is None:
            self._scratch = np.empty(self.size, self.dtype)
        return self._scratch[start:stop]

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """The parameter-shaped views of a flat buffer of this layout (the EMA, for instance)."""
        return [flat[self.offsets[k] : self.offsets[k + 1]].reshape(s) for k, s in enumerate(self.shapes)]

    def chunk(self, i0: int, i1: int, param_1d: np.ndarray) -> Chunk:
        """Parameters ``i0:i1`` as one kernel call's work, ``param_1d`` being their flat values."""
        offsets = self.offsets[i0 : i1 + 1] - self.offsets[i0]
        state, slot_offsets = {}, {}
        for name, buf in self.slots.items():
            so = self.slot_offsets[name]
            state[name] = buf[so[i0] : so[i1]]
            slot_offsets[name] = so[i0 : i1 + 1] - so[i0]
        seg = Segments(self.shapes[i0:i1], offsets, slot_offsets, range(i0, i1), self.name_list[i0:i1])
        return Chunk(int(self.offsets[i0]), int(self.offsets[i1]), param_1d, state, seg)


#: up to this many parameters, the last step's gradient arrays, views of one buffer, are checked
#: in Python (0.15 us an array) and used as one array: cheaper than the compiled check and the
#: kernel over pieces (about 3 us together), the fixed cost of a small step
FEW_ARRAYS = 16


class Plan:
    """How steps walk ``params`` (the arrays a layout was built for): chunks, and the gradient cache."""

    __slots__ = ("_axis", "_grads", "_in_place", "chunks", "flat", "layout", "owner", "params")

    def __init__(self, layout: Layout, params: list, owner: str, in_place: bool = False):
        if len(params) != len(layout.shapes):
            raise ValueError(
                f"{owner} was built for {count_of(len(layout.shapes))}, received {len(params)} (an optimizer "
                "keeps updating the parameters it was built for; create a new one for other parameters)"
            )
        check_parameters(params, owner)
        for i, (p, shape) in enumerate(zip(params, layout.shapes)):
            if p.shape != shape or p.dtype != layout.dtype:
                raise ValueError(
                    f"{owner} was built for parameter {i} of shape {shape} and dtype {layout.dtype}, "
                    f"received shape {p.shape} and dtype {p.dtype}"
                )
        self.layout, self.params, self.owner = layout, list(params), owner
        self.flat = flat_view(params)
        if self.flat is not None:
            self.chunks = [layout.chunk(0, len(params), self.flat)]
        else:
            self.chunks = [layout.chunk(i, i + 1, p.reshape(-1)) for i, p in enumerate(params)]
        # (the last step's arrays, their flat view or None, the step's work when they are one: see work)
        self._grads: tuple[tuple, np.ndarray | None, list | None] | None = None
        # how np.concatenate gathers gradients: along their axis when all are 1-D (no ravel each), else flattened
        self._axis = 0 if all(len(s) == 1 for s in layout.shapes) else None
        # an element-wise rule over several parameters: separate gradients (and separate parameters) read in place
        self._in_place = None
        if in_place and len(params) > 1 and object_layout.layout() is not None and all(p.flags.aligned for p in params):
            self._in_place = _InPlace(self, layout)

    def fitting(self, grads: list, params: list, whole: bool = False) -> list[tuple[Chunk, np.ndarray]] | None:
        """The step's work when ``params`` are this plan's very arrays and ``grads`` conform to them
        (as ``covers`` and ``conforms`` check, in one pass: the case of every step), else None.
        ``whole``: the step may take every parameter at once (``Optimizer._whole``): separate
        parameters are then read in place too."""
        mine, layout = self.params, self.layout
        if len(params) != len(mine) or len(grads) != len(mine) or not all(map(is_, params, mine)):
            return None
        in_place = self._in_place
        if in_place is not None and (whole or self.flat is not None):
            # a few arrays, the last step's views of one buffer, are checked faster in Python; the first
            # step's (``cached`` is None) are looked at in Python once, which keeps them if they are
            cached = self._grads
            few = len(mine) <= FEW_ARRAYS and self.flat is not None
            if few and cached is not None and cached[2] is not None and all(map(is_, grads, cached[0])):
                return cached[2] if _conforming(grads, layout.shapes, layout.dtype) else None
            work = None if few and cached is None else in_place.work(grads)
            if work is OVERLAP:
                grads = [np.array(g) for g in grads]
            elif work is not None:
                return work
        if not _conforming(grads, layout.shapes, layout.dtype):
            return None
        return self.work(grads, (), True)

    def covers(self, params: list) -> bool:
        """Whether ``params`` are the very arrays this plan was made for."""
        return len(params) == len(self.params) and all(map(is_, params, self.params))

    def conforms(self, grads: list) -> bool:
        """Whether ``grads`` are ndarrays of exactly the parameters' shapes and dtype (the check of
        every step, by signature: fresh arrays at each step pass it as cheaply as the same ones)."""
        layout = self.layout
        return len(grads) == len(layout.shapes) and _conforming(grads, layout.shapes, layout.dtype)

    def work(self, grads: list, sparse=(), checked: bool = False) -> list[tuple[Chunk, np.ndarray]]:
        """Each chunk with its flat gradient, the gradients checked against the parameters
        (``checked``: ``conforms(grads)`` is already known to be true).

        A ``None`` gradient leaves its parameter out of the step (with a warning, as in Keras,
        except for the parameters in ``sparse``, which the step updates row by row).
        """
        layout = self.layout
        if not checked and not self.conforms(grads):
            if len(grads) == len(self.params) and any(g is None for g in grads):
                return self._partial(grads, sparse)
            grads = self._checked(grads)  # raises naming the first misfit, or converts array-likes
        if self.flat is None:
            if self._in_place is not None and self._in_place.overlaps(grads):
                grads = [np.array(g) for g in grads]  # (a gradient sharing memory with a parameter)
            return [(c, np.ascontiguousarray(g).reshape(-1)) for c, g in zip(self.chunks, grads)]
        if len(grads) == 1:  # one parameter: its gradient is the flat gradient
            return [(self.chunks[0], np.ascontiguousarray(grads[0]).reshape(-1))]
        cached = self._grads
        if cached is not None and len(cached[0]) == len(grads) and all(map(is_, grads, cached[0])):
            gflat = cached[1]  # the arrays of the last step: their layout in memory is known
        else:  # other arrays (fresh ones at each step): are they views of one flat buffer?
            gflat = flat_view(grads)
            work = None if gflat is None else [(self.chunks[0], gflat)]
            self._grads = cached = (tuple(grads), gflat, work)
        if gflat is None:  # parameters are flat but gradients are not: gather them into the scratch buffer
            gflat = np.concatenate(grads, axis=self._axis, out=layout.scratch(0, layout.size))
            return [(self.chunks[0], gflat)]
        return cached[2]  # views of one buffer, read in place: the same work as the last step's

    def _checked(self, grads: list) -> list:
        """Gradients that are not all ndarrays of their parameters' shapes and dtype, as arrays, or
        ``ValueError`` naming the first that does not fit."""
        if len(grads) != len(self.params):
            raise ValueError(f"{self.owner}: received {len(grads)} gradients for {len(self.params)} parameters")
        layout = self.layout
        grads = [np.asarray(g) for g in grads]
        for i, (g, shape) in enumerate(zip(grads, layout.shapes)):
            if g.shape != shape:
                raise ValueError(f"{self.owner}: gradient {i} has shape {g.shape} but its parameter has shape {shape}")
            if g.dtype != layout.dtype:
                raise ValueError(
                    f"{self.owner}: gradient {i} has dtype {g.dtype} but its parameter has dtype {layout.dtype}"
                )
        return grads

    def _partial(self, grads: list, sparse=()) -> list[tuple[Chunk, np.ndarray]]:
        missing = [i for i, g in enumerate(grads) if g is None and i not in sparse]
        if len(missing) == len(grads):
            raise ValueError("No gradients provided for any parameter.")
        if missing:
            warnings.warn(f"Gradients do not exist for parameters {missing}; they are not updated.", stacklevel=5)
        work = []
        for i, g in enumerate(grads):
            if g is None:
                continue
            p = self.params[i]
            g = np.asarray(g)
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"gradient {i} has shape {g.shape}/{g.dtype}; parameter has {p.shape}/{p.dtype}")
            work.append((self.layout.chunk(i, i + 1, p.reshape(-1)), np.ascontiguousarray(g).reshape(-1)))
        return work


class _InPlace:
    """A plan's gradients read where they are (``optlab.inplace``): each step's list is read by one
    compiled call, which checks every array against its parameter and gives their addresses; the
    step's work is then one chunk over every parameter with the gradient in ``Pieces``, or None
    (the checked path). Flat parameters are that chunk's array; separate ones are in ``Pieces``
    too (their addresses known from the start), which only a plain step takes (``whole``)."""

    __slots__ = ("addresses", "descr", "dims", "highs", "locate", "lows", "nbytes", "ndims", "separate", "whole")

    def __init__(self, plan: Plan, layout: Layout):
        n = len(layout.shapes)
        self.ndims = np.array([len(s) for s in layout.shapes], dtype=np.intc)
        self.dims = np.zeros((n, max(1, int(self.ndims.max()))), dtype=np.intp)
        for k, shape in enumerate(layout.shapes):
            self.dims[k, : len(shape)] = shape
        self.nbytes = np.diff(layout.offsets).astype(np.intp) * layout.dtype.itemsize
        self.descr = id(layout.dtype)  # (the dtype object itself, as the signature check wants it)
        self.addresses = np.zeros(n, dtype=np.intp)
        offsets = layout.offsets.astype(np.intp)
        whole = np.array([0, layout.size], dtype=np.intp)

        def scratch():
            return layout.scratch(0, layout.size)

        def pieces(addresses, offsets):
            return inplace.Pieces(addresses, offsets, inplace.tasks_of(offsets), scratch, plan._axis, layout.dtype)

        if plan.flat is not None:
            chunk = plan.chunks[0]
            held = [(plan.flat.ctypes.data, plan.flat.nbytes)]
            self.whole = [(chunk, pieces(self.addresses[:1], whole))]  # gradients back to back
        else:
            params = pieces(np.array([p.ctypes.data for p in plan.params], dtype=np.intp), offsets)
            params.arrays = tuple(plan.params)  # (for a kernel that is not element-wise: one call each)
            chunk = layout.chunk(0, n, params)
            held = list(zip(params.addresses.tolist(), self.nbytes.tolist()))
            self.whole = None  # (the parameters are separate arrays: the gradients are read as such)
        # the bytes a step writes, in order: the parameters' and the optimizer's own buffers (its slots, EMA
        # and accumulator, which ``variables`` shows). A gradient overlapping them is copied first: read in
        # place, a step could read what it has already written, as one array's update or another task
        held += [(buf.ctypes.data, buf.nbytes) for buf in layout.arrays.values()]
        ranges: list = []
        for lo, hi in sorted((at, at + size) for at, size in held if size):
            if ranges and lo <= ranges[-1][1]:  # (merged: the search reads the last range starting before)
                ranges[-1] = (ranges[-1][0], max(hi, ranges[-1][1]))
            else:
                ranges.append((lo, hi))
        self.lows = np.array([lo for lo, _ in ranges] or [0], dtype=np.intp)
        self.highs = np.array([hi for _, hi in ranges] or [0], dtype=np.intp)
        self.separate = [(chunk, pieces(self.addresses, offsets))]
        self.locate = None

    def work(self, grads: list):
        """The step's work over ``grads`` read in place; ``OVERLAP`` or None (the checked path)."""
        held = tuple(grads)  # (the arrays, held for the step: another thread may change the list)
        found = self._locate(held)
        if found >= 0:
            return OVERLAP if found > len(self.ndims) else None
        work = self.whole if found == -2 and self.whole is not None else self.separate
        work[0][1].arrays = held
        return work

    def overlaps(self, grads: list) -> bool:
        """Whether one of ``grads`` shares memory with a parameter or the optimizer's own buffers."""
        return self._locate(tuple(grads)) > len(self.ndims)

    def _locate(self, held: tuple) -> int:
        locate = self.locate
        if locate is None:
            locate = self.locate = inplace.compiled("locate")
        return locate(
            id(held), _NDARRAY, self.descr, self.ndims, self.dims, self.nbytes, self.lows, self.highs, self.addresses
        )


_NDARRAY = id(np.ndarray)
#: ``_InPlace.work``'s answer for gradients of which one shares memory with a parameter or the optimizer's
#: own buffers: they are copied first (read as they are, a step could read what it has already written)
OVERLAP: list = []


def check_parameters(params: list, owner: str) -> None:
    """Raise unless ``params`` are writeable C-contiguous float32/float64 arrays of one dtype sharing no memory."""
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


def mismatch(layout: Layout, shapes, dtype, whose: str, names=None) -> str | None:
    """How the state in ``layout`` differs from ``whose`` parameters (of ``shapes``, ``dtype`` and
    ``names``, None if unnamed), or None.

    The first difference in words — the number of parameters, the dtype, the first parameter
    of another shape, the names where both sides have them — naming the state's arrays laid
    out for it and both sides' values.
    """
    held = ", ".join(repr(k) for k in layout.sizes)
    state = f"the state (arrays {held})" if held else "the state"
    if len(layout.shapes) != len(shapes):
        return f"{state} is for {len(layout.shapes)} parameters; {whose} parameters are {len(shapes)}"
    if layout.dtype != np.dtype(dtype):
        return f"{state} is in {layout.dtype}; {whose} parameters are {np.dtype(dtype)}"
    for i, (saved, shape) in enumerate(zip(layout.shapes, shapes)):
        if saved != tuple(shape):
            return f"{state} is for parameter {i} of shape {saved}; {whose} parameter {i} has shape {tuple(shape)}"
    if names is not None and layout.names is not None and list(names) != layout.names:
        i = next(k for k, (a, b) in enumerate(zip(layout.names, names)) if a != b)
        return f"{state} is for parameter {i} named {layout.names[i]!r}; {whose} parameter {i} is named {names[i]!r}"
    return None


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


def count_of(n: int) -> str:
    """``1 parameter``, ``3 parameters``."""
    return f"{n} parameter{'s' if n != 1 else ''}"


def _conforming(grads, shapes, dtype) -> bool:
    """Whether ``grads`` are ndarrays of exactly ``shapes`` and ``dtype``: the check of every step.

    By signature, not identity: fresh gradient arrays at each step pass it as cheaply as the same
    ones (an array's shape and dtype can change in place, so identity would not spare it). A
    dtype that is equal but not the same object fails here and passes the full check.
    """
    for g, shape in zip(grads, shapes):
        if type(g) is not np.ndarray or g.shape != shape or g.dtype is not dtype:
            return False
    return True
