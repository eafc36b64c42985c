"""The compiled part of ``optlab.inplace``: it imports numba, so it is imported on first use.

Module-level functions (not closures) so that numba's on-disk cache finds them again in the next
process: the fields' offsets are module constants, compiled in as such (``object_layout.layout()``
checked them first; a module whose offsets differ is never imported).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from .object_layout import REQUIRED_FLAGS, layout

_FIELD = layout()
if _FIELD is None:  # (callers check layout() first)
    raise ImportError("optlab.inplace: this interpreter's objects are not laid out as checked")
SIZE_AT, ITEMS_AT = _FIELD["size"], _FIELD["items"]
TYPE_AT, DATA_AT, ND_AT = _FIELD["type"], _FIELD["data"], _FIELD["nd"]
DIMS_AT, DESCR_AT, FLAGS_AT = _FIELD["dimensions"], _FIELD["descr"], _FIELD["flags"]


@intrinsic
def at(typingctx, address):
    """The pointer at integer ``address``."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return types.voidptr(address), codegen


@numba.njit(inline="always", cache=True)
def word(address):
    return numba.carray(at(address), 1, np.intp)[0]


@numba.njit(inline="always", cache=True)
def half(address):
    return numba.carray(at(address), 1, np.intc)[0]


@numba.njit(inline="always", cache=True)
def piece(address, n, like):
    """The ``n`` elements of ``like``'s dtype at ``address``, as an array (not owning them)."""
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
    if word(held + SIZE_AT) != n:
        return n
    items = held + ITEMS_AT
    contiguous = True
    following = first = 0  # where the next array's bytes would start, back to back; the first's
    for k in range(n):
        obj = word(items + 8 * k)
        if word(obj + TYPE_AT) != ndarray or word(obj + DESCR_AT) != descr:
            return k
        if half(obj + ND_AT) != ndims[k] or (half(obj + FLAGS_AT) & REQUIRED_FLAGS) != REQUIRED_FLAGS:
            return k
        shape = word(obj + DIMS_AT)
        for d in range(ndims[k]):
            if word(shape + 8 * d) != dims[k, d]:
                return k
        data = word(obj + DATA_AT)
        nbytes = sizes[k]
        if nbytes:  # (an empty array's address is any: it holds no byte)
            # the last parameter starting before its end must end before it: a binary search of
            # ``lows`` (np.searchsorted's generic comparisons compile for 0.4 s, on a first use)
            end, j, top = data + nbytes, 0, lows.shape[0]
            while j < top:
                middle = (j + top) >> 1
                if lows[middle] < end:
                    j = middle + 1
                else:
                    top = middle
            if j and highs[j - 1] > data:
                return n + 1 + k
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
    """``rest`` with its arrays cut to ``s:e`` and its scalars as they are (compiled only)."""
    raise NotImplementedError


@overload(cut)
def _cut(rest, s, e):
    parts = ", ".join(f"rest[{k}][s:e]" if isinstance(t, types.Array) else f"rest[{k}]" for k, t in enumerate(rest))
    namespace: dict = {}
    exec(f"def impl(rest, s, e):\n    return ({parts}{',' if len(rest) == 1 else ''})\n", namespace)
    return namespace["impl"]
