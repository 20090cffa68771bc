"""Batched N-D im2col / col2im (Caffe's ``im2col_nd`` layout), for numpy and CuPy alike.

For a batch ``x`` of shape ``(N, C, *spatial)`` the columns have shape
``(N, C * prod(kernel), prod(out))``: row ``c * prod(kernel) + k`` (``k`` the
kernel offset in row-major order) holds, for every output position, the input
value that offset sees -- or 0 where it falls in the padding (or beyond it).
This is exactly Caffe's per-image column buffer, stacked over the batch, so a
weight blob ``(num_output, C/group, *kernel)`` flattened to 2-D multiplies it.

Both functions loop over the kernel offsets only; each step is one strided
slice over the whole batch.  ``col2im`` is the adjoint: it accumulates the
overlapping patches and drops what falls in the padding.
"""
import itertools

from .backend import get_array_module
from .errors import CaffeishError


def conv_output_size(size, kernel, stride, pad, dilation):
    """Caffe's convolution output length along one axis.

    ``(size + 2 pad - extent) / stride + 1`` with C++'s integer division, which
    truncates toward zero: a kernel a little larger than the padded input still
    gives one output when ``stride`` > 1 (the missing values read as 0).
    """
    extent = dilation * (kernel - 1) + 1
    num = size + 2 * pad - extent
    quotient = num // stride if num >= 0 else -((-num) // stride)
    return quotient + 1


def conv_output_shape(spatial, kernel, stride, pad, dilation):
    return tuple(conv_output_size(*a) for a in zip(spatial, kernel, stride, pad, dilation))


def _geometry(spatial, kernel, stride, pad, dilation, out_shape):
    """The padded extent needed on each axis, and the slices each kernel offset reads."""
    nd = len(spatial)
    for name, values in (("kernel", kernel), ("stride", stride), ("pad", pad), ("dilation", dilation)):
        if len(values) != nd:
            raise CaffeishError(f"im2col: {name} {tuple(values)} has {len(values)} values for {nd} spatial axes")
    if out_shape is None:
        out_shape = conv_output_shape(spatial, kernel, stride, pad, dilation)
    if any(o <= 0 for o in out_shape):
        raise CaffeishError(f"im2col: output size {tuple(out_shape)} is empty for input {tuple(spatial)}, "
                            f"kernel {tuple(kernel)}, stride {tuple(stride)}, pad {tuple(pad)}, "
                            f"dilation {tuple(dilation)}")
    padded = []
    for size, k, s, p, d, o in zip(spatial, kernel, stride, pad, dilation, out_shape):
        # The furthest element any window reads (exclusive), in padded coordinates.
        needed = (o - 1) * s + d * (k - 1) + 1
        padded.append(max(size + 2 * p, needed))

    def slices(offset):
        return tuple(slice(i * d, i * d + s * (o - 1) + 1, s)
                     for i, s, d, o in zip(offset, stride, dilation, out_shape))
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    return tuple(out_shape), tuple(padded), offsets, slices


def _interior(spatial, pad):
    return tuple(slice(p, p + size) for size, p in zip(spatial, pad))


def im2col(x, kernel, stride, pad, dilation, out_shape=None):
    """``x`` (N, C, *spatial) -> columns (N, C * prod(kernel), prod(out_shape))."""
    xp = get_array_module(x)
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    out_shape, padded_shape, offsets, slices = _geometry(spatial, kernel, stride, pad, dilation, out_shape)
    if padded_shape == tuple(spatial):
        source = x
    else:
        source = xp.zeros((n, c) + padded_shape, dtype=x.dtype)
        source[(slice(None), slice(None)) + _interior(spatial, pad)] = x
    cols = xp.empty((n, c, len(offsets)) + out_shape, dtype=x.dtype)
    for k, offset in enumerate(offsets):
        cols[:, :, k] = source[(slice(None), slice(None)) + slices(offset)]
    return cols.reshape(n, c * len(offsets), -1)


def col2im(cols, x_shape, kernel, stride, pad, dilation, out_shape=None):
    """Columns (N, C * prod(kernel), prod(out)) -> (N, C, *spatial), overlaps summed, padding dropped."""
    xp = get_array_module(cols)
    n, c = x_shape[:2]
    spatial = tuple(x_shape[2:])
    out_shape, padded_shape, offsets, slices = _geometry(spatial, kernel, stride, pad, dilation, out_shape)
    expect = (n, c * len(offsets), int(_prod(out_shape)))
    if tuple(cols.shape) != expect:
        raise CaffeishError(f"col2im: columns of shape {tuple(cols.shape)} do not match {expect} "
                            f"for input {tuple(x_shape)}")
    cols = cols.reshape((n, c, len(offsets)) + out_shape)
    target = xp.zeros((n, c) + padded_shape, dtype=cols.dtype)
    for k, offset in enumerate(offsets):
        # Within one offset the strided positions are distinct, so += does not lose overlaps.
        target[(slice(None), slice(None)) + slices(offset)] += cols[:, :, k]
    if padded_shape == spatial:
        return target
    return target[(slice(None), slice(None)) + _interior(spatial, pad)]


def _prod(values):
    result = 1
    for v in values:
        result *= int(v)
    return result
