"""im2col / col2im against per-element loops (Caffe's im2col_nd layout)."""
import itertools

import numpy
import pytest

from caffeish.errors import CaffeishError
from caffeish.im2col import col2im, conv_output_shape, conv_output_size, im2col

CASES = [
    # spatial, kernel, stride, pad, dilation
    ((5, 6), (3, 3), (1, 1), (0, 0), (1, 1)),
    ((5, 6), (3, 2), (2, 1), (1, 0), (1, 1)),
    ((7, 6), (3, 3), (2, 3), (2, 1), (2, 1)),
    ((4, 4), (1, 1), (1, 1), (0, 0), (1, 1)),
    ((3, 4, 5), (2, 3, 2), (1, 2, 2), (1, 0, 1), (1, 1, 2)),
    ((2, 3), (3, 3), (2, 2), (0, 0), (1, 1)),  # kernel > input: Caffe's truncating division gives one output
]


def naive_im2col(x, kernel, stride, pad, dilation):
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    out = conv_output_shape(spatial, kernel, stride, pad, dilation)
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    cols = numpy.zeros((n, c * len(offsets), int(numpy.prod(out))))
    for b in range(n):
        for ch in range(c):
            for ki, off in enumerate(offsets):
                for li, pos in enumerate(itertools.product(*(range(o) for o in out))):
                    src = [p * s - q + o * d for p, s, q, o, d in zip(pos, stride, pad, off, dilation)]
                    if all(0 <= v < size for v, size in zip(src, spatial)):
                        cols[b, ch * len(offsets) + ki, li] = x[(b, ch) + tuple(src)]
    return cols


def naive_col2im(cols, shape, kernel, stride, pad, dilation):
    n, c = shape[:2]
    spatial = shape[2:]
    out = conv_output_shape(spatial, kernel, stride, pad, dilation)
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    x = numpy.zeros(shape)
    for b in range(n):
        for ch in range(c):
            for ki, off in enumerate(offsets):
                for li, pos in enumerate(itertools.product(*(range(o) for o in out))):
                    src = [p * s - q + o * d for p, s, q, o, d in zip(pos, stride, pad, off, dilation)]
                    if all(0 <= v < size for v, size in zip(src, spatial)):
                        x[(b, ch) + tuple(src)] += cols[b, ch * len(offsets) + ki, li]
    return x


@pytest.mark.parametrize("spatial,kernel,stride,pad,dilation", CASES)
def test_im2col_matches_loops(spatial, kernel, stride, pad, dilation):
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((2, 3) + spatial)
    cols = im2col(x, kernel, stride, pad, dilation)
    numpy.testing.assert_array_equal(cols, naive_im2col(x, kernel, stride, pad, dilation))


@pytest.mark.parametrize("spatial,kernel,stride,pad,dilation", CASES)
def test_col2im_matches_loops_and_is_adjoint(spatial, kernel, stride, pad, dilation):
    rng = numpy.random.default_rng(4)
    shape = (2, 3) + spatial
    cols_shape = im2col(numpy.zeros(shape), kernel, stride, pad, dilation).shape
    cols = rng.standard_normal(cols_shape)
    x = col2im(cols, shape, kernel, stride, pad, dilation)
    numpy.testing.assert_allclose(x, naive_col2im(cols, shape, kernel, stride, pad, dilation), rtol=1e-12)
    # <im2col(v), cols> == <v, col2im(cols)>
    v = rng.standard_normal(shape)
    numpy.testing.assert_allclose((im2col(v, kernel, stride, pad, dilation) * cols).sum(), (v * x).sum(),
                                  rtol=1e-10)


def test_col2im_accumulates_overlaps():
    # 3x3 kernel, stride 1 on 4x4 of ones: each pixel is counted once per window covering it.
    x = col2im(numpy.ones((1, 9, 4)), (1, 1, 4, 4), (3, 3), (1, 1), (0, 0), (1, 1))
    expected = numpy.outer([1, 2, 2, 1], [1, 2, 2, 1])
    numpy.testing.assert_array_equal(x[0, 0], expected)


def test_output_size_follows_caffe():
    assert conv_output_size(227, 11, 4, 0, 1) == 55
    assert conv_output_size(7, 3, 2, 1, 2) == 3
    assert conv_output_size(2, 3, 2, 0, 1) == 1     # C++ truncation of -1 / 2
    assert conv_output_size(2, 3, 1, 0, 1) == 0
    with pytest.raises(CaffeishError, match="empty"):
        im2col(numpy.zeros((1, 1, 2, 2)), (3, 3), (1, 1), (0, 0), (1, 1))
