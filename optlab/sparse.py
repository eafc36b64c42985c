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


def rows_of(grad: IndexedSlices, shape: tuple, dtype, owner: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``grad`` checked against a parameter of ``shape`` and ``dtype``: its rows, each once and
    sorted, and their values as ``(rows, row size)`` (repeated rows added up). ``what`` names
    the gradient in errors."""
    indices, values = grad.indices, grad.values
    if not shape:
        raise ValueError(f"{owner}: {what} is an IndexedSlices but its parameter is a scalar (it has no rows)")
    if grad.dense_shape is not None and grad.dense_shape != tuple(shape):
        raise ValueError(f"{owner}: {what} has dense_shape {grad.dense_shape} but its parameter has shape {shape}")
    if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
        raise ValueError(
            f"{owner}: {what}'s indices must be a 1-D array of integers; received shape {indices.shape} "
            f"of dtype {indices.dtype}"
        )
    if values.shape != (indices.size, *shape[1:]):
        raise ValueError(
            f"{owner}: {what}'s values have shape {values.shape}; for {indices.size} rows of a parameter of shape "
            f"{shape} they must have shape {(indices.size, *shape[1:])}"
        )
    if values.dtype != dtype:
        raise ValueError(f"{owner}: {what}'s values have dtype {values.dtype} but its parameter has dtype {dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= shape[0]):
        bad = indices[(indices < 0) | (indices >= shape[0])][0]
        raise ValueError(
            f"{owner}: {what} has row index {bad}, outside [0, {shape[0]}) for a parameter of shape {shape}"
        )
    width = int(np.prod(shape[1:], dtype=np.int64))
    flat = values.reshape(indices.size, width)
    order = np.argsort(indices, kind="stable")  # a repeated row's values stay in the order given
    ordered = indices[order]
    if ordered.size < 2 or (ordered[1:] != ordered[:-1]).all():
        return ordered.astype(np.intp), flat[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts].astype(np.intp), np.add.reduceat(flat[order], starts, axis=0)


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
