"""Sparse gradients: ``IndexedSlices``, the gradient of some rows of a parameter.

An embedding table's gradient touches only the rows a batch looked up. ``IndexedSlices(values,
indices)`` says so (TensorFlow's name and argument order): ``values[k]`` is the gradient of row
``indices[k]`` of the parameter, rows not listed have gradient zero, and an index listed twice
adds its values up. An optimizer's step on it gives the same numbers as its step on the dense
gradient (Keras's rule: its ``test_sparse_correctness``); where the rule's update of a row with
a zero gradient leaves the row and its state as they are (``Optimizer.updates_rows_alone``:
SGD without momentum, Adagrad), only the listed rows are read and written, so the step costs
in proportion to them, not to the table.
"""

from __future__ import annotations

import numpy as np

from .kernels import kernel


class IndexedSlices:
    """The gradient ``values`` of the rows ``indices`` of a parameter (of ``dense_shape``, if given).

    ``values`` has shape ``(len(indices), *parameter.shape[1:])``; ``indices`` are integers in
    ``[0, parameter.shape[0])``, in any order, repeats allowed (they add up).
    """

    __slots__ = ("dense_shape", "indices", "values")

    def __init__(self, values, indices, dense_shape=None):
        self.values = np.asarray(values)
        self.indices = np.asarray(indices)
        self.dense_shape = None if dense_shape is None else tuple(int(n) for n in dense_shape)

    def __repr__(self) -> str:
        shape = f", dense_shape={self.dense_shape}" if self.dense_shape is not None else ""
        return f"IndexedSlices({self.indices.size} rows of shape {self.values.shape[1:]}{shape})"

    def to_dense(self, shape=None, dtype=None) -> np.ndarray:
        """The dense gradient: zeros, plus each row's values (repeated rows added up)."""
        shape = tuple(shape) if shape is not None else self.dense_shape
        if shape is None:
            raise ValueError("IndexedSlices.to_dense: give the dense shape (it has no dense_shape)")
        dense = np.zeros(shape, dtype if dtype is not None else self.values.dtype)
        np.add.at(dense, self.indices, self.values)
        return dense


def rows_of(grad: IndexedSlices, shape: tuple, dtype, owner: str, what) -> tuple[np.ndarray, np.ndarray]:
    """``grad`` checked against a parameter of ``shape`` and ``dtype``: its rows, each once and
    sorted, and their values as ``(rows, row size)`` (repeated rows added up). ``what`` names
    the gradient in errors (a string, or a function making it: only an error pays for it)."""
    indices, values = grad.indices, grad.values
    wrong = _mismatch(indices, values, grad.dense_shape, tuple(shape), dtype)
    if wrong is None:
        rows, merged = merge_rows(indices.astype(np.intp, copy=False), values.reshape(indices.size, -1))
        if not rows.size or (rows[0] >= 0 and rows[-1] < shape[0]):  # sorted: the ends say it
            return rows, merged
        bad = rows[0] if rows[0] < 0 else rows[-1]
        wrong = f" has row index {bad}, outside [0, {shape[0]}) for a parameter of shape {tuple(shape)}"
    raise ValueError(f"{owner}: {what() if callable(what) else what}{wrong}")


def _mismatch(indices, values, dense_shape, shape: tuple, dtype) -> str | None:
    """What is wrong with an IndexedSlices for a parameter of ``shape`` and ``dtype`` (the end of
    a sentence about the gradient), or None; the rows' range is checked once they are sorted."""
    if not shape:
        return " is an IndexedSlices but its parameter is a scalar (it has no rows)"
    if dense_shape is not None and dense_shape != shape:
        return f" has dense_shape {dense_shape} but its parameter has shape {shape}"
    if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
        return f"'s indices must be a 1-D array of integers; received shape {indices.shape} of dtype {indices.dtype}"
    if values.shape != (indices.size, *shape[1:]):
        return (
            f"'s values have shape {values.shape}; for {indices.size} rows of a parameter of shape "
            f"{shape} they must have shape {(indices.size, *shape[1:])}"
        )
    if values.dtype != dtype:
        return f"'s values have dtype {values.dtype} but its parameter has dtype {dtype}"
    return None


@kernel(parallel=False)
def merge_rows(indices, values):
    """The rows ``indices`` name, sorted and each once, and their values added up (a repeated
    row's values in the order given): one pass after a stable sort, no temporaries per row."""
    n = indices.shape[0]
    order = np.argsort(indices, kind="mergesort")  # stable
    count = 0
    for k in range(n):
        if k == 0 or indices[order[k]] != indices[order[k - 1]]:
            count += 1
    rows = np.empty(count, np.intp)
    merged = np.zeros((count, values.shape[1]), values.dtype)
    out = -1
    for k in range(n):
        src = order[k]
        if k == 0 or indices[src] != indices[order[k - 1]]:
            out += 1
            rows[out] = indices[src]
        for j in range(values.shape[1]):
            merged[out, j] += values[src, j]
    return rows, merged


class Densified:
    """The dense gradient an ``IndexedSlices`` stands for, in a buffer kept between steps: only
    the rows written last time are zeroed again, so making it costs the rows, not the table."""

    __slots__ = ("buffer", "rows")

    def __init__(self, shape, dtype):
        self.buffer = np.zeros(shape, dtype)
        self.rows = np.zeros(0, np.intp)

    def of(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        table = self.buffer.reshape(self.buffer.shape[0], -1)
        table[self.rows] = 0
        table[rows] = values
        self.rows = rows
        return self.buffer
