"""LRN across channels on the GPU: Caffe's LRNFillScale, LRNComputeOutput and LRNComputeDiff kernels,
run by ``forward`` and ``backward`` on CuPy arrays (x, y, scale, powered, dy, dx: (N, C, H, W), contiguous).
"""
from ..backend import get_array_module
from . import kernels

SOURCE = "lrn"


@kernels.register_source(SOURCE)
def _source(dtype):
    """The kernels' CUDA C source.

    One thread per (n, h, w) column walks the channels with a running window sum (add the channel
    entering, subtract the one leaving), as Caffe does: C steps instead of C * n.
    """
    return r"""
extern "C" __global__ void lrn_fill_scale(
    const int n, const T* x, const int channels, const int plane, const int size,
    const T alpha_over_size, const T k, T* scale) {
  CUDA_KERNEL_LOOP(index, n) {
    // index = image * plane + position; channel c sits at offset + c * plane
    const int image = index / plane;
    const long long offset = (long long)image * channels * plane + index % plane;
    const T* in = x + offset;
    T* out = scale + offset;
    const int post_pad = size - (size - 1) / 2 - 1;
    T accum = 0;
    int head = 0;
    while (head < post_pad && head < channels) {
      accum += in[(long long)head * plane] * in[(long long)head * plane];
      ++head;
    }
    while (head < channels) {
      accum += in[(long long)head * plane] * in[(long long)head * plane];
      if (head - size >= 0)
        accum -= in[(long long)(head - size) * plane] * in[(long long)(head - size) * plane];
      out[(long long)(head - post_pad) * plane] = k + accum * alpha_over_size;
      ++head;
    }
    while (head < channels + post_pad) {
      if (head - size >= 0)
        accum -= in[(long long)(head - size) * plane] * in[(long long)(head - size) * plane];
      if (head - post_pad >= 0)
        out[(long long)(head - post_pad) * plane] = k + accum * alpha_over_size;
      ++head;
    }
  }
}

extern "C" __global__ void lrn_output(
    const int n, const T* x, const T* scale, const T negative_beta, T* powered, T* y) {
  CUDA_KERNEL_LOOP(index, n) {
    const T p = pow(scale[index], negative_beta);
    powered[index] = p;
    y[index] = x[index] * p;
  }
}

extern "C" __global__ void lrn_diff(
    const int n, const T* x, const T* scale, const T* powered, const T* dy, const int channels,
    const int plane, const int size, const T cache_ratio, T* dx) {
  CUDA_KERNEL_LOOP(index, n) {
    const int image = index / plane;
    const long long offset = (long long)image * channels * plane + index % plane;
    const T* xs = x + offset;
    const T* s = scale + offset;
    const T* p = powered + offset;
    const T* g = dy + offset;
    T* out = dx + offset;
    const int post_pad = size - (size - 1) / 2 - 1;
    T accum = 0;
    int head = 0;
#define RATIO(c) (g[(long long)(c) * plane] * xs[(long long)(c) * plane] * p[(long long)(c) * plane] \
                  / s[(long long)(c) * plane])
    while (head < post_pad && head < channels) {
      accum += RATIO(head);
      ++head;
    }
    while (head < channels) {
      accum += RATIO(head);
      if (head - size >= 0) accum -= RATIO(head - size);
      const long long c = (long long)(head - post_pad) * plane;
      out[c] = g[c] * p[c] - cache_ratio * xs[c] * accum;
      ++head;
    }
    while (head < channels + post_pad) {
      if (head - size >= 0) accum -= RATIO(head - size);
      if (head - post_pad >= 0) {
        const long long c = (long long)(head - post_pad) * plane;
        out[c] = g[c] * p[c] - cache_ratio * xs[c] * accum;
      }
      ++head;
    }
#undef RATIO
  }
}
"""


def fill_scale(x, scale, size, alpha, k):
    """scale = k + alpha / size * (window sum of x^2 across channels)."""
    n, c = x.shape[:2]
    plane = x.size // max(n * c, 1)
    columns = n * plane
    kernels.launch(SOURCE, x.dtype, "lrn_fill_scale", columns,
                   (columns, kernels.contiguous(x), c, plane, size, kernels.scalar(x.dtype, alpha / size),
                    kernels.scalar(x.dtype, k), scale))


def forward(x, y, scale, powered, size, alpha, beta, k):
    """Fill ``scale`` and ``powered`` (= scale^-beta) and write y = x * powered; y may be x (in place).

    x, y, scale, powered: (N, C, H, W), contiguous; n = local_size (odd), half = (n - 1) / 2.

        scale[c]   = k + alpha / n * sum_{|c' - c| <= half} x[c']^2      (channels past either end are 0)
        powered    = scale^-beta;   y = x * powered
    """
    fill_scale(x, scale, size, alpha, k)
    kernels.launch(SOURCE, x.dtype, "lrn_output", x.size,
                   (x.size, kernels.contiguous(x), scale, kernels.scalar(x.dtype, -beta), powered, y))


def backward(x, scale, powered, dy, dx, size, alpha, beta):
    """dx from dy, with ``scale`` and ``powered`` from forward.  ``dx`` may be ``dy`` (in place): each
    column reads channels ahead of the one it writes, so aliased arrays are first copied.

    x, scale, powered, dy, dx: (N, C, H, W), contiguous; n = local_size (odd), half = (n - 1) / 2.

        dx[c]      = dy[c] powered[c] - 2 alpha beta / n * x[c] * sum_{|c' - c| <= half} ratio[c']
        ratio      = dy * x * powered / scale

    Caffe's diff kernel reads the top's data; here ``x * powered`` stands for it, because a later in-place
    layer may have changed the top since forward.
    """
    if get_array_module(dx).may_share_memory(dx, dy):
        dy = dy.copy()
    n, c = x.shape[:2]
    plane = x.size // max(n * c, 1)
    columns = n * plane
    kernels.launch(SOURCE, x.dtype, "lrn_diff", columns,
                   (columns, kernels.contiguous(x), scale, powered, kernels.contiguous(dy), c, plane, size,
                    kernels.scalar(x.dtype, 2.0 * alpha * beta / size), dx))
