"""Batched N-D im2col / col2im in Caffe's ``im2col_nd`` layout, for numpy and CuPy alike: per image
(``im2col``, ``col2im``) or channel-major for the whole batch (``im2col_cm``, ``col2im_cm``, ``col2im_cm_wide``),
and the convolution geometry they share (``conv_output_shape``, ``geometry``).
"""
import itertools
import math

import numpy

from .backend import get_array_module
from .cpu import buffer, parallel_copy, parallel_for
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


def geometry(spatial, kernel, stride, pad, dilation, out_shape):
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


def _as_strided(xp, array, shape, strides, offset=0):
    """A view of ``array``'s memory from element ``offset`` on, with the given shape and byte strides.

    Contiguous numpy arrays go through the plain ndarray constructor, cheaper per call than ``as_strided``: it
    counts where a view is made per kernel offset and per chunk of images (see bench/README.md, Tuning history)."""
    if xp is numpy and array.flags.c_contiguous:
        return numpy.ndarray(tuple(shape), array.dtype, array, offset * array.itemsize, tuple(strides))
    return xp.lib.stride_tricks.as_strided(array[offset:] if offset else array, shape=tuple(shape),
                                           strides=tuple(strides))


def _pad_into(x, pad, padded_shape, slot):
    """``x`` (N, C, *spatial) centred (offset ``pad``) in zeros of (N, C, *padded_shape); ``x`` if none needed."""
    spatial = tuple(x.shape[2:])
    if tuple(padded_shape) == spatial:
        return x
    xp = get_array_module(x)
    target = buffer(xp, x.dtype, slot, tuple(x.shape[:2]) + tuple(padded_shape))
    # Only the frame is zeroed; the interior is overwritten.
    for axis, (size, p, full) in enumerate(zip(spatial, pad, padded_shape)):
        index = [slice(None)] * target.ndim
        if p:
            index[2 + axis] = slice(0, p)
            target[tuple(index)] = 0
        if full > p + size:
            index[2 + axis] = slice(p + size, full)
            target[tuple(index)] = 0
    parallel_copy(target[(slice(None), slice(None)) + _interior(spatial, pad)], x)
    return target


def _window_view(xp, source, kernel, stride, dilation, out_shape, channel_major):
    """A strided view of ``source`` (N, C, *padded): every kernel offset for every output position.

    channel_major: (C, *kernel, N, *out); otherwise (N, C, *kernel, *out).  No copy is made.
    """
    s = source.strides
    n, c = source.shape[:2]
    k_strides = tuple(s[2 + a] * d for a, d in enumerate(dilation))
    o_strides = tuple(s[2 + a] * st for a, st in enumerate(stride))
    if channel_major:
        return _as_strided(xp, source, (c,) + tuple(kernel) + (n,) + tuple(out_shape),
                           (s[1],) + k_strides + (s[0],) + o_strides)
    return _as_strided(xp, source, (n, c) + tuple(kernel) + tuple(out_shape), (s[0], s[1]) + k_strides + o_strides)


def im2col(x, kernel, stride, pad, dilation, out_shape=None):
    """``x`` (N, C, *spatial) -> columns (N, C * prod(kernel), prod(out_shape)).

    Row ``c * prod(kernel) + k`` (``k`` the kernel offset in row-major order) holds, for every output
    position, the input value that offset sees -- or 0 where it falls in the padding (or beyond it).
    This is exactly Caffe's per-image column buffer, stacked over the batch, so a weight blob
    ``(num_output, C/group, *kernel)`` flattened to 2-D multiplies it.  One copy from a strided view of
    the (padded) input that holds every kernel offset for every output position.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    out_shape, padded_shape, offsets, _ = geometry(x.shape[2:], kernel, stride, pad, dilation, out_shape)
    source = _pad_into(x, pad, padded_shape, "im2col.pad")
    cols = xp.empty((n, c) + tuple(kernel) + out_shape, dtype=x.dtype)
    cols[...] = _window_view(xp, source, kernel, stride, dilation, out_shape, channel_major=False)
    return cols.reshape(n, c * len(offsets), -1)


def col2im(cols, x_shape, kernel, stride, pad, dilation, out_shape=None):
    """Columns (N, C * prod(kernel), prod(out)) -> (N, C, *spatial), overlaps summed, padding dropped.

    The adjoint of ``im2col``: a loop over the kernel offsets only (each step one strided slice over the
    whole batch), summing the overlapping patches and dropping what falls in the padding.
    """
    xp = get_array_module(cols)
    n, c = x_shape[:2]
    spatial = tuple(x_shape[2:])
    out_shape, padded_shape, offsets, slices = geometry(spatial, kernel, stride, pad, dilation, out_shape)
    expect = (n, c * len(offsets), int(math.prod(out_shape)))
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


# -- channel-major columns: one GEMM for the whole batch ----------------------------------------
def im2col_cm(x, kernel, stride, pad, dilation, out_shape=None, slot=None):
    """``x`` (N, C, *spatial) -> channel-major columns (C * prod(kernel), N * prod(out)).

    Row ``c * prod(kernel) + k`` is Caffe's column row for channel ``c`` and kernel offset ``k``,
    the images side by side along the columns, so that a weight matrix (O, C * prod(kernel))
    multiplies the whole batch in one GEMM (rows of a group are contiguous: split C into groups).
    One strided copy from the (padded) input; with ``slot`` the result lives in that work buffer
    (and so does the padded input, in ``slot + '.pad'``).

    The channel-major functions (this, ``col2im_cm``, ``col2im_cm_wide``) can write into work buffers
    (``caffeish.cpu.workspace``) that are allocated once and reused by every layer, as Caffe's column
    buffer is.  Their element-wise copies and sums are split across threads (``caffeish.cpu.parallel_for``).
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    out_shape, padded_shape, offsets, _ = geometry(x.shape[2:], kernel, stride, pad, dilation, out_shape)
    source = _pad_into(x, pad, padded_shape, None if slot is None else slot + ".pad")
    shape = (c,) + tuple(kernel) + (n,) + out_shape
    cols = buffer(xp, x.dtype, slot, shape)
    parallel_copy(cols, _window_view(xp, source, kernel, stride, dilation, out_shape, channel_major=True))
    return cols.reshape(c * len(offsets), n * math.prod(out_shape))


def col2im_cm(cols, out, kernel, stride, pad, dilation, out_shape=None, slot=None):
    """The adjoint of ``im2col_cm``: channel-major columns -> ``out`` (N, C, *spatial), overwritten.

    Overlapping patches are summed and what falls in the padding dropped.  ``slot`` names the work
    buffer for the padded sum (none is needed when there is no padding).  Returns ``out``.
    """
    xp = get_array_module(cols)
    n, c = out.shape[:2]
    spatial = tuple(out.shape[2:])
    out_shape, padded_shape, offsets, slices = geometry(spatial, kernel, stride, pad, dilation, out_shape)
    expect = (c * len(offsets), n * math.prod(out_shape))
    if tuple(cols.shape) != expect:
        raise CaffeishError(f"col2im: columns of shape {tuple(cols.shape)} do not match {expect} "
                            f"for input {(n, c) + spatial}")
    padded = padded_shape != spatial
    target = buffer(xp, cols.dtype, slot, (n, c) + padded_shape) if padded else out
    cols = cols.reshape((c,) + tuple(kernel) + (n,) + out_shape)
    disjoint = _disjoint(kernel, stride, dilation)
    covers = disjoint and _covers(padded_shape, kernel, stride, dilation, out_shape)
    interior = (slice(None), slice(None)) + _interior(spatial, pad)

    def channels(c0, c1):  # channels are independent: one part per thread
        part = target[:, c0:c1]
        if not covers:
            part[...] = 0
        if disjoint:
            # Windows that do not overlap: every position is written at most once, so assign.
            _window_view(xp, part, kernel, stride, dilation, out_shape, channel_major=True)[...] = cols[c0:c1]
        else:
            swapped = part.swapaxes(0, 1)  # (C, N, *padded): the columns' axis order
            for offset in offsets:
                swapped[(slice(None), slice(None)) + slices(offset)] += cols[(slice(c0, c1),) + offset]
        if padded:
            out[:, c0:c1] = part[interior]
    parallel_for(c, channels, cols.size, xp)
    return out


def wide_ok(kernel, stride, pad, dilation, spatial):
    """Whether ``col2im_cm_wide`` applies (unit stride on the last axis) and pays: the wide rows cost
    (padded width / output width) more GEMM work, worth it while that stays under 1.5."""
    out_shape, padded_shape, _, _ = geometry(spatial, kernel, stride, pad, dilation, None)
    return stride[-1] == 1 and padded_shape[-1] * 2 <= out_shape[-1] * 3


def wide_width(kernel, stride, pad, dilation, spatial):
    """The padded length of the last axis: the row length of wide columns."""
    return geometry(spatial, kernel, stride, pad, dilation, None)[1][-1]


def col2im_cm_wide(cols, out, kernel, stride, pad, dilation, out_shape=None, slot=None):
    """``col2im_cm`` for wide columns, when the stride along the last axis is 1.

    Wide columns have ``(C * prod(kernel), N * prod(out[:-1]) * Wp)``: each output row is as long
    as the padded input row ``Wp``, the columns past the true output width being 0 (the GEMM of
    a top gradient padded with zeros so gives them).  Then, for one kernel offset, a whole output
    row -- and with unit strides a whole image plane -- lands on consecutive input elements, so
    each offset's sum is a few long contiguous runs instead of many short strided ones; the zero
    columns fall on other elements (or a little past the plane, into slack) and change nothing.
    """
    xp = get_array_module(cols)
    n, c = out.shape[:2]
    spatial = tuple(out.shape[2:])
    out_shape, padded_shape, offsets, _ = geometry(spatial, kernel, stride, pad, dilation, out_shape)
    if stride[-1] != 1:
        raise CaffeishError(f"col2im_cm_wide needs unit stride on the last axis, got stride {tuple(stride)}")
    nd = len(spatial)
    width = padded_shape[-1]
    rows = out_shape[:-1]
    expect = (c * len(offsets), n * math.prod(rows) * width)
    if tuple(cols.shape) != expect:
        raise CaffeishError(f"col2im: wide columns of shape {tuple(cols.shape)} do not match {expect} "
                            f"for input {(n, c) + spatial}")
    plane = math.prod(padded_shape)
    axis_step = [math.prod(padded_shape[a + 1:]) for a in range(nd)]  # elements between neighbours on axis a
    # The furthest element any offset's run reaches, from its plane's start: each plane gets that much
    # slack after it, so that no run spills into a neighbour (and channels can be summed in parallel).
    reach = (sum((k - 1) * d * st for k, d, st in zip(kernel, dilation, axis_step))
             + sum((o - 1) * s * st for o, s, st in zip(rows, stride[:-1], axis_step[:-1])) + width)
    span = plane + max(0, reach - plane)
    flat = buffer(xp, cols.dtype, slot, (n * c * span,))
    planes = flat.reshape(n, c, span)
    item = flat.itemsize
    wide = cols.reshape((c,) + tuple(kernel) + (n,) + tuple(rows) + (width,))
    interior = (slice(None), slice(None)) + _interior(spatial, pad)

    starts = [sum(o * d * st for o, d, st in zip(offset, dilation, axis_step)) for offset in offsets]
    view_strides = tuple(v * item for v in (span, c * span)
                         + tuple(s * st for s, st in zip(stride[:-1], axis_step[:-1])) + (1,))

    def channels(c0, c1):
        planes[:, c0:c1] = 0
        view_shape = (c1 - c0, n) + tuple(rows) + (width,)
        for offset, start in zip(offsets, starts):
            view = _as_strided(xp, flat, view_shape, view_strides, c0 * span + start)
            view += wide[(slice(c0, c1),) + offset]
        part = planes[:, c0:c1, :plane].reshape((n, c1 - c0) + tuple(padded_shape))
        out[:, c0:c1] = part[interior]
    parallel_for(c, channels, cols.size, xp)
    return out


def _disjoint(kernel, stride, dilation):
    """Whether no two (offset, output position) pairs read the same input element, on every axis."""
    return all(st >= d * (k - 1) + 1 for k, st, d in zip(kernel, stride, dilation))


def _covers(padded_shape, kernel, stride, dilation, out_shape):
    """Whether the windows tile the padded extent exactly (then no position is left unwritten)."""
    return all(k == st and d == 1 and o * st == size
               for size, k, st, d, o in zip(padded_shape, kernel, stride, dilation, out_shape))
