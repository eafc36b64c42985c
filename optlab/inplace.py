"""Gradients read where they are: separate arrays handed to a kernel without a copy.

With the parameters in one flat buffer (``optlab.flat_parameters``), a step over gradients that
are separate arrays used to gather them into one buffer first (``np.concatenate``), and to check
each in Python (its type, shape and dtype): for 500 arrays of 2,000 elements, the copy and the
check cost 0.6-0.9 of Adam's whole step. Here one compiled call reads a tuple of them itself —
its items, and each item's data pointer, shape, flags and dtype — as CPython and numpy lay them
out in memory (the fields their C APIs' macros read), checks each against its parameter, and
returns the arrays' addresses; a kernel then reads each gradient in place (``Pieces``).

The layout is checked once per process on arrays of known values (``optlab.object_layout``); on
an interpreter where it differs (a debug or free-threaded build), nothing is read that way and
every step gathers as before. A list whose items do not all fit (not exactly ``numpy.ndarray``, another
shape or dtype object, not C-contiguous and aligned, or overlapping the parameters) is not read
in place either: the step takes the checked path, which converts, gathers or names the misfit.
"""

from __future__ import annotations

import numpy as np

#: element count of one task of a kernel over pieces (a parameter larger than this is split)
TASK_SIZE = 1 << 14


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


def _misused(self, *args, **kwargs):
    raise TypeError(
        "this update received param or grad as optlab.inplace.Pieces (separate arrays read in place) because its "
        "optimizer class declares elementwise_update = True, which means update only hands them to "
        "@kernel(elementwise=True) kernels; an update that computes with them itself must not declare it "
        "(docs/plugins.md)"
    )


# what an update that computes with ``grad`` or ``param`` would do first: each says why it cannot
for _name in (
    "__array__", "__getitem__", "__setitem__", "__len__", "__iter__", "__neg__", "__abs__", "__float__",
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__pow__", "__rpow__", "__lt__", "__le__", "__gt__", "__ge__", "__matmul__", "__rmatmul__",
    "reshape", "ravel", "copy", "astype", "sum", "mean", "max", "min", "dot", "fill",
):  # fmt: skip
    setattr(Pieces, _name, _misused)


# -- compiled parts (numba imported on first use: ``optlab._inplace_jit``) --------------------------------


def compiled(name: str):
    """The compiled function ``name`` of the numba part (``optlab._inplace_jit``, imported on first use)."""
    from . import _inplace_jit

    return getattr(_inplace_jit, name)


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
