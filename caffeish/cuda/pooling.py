"""MAX and AVE pooling on the GPU: Caffe's MaxPoolForward / AvePoolForward / *PoolBackward kernels, run by
``forward`` and ``backward`` on CuPy arrays, and a block-per-plane reduction for global pooling.
"""
import numpy

from . import kernels

SOURCE = "pooling"
#: Threads per plane for global pooling (a power of two).
GLOBAL_BLOCK = 256


@kernels.register_source(SOURCE)
def _source(dtype):
    return r"""
extern "C" __global__ void max_pool_forward(
    const int n, const T* x, const int channels, const int height, const int width,
    const int pooled_h, const int pooled_w, const int kh, const int kw, const int sh, const int sw,
    const int pad_h, const int pad_w, T* y, int* mask) {
  CUDA_KERNEL_LOOP(index, n) {
    const int pw = index % pooled_w;
    const int ph = (index / pooled_w) % pooled_h;
    const int plane = index / (pooled_w * pooled_h);
    int hstart = ph * sh - pad_h;
    int wstart = pw * sw - pad_w;
    const int hend = min(hstart + kh, height);
    const int wend = min(wstart + kw, width);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    T best = -CAFFEISH_FLT_MAX;
    int arg = -1;
    const T* p = x + (long long)plane * height * width;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        if (p[h * width + w] > best) {
          arg = h * width + w;
          best = p[arg];
        }
      }
    }
    y[index] = best;
    mask[index] = arg;
  }
}

extern "C" __global__ void ave_pool_forward(
    const int n, const T* x, const int channels, const int height, const int width,
    const int pooled_h, const int pooled_w, const int kh, const int kw, const int sh, const int sw,
    const int pad_h, const int pad_w, T* y) {
  CUDA_KERNEL_LOOP(index, n) {
    const int pw = index % pooled_w;
    const int ph = (index / pooled_w) % pooled_h;
    const int plane = index / (pooled_w * pooled_h);
    int hstart = ph * sh - pad_h;
    int wstart = pw * sw - pad_w;
    int hend = min(hstart + kh, height + pad_h);
    int wend = min(wstart + kw, width + pad_w);
    const int pool_size = (hend - hstart) * (wend - wstart);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    hend = min(hend, height);
    wend = min(wend, width);
    T sum = 0;
    const T* p = x + (long long)plane * height * width;
    for (int h = hstart; h < hend; ++h)
      for (int w = wstart; w < wend; ++w)
        sum += p[h * width + w];
    y[index] = sum / pool_size;
  }
}

// The top windows containing bottom row h (padded coordinate hp = h + pad): [start, end).
__device__ __forceinline__ void window_range(const int hp, const int k, const int s, const int pooled,
                                             int* start, int* end) {
  *start = (hp < k) ? 0 : (hp - k) / s + 1;
  *end = min(hp / s + 1, pooled);
}

extern "C" __global__ void max_pool_backward(
    const int n, const T* dy, const int* mask, const int channels, const int height, const int width,
    const int pooled_h, const int pooled_w, const int kh, const int kw, const int sh, const int sw,
    const int pad_h, const int pad_w, T* dx) {
  CUDA_KERNEL_LOOP(index, n) {
    const int w = index % width;
    const int h = (index / width) % height;
    const int plane = index / (width * height);
    int phs, phe, pws, pwe;
    window_range(h + pad_h, kh, sh, pooled_h, &phs, &phe);
    window_range(w + pad_w, kw, sw, pooled_w, &pws, &pwe);
    const int here = h * width + w;
    const long long offset = (long long)plane * pooled_h * pooled_w;
    T grad = 0;
    for (int ph = phs; ph < phe; ++ph)
      for (int pw = pws; pw < pwe; ++pw)
        if (mask[offset + ph * pooled_w + pw] == here)
          grad += dy[offset + ph * pooled_w + pw];
    dx[index] = grad;
  }
}

extern "C" __global__ void ave_pool_backward(
    const int n, const T* dy, const int channels, const int height, const int width,
    const int pooled_h, const int pooled_w, const int kh, const int kw, const int sh, const int sw,
    const int pad_h, const int pad_w, T* dx) {
  CUDA_KERNEL_LOOP(index, n) {
    const int w = index % width;
    const int h = (index / width) % height;
    const int plane = index / (width * height);
    int phs, phe, pws, pwe;
    window_range(h + pad_h, kh, sh, pooled_h, &phs, &phe);
    window_range(w + pad_w, kw, sw, pooled_w, &pws, &pwe);
    const long long offset = (long long)plane * pooled_h * pooled_w;
    T grad = 0;
    for (int ph = phs; ph < phe; ++ph) {
      for (int pw = pws; pw < pwe; ++pw) {
        const int hstart = ph * sh - pad_h;
        const int wstart = pw * sw - pad_w;
        const int hend = min(hstart + kh, height + pad_h);
        const int wend = min(wstart + kw, width + pad_w);
        grad += dy[offset + ph * pooled_w + pw] / ((hend - hstart) * (wend - wstart));
      }
    }
    dx[index] = grad;
  }
}

// One block per plane of `size` elements.  MAX keeps (value, first index) pairs: a pair wins with a
// larger value, or an equal one found earlier, which is what the sequential strict '>' scan keeps.
#define GLOBAL_BLOCK 256
extern "C" __global__ void global_pool_forward(
    const T* x, const int size, const int is_max, T* y, int* mask) {
  __shared__ T values[GLOBAL_BLOCK];
  __shared__ int args[GLOBAL_BLOCK];
  const T* p = x + (long long)blockIdx.x * size;
  const int tid = threadIdx.x;
  T acc = is_max ? T(-CAFFEISH_FLT_MAX) : T(0);
  int arg = -1;
  for (int i = tid; i < size; i += GLOBAL_BLOCK) {
    if (is_max) {
      if (p[i] > acc) { acc = p[i]; arg = i; }
    } else {
      acc += p[i];
    }
  }
  values[tid] = acc;
  args[tid] = arg;
  __syncthreads();
  for (int half = GLOBAL_BLOCK / 2; half > 0; half >>= 1) {
    if (tid < half) {
      const T other = values[tid + half];
      const int other_arg = args[tid + half];
      if (is_max) {
        if (other > values[tid] || (other == values[tid] && other_arg >= 0 &&
                                    (args[tid] < 0 || other_arg < args[tid]))) {
          values[tid] = other;
          args[tid] = other_arg;
        }
      } else {
        values[tid] += other;
      }
    }
    __syncthreads();
  }
  if (tid == 0) {
    y[blockIdx.x] = is_max ? values[0] : values[0] / size;
    if (is_max) mask[blockIdx.x] = args[0];
  }
}
"""


def _geometry(layer):
    return (layer.height, layer.width, layer.pooled_h, layer.pooled_w, layer.kernel_h, layer.kernel_w,
            layer.stride_h, layer.stride_w, layer.pad_h, layer.pad_w)


def _is_global(geometry):
    height, width, pooled_h, pooled_w, kh, kw, sh, sw, pad_h, pad_w = geometry
    return (pooled_h, pooled_w, kh, kw, pad_h, pad_w) == (1, 1, height, width, 0, 0)


def forward(x, y, geometry, is_max, mask=None):
    """Pool x (N, C, H, W) into y (N, C, PH, PW), both contiguous; MAX writes the int32 ``mask`` (y's shape).

    ``geometry``: (H, W, PH, PW, kh, kw, sh, sw, pad_h, pad_w).  PH and PW are as
    ``caffeish.layers.vision.pooling.pooled_size`` gives them (ceil or floor mode, with Caffe's padding
    rule); window (ph, pw) starts at (ph sh - pad_h, pw sw - pad_w).

        MAX: y = max of the window clipped to the image, scanned row-major from -FLT_MAX with a strict
             '>' (the first maximum wins, NaN never does); mask = h W + w of that element, -1 if none.
        AVE: y = sum of the window inside the image / (window clipped to [-pad, H + pad) x [-pad, W + pad))

    Global pooling (one window per plane) uses one block per plane and a shared-memory reduction
    instead of one thread per (huge) window.  The mask is int32; float masks (the layer's second top)
    are converted by the caller.
    """
    height, width, pooled_h, pooled_w, kh, kw, sh, sw, pad_h, pad_w = geometry
    if y.size == 0:
        return
    x = kernels.contiguous(x)
    channels = x.shape[1]
    if _is_global(geometry) and height * width >= 64:
        # One thread per plane would leave most of the GPU idle and read each plane serially.
        args = (x, numpy.int32(height * width), numpy.int32(bool(is_max)), y, mask if is_max else y)
        kernels.function(SOURCE, x.dtype, "global_pool_forward")((y.size,), (GLOBAL_BLOCK,), args)
        return
    common = (channels, height, width, pooled_h, pooled_w, kh, kw, sh, sw, pad_h, pad_w)
    if is_max:
        kernels.launch(SOURCE, x.dtype, "max_pool_forward", y.size, (y.size, x) + common + (y, mask))
    else:
        kernels.launch(SOURCE, x.dtype, "ave_pool_forward", y.size, (y.size, x) + common + (y,))


def backward(dy, dx, geometry, is_max, mask=None):
    """dx (N, C, H, W), overwritten, from dy (N, C, PH, PW); MAX routes by the int32 ``mask``.

    One thread per bottom element sums, over the windows containing it, the top gradient (MAX: where the
    mask names it; AVE: divided by that window's size).  No atomics.
    """
    height, width, pooled_h, pooled_w, kh, kw, sh, sw, pad_h, pad_w = geometry
    dy = kernels.contiguous(dy)
    common = (dx.shape[1], height, width, pooled_h, pooled_w, kh, kw, sh, sw, pad_h, pad_w)
    if is_max:
        kernels.launch(SOURCE, dy.dtype, "max_pool_backward", dx.size,
                       (dx.size, dy, kernels.contiguous(mask)) + common + (dx,))
    else:
        kernels.launch(SOURCE, dy.dtype, "ave_pool_backward", dx.size, (dx.size, dy) + common + (dx,))


def geometry_of(layer):
    """The (H, W, PH, PW, kh, kw, sh, sw, pad_h, pad_w) of a reshaped PoolingLayer."""
    return _geometry(layer)
