"""Where CPython and numpy keep the fields of a tuple and of an array, checked on this interpreter.

``optlab.inplace`` reads a tuple of gradient arrays from compiled code, field by field, as
CPython's and numpy's C API macros do. The offsets come from the C structures' declarations
(as ``ctypes`` lays them out) and are checked once per process on objects of known values;
``layout()`` is None on an interpreter where they differ (a debug or free-threaded build), and
nothing is then read that way.
"""

from __future__ import annotations

import sys

import numpy as np

#: numpy's array flags a gradient read in place must have: C-contiguous and aligned
REQUIRED_FLAGS = 0x0001 | 0x0100

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
