"""Flat parameter buffers: layout helpers and the detection of back-to-back views."""

import re

import numpy as np
import pytest

import optlab
from optlab.flat import flat_view


def test_flat_parameters_are_views_of_one_buffer():
    params = optlab.flat_parameters([(2, 3), 4, ()], dtype=np.float64, fill=1.5)
    assert [p.shape for p in params] == [(2, 3), (4,), ()]
    assert params.flat.shape == (11,) and params.flat.dtype == np.float64
    params[1][...] = 7.0
    np.testing.assert_array_equal(params.flat[6:10], 7.0)
    assert params.flat[0] == 1.5
    assert flat_view(params) is not None and np.shares_memory(flat_view(params), params.flat)


@pytest.mark.parametrize(
    ("shapes", "error", "message"),
    [
        ([np.ones(2), np.ones(2)], TypeError, "shape 0 is an array of float64 values; it takes shapes"),
        ([(2,), np.full(3, 2.5, np.float32)], TypeError, "optlab.flatten(arrays)"),
        ([(2, 2.5)], ValueError, "shape 0 is (2, 2.5); a shape is a tuple of integers >= 0"),
        ([3, (4, -1)], ValueError, "shape 1 is (4, -1)"),
        ([3.0], ValueError, "shape 0 is 3.0"),
        ([(True, 2)], ValueError, "shape 0 is (True, 2)"),
        ([None], ValueError, "shape 0 is None"),
    ],
)
def test_flat_parameters_refuses_what_is_not_a_shape(shapes, error, message):
    """Arrays of values were read as shapes: [np.ones(2)] made one (1, 1) parameter, 2.5 became 2."""
    with pytest.raises(error, match=re.escape(message)):
        optlab.flat_parameters(shapes)


def test_flat_parameters_takes_integer_shapes_of_any_integer_type():
    params = optlab.flat_parameters([np.array([2, 3]), (np.int64(4),), np.int32(5), ()])
    assert [p.shape for p in params] == [(2, 3), (4,), (5,), ()]
    assert params.flat.size == 6 + 4 + 5 + 1


def test_flatten_copies_and_flat_like_zeroes():
    arrays = [np.arange(6.0).reshape(2, 3), np.array([9.0, 8.0])]
    flat = optlab.flatten(arrays, dtype=np.float32)
    assert flat.flat.dtype == np.float32
    np.testing.assert_array_equal(flat.flat, [0, 1, 2, 3, 4, 5, 9, 8])
    assert not np.shares_memory(flat.flat, arrays[0])
    like = optlab.flat_like(flat)
    assert like.flat.dtype == np.float32 and not like.flat.any()
    assert [a.shape for a in like] == [(2, 3), (2,)]


@pytest.mark.parametrize(
    "make",
    [
        lambda buf: [buf[:4], buf[5:9]],  # a gap
        lambda buf: [buf[4:8], buf[:4]],  # out of order
        lambda buf: [buf[:4], np.zeros(4)],  # a different buffer
        lambda buf: [buf[:8:2]],  # strided
    ],
    ids=["gap", "order", "other-buffer", "strided"],
)
def test_non_contiguous_layouts_are_not_flat(make):
    assert flat_view(make(np.zeros(16))) is None


def test_views_of_a_buffer_slice_are_flat():
    buf = np.zeros(16)
    views = [buf[2:6], buf[6:10].reshape(2, 2)]
    span = flat_view(views)
    assert span is not None and span.size == 8
    span[:] = 3.0
    np.testing.assert_array_equal(buf[2:10], 3.0)
    assert buf[1] == 0.0 and buf[10] == 0.0
