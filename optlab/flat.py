"""Parameters as views of one flat contiguous buffer.

When every parameter (and every gradient) is a view into one flat buffer,
laid out back to back, an optimizer step is one kernel call over the whole
buffer instead of one call per array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class FlatArrays(list):
    """A list of array views into one flat buffer, available as ``.flat``."""

    flat: np.ndarray

    def __init__(self, views, flat: np.ndarray):
        super().__init__(views)
        self.flat = flat


def _shape(s, i: int) -> tuple[int, ...]:
    """Shape ``i`` of ``flat_parameters`` (a tuple of integers >= 0, or one integer) as a tuple of ints.

    Arrays of values are refused, not read as shapes: ``flat_parameters([np.ones(2)])`` made a
    ``(1, 1)`` array of the values 1, 1 (``flatten`` is what copies arrays into one buffer)."""
    if isinstance(s, np.ndarray) and s.dtype.kind not in "iu":
        raise TypeError(
            f"flat_parameters: shape {i} is an array of {s.dtype} values; it takes shapes, e.g. [(3, 4), (4,)]. "
            "To copy arrays into one flat buffer: optlab.flatten(arrays); zeros shaped like them: "
            "optlab.flat_like(arrays)"
        )
    dims = (s,) if np.isscalar(s) else s
    try:
        dims = tuple(dims)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(
            f"flat_parameters: shape {i} is {s!r}; a shape is a tuple of integers >= 0, or one integer, "
            "e.g. [(3, 4), 4]"
        )
    return tuple(int(d) for d in dims)


def flat_parameters(shapes: Sequence, dtype=np.float32, fill: float = 0.0) -> FlatArrays:
    """Arrays of the given ``shapes`` as views of one new flat buffer of ``dtype``."""
    shapes = [_shape(s, i) for i, s in enumerate(shapes)]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = np.full(sum(sizes), fill, dtype=dtype)
    views, start = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(flat[start : start + size].reshape(shape))
        start += size
    return FlatArrays(views, flat)


def flatten(arrays: Sequence[np.ndarray], dtype=None) -> FlatArrays:
    """Copy ``arrays`` into one new flat buffer; returns views shaped like the inputs."""
    arrays = [np.asarray(a) for a in arrays]
    dtype = np.result_type(*arrays) if dtype is None else dtype
    out = flat_parameters([a.shape for a in arrays], dtype)
    for view, a in zip(out, arrays):
        view[...] = a
    return out


def flat_like(arrays: Sequence[np.ndarray]) -> FlatArrays:
    """Zero arrays shaped like ``arrays`` (same dtype), views of one flat buffer: gradient storage."""
    return flat_parameters([a.shape for a in arrays], arrays[0].dtype if len(arrays) else np.float32)


def flat_view(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """The 1-D view spanning ``arrays`` if they lie back to back in one buffer, else None."""
    if not arrays:
        return None
    first = arrays[0]
    base = first.base
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous:
        return None
    dtype = first.dtype
    itemsize = dtype.itemsize
    base_addr = base.__array_interface__["data"][0]
    addr = first.__array_interface__["data"][0]
    start = addr - base_addr
    if start % itemsize:
        return None
    expected = addr
    total = 0
    for a in arrays:
        if a.base is not base or a.dtype != dtype or not a.flags.c_contiguous:
            return None
        if a.size and a.__array_interface__["data"][0] != expected:  # (an empty view's address is any)
            return None
        expected += a.nbytes
        total += a.size
    flat = base.reshape(-1).view(dtype) if base.dtype == dtype else None
    if flat is None:
        return None
    offset = start // itemsize
    return flat[offset : offset + total]
