"""Channel-major im2col / col2im on the GPU (Caffe's im2col_gpu / col2im_gpu, for the whole batch): the
same functions, arguments and results as ``caffeish.im2col.im2col_cm``, ``col2im_cm`` and ``col2im_cm_wide``
(see there), for 2-D images (N, C, H, W) and 1-D signals (N, C, W); other cases go to those generic functions.
"""
import math

from .. import im2col as generic
from ..backend import get_array_module
from ..cpu import workspace
from ..errors import CaffeishError
from . import kernels

SOURCE = "im2col"


@kernels.register_source(SOURCE)
def _source(dtype):
    """The kernels' CUDA C source.

    im2col: one thread per column element, so consecutive threads write consecutive columns.
    col2im: one thread per input element, gathering every (kernel offset, output position) that read
    it -- the adjoint -- in a fixed order: no atomics, and the sums are the same on every run.
    """
    return r"""
extern "C" __global__ void im2col_cm(
    const int n, const T* x, const int num, const int channels, const int height, const int width,
    const int kh, const int kw, const int ph, const int pw, const int sh, const int sw,
    const int dh, const int dw, const int oh, const int ow, T* cols) {
  CUDA_KERNEL_LOOP(index, n) {
    // index = ((((c kh + i) kw + j) num + b) oh + oy) ow + ox
    int t = index;
    const int ox = t % ow; t /= ow;
    const int oy = t % oh; t /= oh;
    const int b = t % num; t /= num;
    const int j = t % kw; t /= kw;
    const int i = t % kh;
    const int c = t / kh;
    const int h = oy * sh - ph + i * dh;
    const int w = ox * sw - pw + j * dw;
    // unsigned compares test 0 <= v < size in one step
    cols[index] = ((unsigned)h < (unsigned)height && (unsigned)w < (unsigned)width)
        ? x[((b * channels + c) * height + h) * width + w] : T(0);
  }
}

// row_len is OW for plain columns, the padded width for wide ones (whose extra entries are skipped).
extern "C" __global__ void col2im_cm(
    const int n, const T* cols, const int num, const int channels, const int height, const int width,
    const int kh, const int kw, const int ph, const int pw, const int sh, const int sw,
    const int dh, const int dw, const int oh, const int ow, const int row_len, T* x) {
  CUDA_KERNEL_LOOP(index, n) {
    int t = index;
    const int w = t % width; t /= width;
    const int h = t % height; t /= height;
    const int c = t % channels;
    const int b = t / channels;
    const int hp = h + ph;
    const int wp = w + pw;
    T sum = 0;
    for (int i = 0; i < kh; ++i) {
      const int y = hp - i * dh;  // oy sh, if this offset's window row covers h
      if (y < 0) break;           // larger i only go further below 0
      if (y % sh) continue;
      const int oy = y / sh;
      if (oy >= oh) continue;
      for (int j = 0; j < kw; ++j) {
        const int z = wp - j * dw;
        if (z < 0) break;
        if (z % sw) continue;
        const int ox = z / sw;
        if (ox >= ow) continue;
        const int row = (c * kh + i) * kw + j;
        sum += cols[((row * num + b) * oh + oy) * row_len + ox];
      }
    }
    x[index] = sum;
  }
}
"""


def applies(x, kernel, stride, pad, dilation):
    """Whether the kernels handle this case (CuPy float arrays, 1 or 2 spatial axes).

    1-D signals (N, C, W) run as images of height 1.  Other ranks, dtypes, or sizes beyond 32-bit indices go
    to the generic functions of ``caffeish.im2col`` (exactly when ``im2col_applies`` / ``col2im_applies`` are
    False), which the functions here call themselves: the GPU's convolution engines need only this module.
    """
    return (kernels.usable(x) and x.ndim in (3, 4)
            and all(len(v) == x.ndim - 2 for v in (kernel, stride, pad, dilation)))


def im2col_applies(x, kernel, stride, pad, dilation, out_shape=None):
    """Whether ``im2col_cm`` runs the kernel (otherwise it calls the generic function)."""
    if not applies(x, kernel, stride, pad, dilation):
        return False
    if out_shape is None:
        out_shape = generic.conv_output_shape(x.shape[2:], kernel, stride, pad, dilation)
    length = x.shape[0] * math.prod(max(o, 0) for o in out_shape)
    return x.shape[1] * math.prod(kernel) * length <= kernels.MAX_ELEMENTS


def col2im_applies(cols, out, kernel, stride, pad, dilation):
    """Whether ``col2im_cm`` / ``col2im_cm_wide`` run the kernel (otherwise they call the generic ones)."""
    return applies(out, kernel, stride, pad, dilation) and kernels.usable(cols, out)


def _as_2d(kernel, stride, pad, dilation, out_shape, spatial):
    """1-D geometry as 2-D with a height-1 axis in front."""
    if len(spatial) == 2:
        return tuple(kernel), tuple(stride), tuple(pad), tuple(dilation), tuple(out_shape), tuple(spatial)
    return ((1,) + tuple(kernel), (1,) + tuple(stride), (0,) + tuple(pad), (1,) + tuple(dilation),
            (1,) + tuple(out_shape), (1,) + tuple(spatial))


def im2col_cm(x, kernel, stride, pad, dilation, out_shape=None, slot=None):
    """``caffeish.im2col.im2col_cm`` on the GPU: x (N, C, *spatial) -> (C * prod(kernel), N * prod(out)).

    columns (C * kh * kw, N * OH * OW), row c kh kw + i kw + j, column n OH OW + oy OW + ox:

        cols[row, col] = x[n, c, oy sh - ph + i dh, ox sw - pw + j dw]   (0 outside x)
    """
    if not im2col_applies(x, kernel, stride, pad, dilation, out_shape):
        return generic.im2col_cm(x, kernel, stride, pad, dilation, out_shape, slot=slot)
    xp = get_array_module(x)
    n, c = x.shape[:2]
    out_shape, _, offsets, _ = generic.geometry(x.shape[2:], kernel, stride, pad, dilation, out_shape)
    rows, length = c * len(offsets), n * math.prod(out_shape)
    cols = xp.empty((rows, length), dtype=x.dtype) if slot is None else \
        workspace(xp, x.dtype, slot, rows * length).reshape(rows, length)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), (h, w) = _as_2d(kernel, stride, pad, dilation, out_shape,
                                                                      x.shape[2:])
    kernels.launch(SOURCE, x.dtype, "im2col_cm", cols.size,
                   (cols.size, kernels.contiguous(x), n, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow, cols))
    return cols


def _col2im(cols, out, kernel, stride, pad, dilation, out_shape, row_len, slot):
    xp = get_array_module(cols)
    n, c = out.shape[:2]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), (h, w) = _as_2d(kernel, stride, pad, dilation, out_shape,
                                                                      out.shape[2:])
    target = out if out.flags.c_contiguous else \
        workspace(xp, out.dtype, slot or "cuda.col2im", out.size).reshape(out.shape)
    kernels.launch(SOURCE, cols.dtype, "col2im_cm", target.size,
                   (target.size, kernels.contiguous(cols), n, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow,
                    row_len, target))
    if target is not out:
        out[...] = target
    return out


def col2im_cm(cols, out, kernel, stride, pad, dilation, out_shape=None, slot=None):
    """``caffeish.im2col.col2im_cm`` on the GPU: channel-major columns -> ``out`` (N, C, *spatial), overwritten.

    ``slot`` is only used when ``out`` is not contiguous (the sum is gathered there, then copied).
    """
    if not col2im_applies(cols, out, kernel, stride, pad, dilation):
        return generic.col2im_cm(cols, out, kernel, stride, pad, dilation, out_shape, slot=slot)
    n, c = out.shape[:2]
    spatial = tuple(out.shape[2:])
    out_shape, _, offsets, _ = generic.geometry(spatial, kernel, stride, pad, dilation, out_shape)
    expect = (c * len(offsets), n * math.prod(out_shape))
    if tuple(cols.shape) != expect:
        raise CaffeishError(f"col2im: columns of shape {tuple(cols.shape)} do not match {expect} "
                            f"for input {(n, c) + spatial}")
    return _col2im(cols, out, kernel, stride, pad, dilation, out_shape, out_shape[-1], slot)


def col2im_cm_wide(cols, out, kernel, stride, pad, dilation, out_shape=None, slot=None):
    """``caffeish.im2col.col2im_cm_wide`` on the GPU: wide columns (rows of the padded width) -> ``out``.

    Wide columns have rows of the padded width Wp instead of OW; only their first OW entries are read (the
    rest are the zeros a padded top gradient gives).
    """
    if not col2im_applies(cols, out, kernel, stride, pad, dilation):
        return generic.col2im_cm_wide(cols, out, kernel, stride, pad, dilation, out_shape, slot=slot)
    n, c = out.shape[:2]
    spatial = tuple(out.shape[2:])
    out_shape, padded_shape, offsets, _ = generic.geometry(spatial, kernel, stride, pad, dilation, out_shape)
    if stride[-1] != 1:
        raise CaffeishError(f"col2im_cm_wide needs unit stride on the last axis, got stride {tuple(stride)}")
    width = padded_shape[-1]
    expect = (c * len(offsets), n * math.prod(out_shape[:-1]) * width)
    if tuple(cols.shape) != expect:
        raise CaffeishError(f"col2im: wide columns of shape {tuple(cols.shape)} do not match {expect} "
                            f"for input {(n, c) + spatial}")
    return _col2im(cols, out, kernel, stride, pad, dilation, out_shape, width, slot)
