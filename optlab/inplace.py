"""Gradients read where they are: separate arrays handed to a kernel without a copy.

With the parameters in one flat buffer (``optlab.flat_parameters``), a step over gradients that
are separate arrays used to gather them into one buffer first (``np.concatenate``), and to check
each in Python (its type, shape and dtype): for 500 arrays of 2,000 elements, the copy and the
check cost 0.6-0.9 of Adam's whole step. Here one compiled call reads a tuple of them itself —
its items, and each item's data pointer, shape, flags and dtype — as CPython and numpy lay them
out in memory (the fields their C APIs' macros read), checks each against its parameter, and
returns the arrays' addresses; a kernel then reads each gradient in place (``Pieces``).

The layout is checked once per process on arrays of known values, through ``ctypes``; on an
interpreter where it differs (a debug or free-threaded build), ``layout()`` is None and every
step gathers as before. A list whose items do not all fit (not exactly ``numpy.ndarray``, another
shape or dtype object, not C-contiguous and aligned, or overlapping the parameters) is not read
in place either: the step takes the checked path, which converts, gathers or names the misfit.
"""

from __future__ import annotations

import sys

import numpy as np

#: element count of one task of a kernel over pieces (a parameter larger than this is split)
TASK_SIZE = 1 << 14

#: numpy's array flags a gradient read in place must have: C-contiguous and aligned
_REQUIRED_FLAGS = 0x0001 | 0x0100

_LAYOUT: dict | bool | None = False  # False: not checked yet


def _offsets() -> dict:
    """The offsets of the fields read, from the C structures' declarations (as ``ctypes`` lays them out)."""
    import ctypes

    class TupleObject(ctypes.Structure):  # CPython's PyTupleObject (Include/cpython/tupleobject.h)
        _fields_ = [("refcnt", ctypes.c_ssize_t), ("type", ctypes.c_void_p), ("size", ctypes.c_ssize_t),
                    ("items", ctypes.c_void_p * 1)]  # fmt: skip

    class ArrayObject(ctypes.Structure):  # numpy's PyArrayObject_fields (numpy/ndarraytypes.h)
        _fields_ = [("refcnt", ctypes.c_ssize_t), ("type", ctypes.c_void_p), ("data", ctypes.c_void_p),
                    ("nd", ctypes.c_int), ("dimensions", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                    ("base", ctypes.c_void_p), ("descr", ctypes.c_void_p), ("flags", ctypes.c_int)]  # fmt: skip

    field = {"size": TupleObject.size.offset, "items": TupleObject.items.offset}
    for name in ("type", "data", "nd", "dimensions", "descr", "flags"):
        field[name] = getattr(ArrayObject, name).offset
    return field


def _reads_right(field: dict) -> bool:
    """Whether ``field``'s offsets read known lists and arrays right (through ``ctypes``).

    The fields that hold values are compared first (an object's type, an array's data address,
    dimension count, dtype and flags, a tuple's length and items): they prove the objects' headers
    are laid out as declared before the one pointer to other memory, an array's dimensions, is
    followed."""
    import ctypes

    word = ctypes.c_ssize_t.from_address
    half = ctypes.c_int.from_address
    probe = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = [probe, probe[:, ::2], np.zeros(3, np.float64), np.zeros((), np.int8)]
    for a in arrays:
        at = id(a)
        if word(at + field["type"]).value != id(np.ndarray) or word(at + field["data"]).value != a.ctypes.data:
            return False
        if half(at + field["nd"]).value != a.ndim or word(at + field["descr"]).value != id(a.dtype):
            return False
        if bool(half(at + field["flags"]).value & 1) != a.flags.c_contiguous:
            return False
    held = tuple(arrays)
    if word(id(held) + field["size"]).value != len(held):
        return False
    for k, a in enumerate(held):
        if word(id(held) + field["items"] + 8 * k).value != id(a):
            return False
    for a in arrays:
        dims = word(id(a) + field["dimensions"]).value
        if any(word(dims + 8 * d).value != n for d, n in enumerate(a.shape)):
            return False
    return True


def layout() -> dict | None:
    """The offsets of the fields read in place, checked on this interpreter; None where they differ."""
    global _LAYOUT
    if _LAYOUT is False:
        # (a free-threaded build's objects start with other fields; 64-bit words are read)
        ok = sys.implementation.name == "cpython" and sys.maxsize == 2**63 - 1
        ok = ok and getattr(sys, "_is_gil_enabled", lambda: True)()
        field = _offsets()
        _LAYOUT = field if ok and _reads_right(field) else None
    return _LAYOUT


def tasks_of(offsets: np.ndarray) -> np.ndarray:
    """``(piece, start, stop)`` rows over pieces of ``offsets`` (element ranges), each at most
    ``TASK_SIZE`` long (the work a kernel over pieces shares among threads); empty pieces have none."""
    rows = []
    for k in range(len(offsets) - 1):
        size = int(offsets[k + 1] - offsets[k])
        rows.extend((k, a, min(a + TASK_SIZE, size)) for a in range(0, size, TASK_SIZE))
    return np.array(rows, dtype=np.intp).reshape(-1, 3)


class Pieces:
    """A flat array left where it is, in pieces: piece ``k`` (elements ``offsets[k]:offsets[k+1]``
    of the flat array) is the array at address ``addresses[k]``; ``tasks`` split the pieces for a
    kernel's threads (``tasks_of``). An element-wise kernel given a gradient in pieces as its
    second argument (and the parameters as an array or in pieces as its first) reads them in place
    (``Kernel``); ``gathered()`` copies them into one array for whatever needs one. Like an array,
    it has a ``dtype`` and a ``shape``, ``(size,)``; ``like`` is an empty array of the dtype."""

    __slots__ = ("addresses", "arrays", "axis", "dtype", "like", "offsets", "scratch", "shape", "tasks")

    def __init__(self, addresses, offsets, tasks, scratch, axis, dtype):
        self.addresses, self.offsets, self.tasks = addresses, offsets, tasks
        self.scratch, self.axis = scratch, axis  # (a flat array to gather into; the axis to gather along)
        self.dtype, self.like, self.shape = np.dtype(dtype), np.empty(0, dtype), (int(offsets[-1]),)
        self.arrays: tuple = ()  # the arrays read, held from the step's start (for ``gathered``)

    def gathered(self) -> np.ndarray:
        """The pieces copied into one flat array (``scratch``)."""
        return np.concatenate(self.arrays, axis=self.axis, out=self.scratch())


# -- compiled parts (numba imported on first use) ------------------------------------------------------

_COMPILED: dict = {}


def compiled(name: str):
    """The compiled function ``name`` of this module's numba part (made on first use)."""
    if not _COMPILED:
        _COMPILED.update(_compile())
    return _COMPILED[name]


def _compile() -> dict:
    import numba
    from numba import types
    from numba.extending import intrinsic, overload

    field = layout()
    size_at, items_at = field["size"], field["items"]
    type_at, data_at, nd_at = field["type"], field["data"], field["nd"]
    dims_at, descr_at, flags_at = field["dimensions"], field["descr"], field["flags"]

    @intrinsic
    def at(typingctx, address):
        """The pointer at integer ``address``."""
        if not isinstance(address, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

        return types.voidptr(address), codegen

    @numba.njit(inline="always")
    def word(address):
        return numba.carray(at(address), 1, np.intp)[0]

    @numba.njit(inline="always")
    def half(address):
        return numba.carray(at(address), 1, np.intc)[0]

    @numba.njit(inline="always")
    def piece(address, n, like):
        return numba.carray(at(address), n, like.dtype)

    @numba.njit(cache=True)
    def locate(held, ndarray, descr, ndims, dims, sizes, lows, highs, addresses):
        """Read the tuple at address ``held``: -1 when its items are ndarrays of the dtype object
        ``descr``, of ``ndims[k]`` dimensions ``dims[k]``, C-contiguous, aligned and outside the
        bytes ``lows[j]:highs[j]`` (the parameters', in order), their data addresses then in
        ``addresses`` (-2: and back to back, where the first that holds bytes starts in
        ``addresses[0]``); else the index of the first that is not (the tuple's length if that
        differs; ``n + 1 + k`` if array ``k`` overlaps a parameter)."""
        n = ndims.shape[0]
        if word(held + size_at) != n:
            return n
        items = held + items_at
        contiguous = True
        following = first = 0  # where the next array's bytes would start, back to back; the first's
        for k in range(n):
            obj = word(items + 8 * k)
            if word(obj + type_at) != ndarray or word(obj + descr_at) != descr:
                return k
            if half(obj + nd_at) != ndims[k] or (half(obj + flags_at) & _REQUIRED_FLAGS) != _REQUIRED_FLAGS:
                return k
            shape = word(obj + dims_at)
            for d in range(ndims[k]):
                if word(shape + 8 * d) != dims[k, d]:
                    return k
            data = word(obj + data_at)
            nbytes = sizes[k]
            if nbytes:  # (the last parameter range starting before this array's end must end before it)
                j = np.searchsorted(lows, data + nbytes)
                if j and highs[j - 1] > data:
                    return n + 1 + k
            if nbytes:  # (an empty array's address is any: it holds no byte)
                if not following:
                    first = data
                elif data != following:
                    contiguous = False
                following = data + nbytes
            addresses[k] = data
        if contiguous and following:
            addresses[0] = first  # (the first array that holds bytes: the whole gradient starts there)
        return -2 if contiguous else -1

    def cut(rest, s, e):
        raise NotImplementedError  # compiled only (overloaded below)

    @overload(cut)
    def _cut(rest, s, e):
        """``rest`` with its arrays cut to ``s:e`` and its scalars as they are."""
        parts = ", ".join(f"rest[{k}][s:e]" if isinstance(t, types.Array) else f"rest[{k}]" for k, t in enumerate(rest))
        namespace: dict = {}
        exec(f"def impl(rest, s, e):\n    return ({parts}{',' if len(rest) == 1 else ''})\n", namespace)
        return namespace["impl"]

    return {"locate": locate, "piece": piece, "cut": cut}


def over_pieces(tasks, addresses, offsets, x, *rest):
    """``KERNEL(x, g, *rest)`` over a gradient in pieces: each task's elements of ``x``, of the piece
    (read in place) and of ``rest``'s arrays, ``rest``'s scalars as they are (``KERNEL`` and
    ``prange`` are bound per kernel variant: ``Kernel``)."""
    for t in prange(tasks.shape[0]):  # noqa: F821 (bound by the variant)
        k = tasks[t, 0]
        s = offsets[k] + tasks[t, 1]
        e = offsets[k] + tasks[t, 2]
        g = piece(addresses[k] + tasks[t, 1] * x.itemsize, e - s, x)  # noqa: F821
        KERNEL(x[s:e], g, *cut(rest, s, e))  # noqa: F821


def over_both(tasks, xaddresses, gaddresses, offsets, like, *rest):
    """``over_pieces`` with the parameters in pieces too (at ``xaddresses``; ``like``, an empty array
    of their dtype)."""
    for t in prange(tasks.shape[0]):  # noqa: F821 (bound by the variant)
        k = tasks[t, 0]
        s = offsets[k] + tasks[t, 1]
        e = offsets[k] + tasks[t, 2]
        skip = tasks[t, 1] * like.itemsize
        x = piece(xaddresses[k] + skip, e - s, like)  # noqa: F821
        g = piece(gaddresses[k] + skip, e - s, like)  # noqa: F821
        KERNEL(x, g, *cut(rest, s, e))  # noqa: F821
