"""Pooling: Caffe's 2-D MAX / AVE pooling over (N, C, H, W), with Caffe's output-size rounding.

bottom: (N, C, H, W).  top[0]: (N, C, PH, PW) with
``PH = ceil((H + 2 pad_h - kernel_h) / stride_h) + 1`` (``floor`` for ``round_mode: FLOOR``),
then, when there is padding, one fewer if the last window would start in the padding
(``(PH - 1) stride_h >= H + pad_h``); likewise PW.  MAX may have a second top: the mask,
the index ``h * W + w`` of each window's maximum within its channel plane (as floats).

MAX ignores the padding and keeps the first maximum in scan order (Caffe's strict ``>``).
AVE sums the window's values inside the image and divides by the window's size clipped to
the padded image (``H + pad``), so windows over the padding count it as zeros.
``global_pooling`` pools over the whole of H x W.

STOCHASTIC follows Caffe's (GPU-only) kernels.  Its windows ignore the padding: window
``(ph, pw)`` covers rows ``[ph stride_h, min(ph stride_h + kernel_h, H))`` and likewise the
columns (the output size is still computed with the padding; a window that starts past
the image is empty and gives 0).  In TRAIN each window draws ``u`` uniform in [0, 1) from
``caffeish.backend`` and outputs the first element, in row-major order, whose running sum
reaches ``u * sum(window)`` -- a sample with probability proportional to the (non-negative)
activations; backward routes the gradient to that element.  In TEST the output is
``sum(x^2) / sum(x)`` over the window (0 where the sum is not positive), and, as in Caffe,
there is no backward.

Forward and backward loop over the kernel offsets only, each step a strided slice over
the whole batch.
"""
import numpy

from ..backend import get_array_module, random_uniform
from ..errors import CaffeishError
from ..layer import Layer, register_layer
from ..proto import caffe_pb2

PP = caffe_pb2.PoolingParameter
_FLT_MAX = float(numpy.finfo(numpy.float32).max)


def pooled_size(size, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooled length along one axis (see the module docstring)."""
    num = size + 2 * pad - kernel
    out = (-(-num // stride) if ceil_mode else num // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register_layer("Pooling")
class PoolingLayer(Layer):
    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.pooling_param
        self.method = p.pool
        if self.method not in (PP.MAX, PP.AVE, PP.STOCHASTIC):
            raise CaffeishError(f"unknown pooling method {self.method}")
        if len(top) > 1 and self.method != PP.MAX:
            raise CaffeishError(f"only MAX pooling has a second (mask) top; {PP.PoolMethod.Name(self.method)} "
                                f"pooling takes exactly 1 top, but {len(top)} given")
        self.global_pooling = bool(p.global_pooling)
        has_k, has_kh, has_kw = p.HasField("kernel_size"), p.HasField("kernel_h"), p.HasField("kernel_w")
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise CaffeishError("with global_pooling: true the kernel size cannot be given")
        else:
            if has_k and (has_kh or has_kw):
                raise CaffeishError("give the kernel size as kernel_size or as kernel_h and kernel_w, not both")
            if not has_k and not (has_kh and has_kw):
                raise CaffeishError("pooling_param needs kernel_size, or both kernel_h and kernel_w")
        if p.HasField("pad") and (p.HasField("pad_h") or p.HasField("pad_w")) or \
                p.HasField("pad_h") != p.HasField("pad_w"):
            raise CaffeishError("give the padding as pad, or as both pad_h and pad_w")
        if p.HasField("stride") and (p.HasField("stride_h") or p.HasField("stride_w")) or \
                p.HasField("stride_h") != p.HasField("stride_w"):
            raise CaffeishError("give the stride as stride, or as both stride_h and stride_w")
        if self.global_pooling:
            self.kernel_h, self.kernel_w = self._bottom_hw(bottom[0])
        elif has_k:
            self.kernel_h = self.kernel_w = int(p.kernel_size)
        else:
            self.kernel_h, self.kernel_w = int(p.kernel_h), int(p.kernel_w)
        if self.kernel_h <= 0 or self.kernel_w <= 0:
            raise CaffeishError(f"kernel size must be positive, got {self.kernel_h} x {self.kernel_w}")
        if p.HasField("pad_h"):
            self.pad_h, self.pad_w = int(p.pad_h), int(p.pad_w)
        else:
            self.pad_h = self.pad_w = int(p.pad)
        if p.HasField("stride_h"):
            self.stride_h, self.stride_w = int(p.stride_h), int(p.stride_w)
        else:
            self.stride_h = self.stride_w = int(p.stride)
        if self.stride_h <= 0 or self.stride_w <= 0:
            raise CaffeishError(f"stride must be positive, got {self.stride_h} x {self.stride_w}")
        if self.global_pooling and (self.pad_h or self.pad_w or self.stride_h != 1 or self.stride_w != 1):
            raise CaffeishError("with global_pooling: true only pad 0 and stride 1 are allowed")
        if (self.pad_h or self.pad_w) and not (self.pad_h < self.kernel_h and self.pad_w < self.kernel_w):
            raise CaffeishError(f"pad ({self.pad_h}, {self.pad_w}) must be smaller than the kernel "
                                f"({self.kernel_h}, {self.kernel_w})")
        self.ceil_mode = p.round_mode == PP.CEIL
        self.max_idx = None
        self.rand_idx = None

    def _bottom_hw(self, b):
        if b.num_axes != 4:
            raise CaffeishError(f"Pooling needs a 4-axis (num, channels, height, width) input, got shape {b.shape}")
        return b.shape[2], b.shape[3]

    def reshape(self, bottom, top):
        self.height, self.width = self._bottom_hw(bottom[0])
        if self.global_pooling:
            self.kernel_h, self.kernel_w = self.height, self.width
        ph = pooled_size(self.height, self.kernel_h, self.stride_h, self.pad_h, self.ceil_mode)
        pw = pooled_size(self.width, self.kernel_w, self.stride_w, self.pad_w, self.ceil_mode)
        if ph <= 0 or pw <= 0:
            raise CaffeishError(
                f"pooled output {ph} x {pw} is empty: input {self.height} x {self.width}, kernel "
                f"{self.kernel_h} x {self.kernel_w}, stride {self.stride_h} x {self.stride_w}, "
                f"pad {self.pad_h} x {self.pad_w}")
        self.pooled_h, self.pooled_w = ph, pw
        shape = bottom[0].shape[:2] + (ph, pw)
        for t in top:
            t.reshape(shape)

    # -- geometry --------------------------------------------------------------------
    def _padded_extent(self):
        """Padded (H, W) covering every window, and the slices of the offset (i, j)."""
        hp = max(self.height + 2 * self.pad_h, (self.pooled_h - 1) * self.stride_h + self.kernel_h)
        wp = max(self.width + 2 * self.pad_w, (self.pooled_w - 1) * self.stride_w + self.kernel_w)
        return hp, wp

    def _window(self, i, j):
        return (Ellipsis, slice(i, i + self.stride_h * (self.pooled_h - 1) + 1, self.stride_h),
                slice(j, j + self.stride_w * (self.pooled_w - 1) + 1, self.stride_w))

    def _interior(self):
        return (Ellipsis, slice(self.pad_h, self.pad_h + self.height), slice(self.pad_w, self.pad_w + self.width))

    def _pool_size(self, xp, dtype):
        """Caffe's AVE divisor per output: the window clipped to the padded image."""
        def axis(pooled, stride, pad, kernel, size):
            start = numpy.arange(pooled) * stride - pad
            return numpy.minimum(start + kernel, size + pad) - start
        sizes = numpy.outer(axis(self.pooled_h, self.stride_h, self.pad_h, self.kernel_h, self.height),
                            axis(self.pooled_w, self.stride_w, self.pad_w, self.kernel_w, self.width))
        return xp.asarray(sizes.astype(dtype))

    def _stochastic_windows(self, x):
        """Caffe's unpadded STOCHASTIC windows: (zero-extended x, window-is-empty mask)."""
        xp = get_array_module(x)
        n, c = x.shape[:2]
        hp = max(self.height, (self.pooled_h - 1) * self.stride_h + self.kernel_h)
        wp = max(self.width, (self.pooled_w - 1) * self.stride_w + self.kernel_w)
        extended = xp.zeros((n, c, hp, wp), dtype=x.dtype)
        extended[..., :self.height, :self.width] = x
        empty = numpy.logical_or.outer(numpy.arange(self.pooled_h) * self.stride_h >= self.height,
                                       numpy.arange(self.pooled_w) * self.stride_w >= self.width)
        return extended, xp.asarray(empty)

    def _forward_stochastic(self, x, y):
        xp = get_array_module(x)
        extended, empty = self._stochastic_windows(x)
        offsets = [(i, j) for i in range(self.kernel_h) for j in range(self.kernel_w)]
        total = xp.zeros(y.shape, dtype=x.dtype)
        if self.phase == caffe_pb2.TRAIN:
            for i, j in offsets:
                total += extended[self._window(i, j)]
            # Positions past the image add 0 to the running sum, so the first position reaching the
            # threshold is always inside the image (every non-empty window starts inside it).
            threshold = random_uniform(xp, y.shape, x.dtype) * total
            running = xp.zeros_like(total)
            found = xp.zeros(y.shape, dtype=bool)
            value = xp.zeros_like(total)
            idx = xp.full(y.shape, -1, dtype=numpy.int64)
            hs = numpy.arange(self.pooled_h) * self.stride_h
            ws = numpy.arange(self.pooled_w) * self.stride_w
            base = xp.asarray(hs[:, None] * self.width + ws[None, :])
            for i, j in offsets:
                v = extended[self._window(i, j)]
                running += v
                take = (running >= threshold) & ~found & ~empty
                xp.copyto(value, v, where=take)
                xp.copyto(idx, base + (i * self.width + j), where=take)
                found |= take
            y[...] = value
            self.rand_idx = idx
        else:
            squares = xp.zeros_like(total)
            for i, j in offsets:
                v = extended[self._window(i, j)]
                total += v
                squares += v * v
            positive = total > 0
            y[...] = xp.where(positive, squares / xp.where(positive, total, 1), 0)

    # -- forward / backward -----------------------------------------------------------
    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        hp, wp = self._padded_extent()
        n, c = x.shape[:2]
        if self.method == PP.MAX:
            padded = xp.full((n, c, hp, wp), -numpy.inf, dtype=x.dtype)
            padded[self._interior()] = x
            best = top[0].data
            best[...] = -_FLT_MAX
            idx = xp.full(best.shape, -1, dtype=numpy.int64)
            # Flat index, within the channel plane, of each window's top-left element.
            hs = numpy.arange(self.pooled_h) * self.stride_h - self.pad_h
            ws = numpy.arange(self.pooled_w) * self.stride_w - self.pad_w
            base = xp.asarray(hs[:, None] * self.width + ws[None, :])
            # Row-major offsets: the first strict maximum is the first in Caffe's scan order.
            for i in range(self.kernel_h):
                for j in range(self.kernel_w):
                    v = padded[self._window(i, j)]
                    better = v > best
                    xp.copyto(best, v, where=better)
                    xp.copyto(idx, base + (i * self.width + j), where=better)
            if len(top) > 1:
                top[1].data[...] = idx.astype(top[1].dtype)
            else:
                self.max_idx = idx
        elif self.method == PP.STOCHASTIC:
            self._forward_stochastic(x, top[0].data)
        else:
            padded = xp.zeros((n, c, hp, wp), dtype=x.dtype)
            padded[self._interior()] = x
            acc = xp.zeros(top[0].shape, dtype=x.dtype)
            for i in range(self.kernel_h):
                for j in range(self.kernel_w):
                    acc += padded[self._window(i, j)]
            top[0].data[...] = acc / self._pool_size(xp, x.dtype)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        xp = get_array_module(dy)
        n, c = dy.shape[:2]
        plane = self.height * self.width
        if self.method == PP.STOCHASTIC and self.phase != caffe_pb2.TRAIN:
            raise CaffeishError("STOCHASTIC pooling has no backward pass in the TEST phase (Caffe does not "
                                "implement one); run the layer in the TRAIN phase to train through it")
        if self.method in (PP.MAX, PP.STOCHASTIC):
            if self.method == PP.STOCHASTIC:
                idx = self.rand_idx
            else:
                idx = top[1].data.astype(numpy.int64) if len(top) > 1 else self.max_idx
            valid = idx >= 0
            offsets = (xp.arange(n * c, dtype=numpy.int64) * plane).reshape(n, c, 1, 1)
            flat = xp.where(valid, idx + offsets, 0).ravel()
            weights = xp.where(valid, dy, 0).ravel()
            dx = xp.bincount(flat, weights=weights, minlength=n * c * plane)
            bottom[0].diff[...] = dx.reshape(bottom[0].shape).astype(bottom[0].dtype, copy=False)
        else:
            hp, wp = self._padded_extent()
            padded = xp.zeros((n, c, hp, wp), dtype=dy.dtype)
            share = dy / self._pool_size(xp, dy.dtype)
            for i in range(self.kernel_h):
                for j in range(self.kernel_w):
                    padded[self._window(i, j)] += share
            bottom[0].diff[...] = padded[self._interior()]
