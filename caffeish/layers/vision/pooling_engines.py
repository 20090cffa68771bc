"""The engines that run a Pooling layer: window sums and maxima over strided views (numpy or CuPy), Caffe's
STOCHASTIC pooling, and the CUDA kernels.  ``caffeish.layers.vision.engines`` picks one.
"""
import numpy

from ...backend import get_array_module, random_uniform
from ...cpu import parallel_for, workspace
from ...cuda import pooling as cuda_pooling
from ...errors import CaffeishError
from ...proto import caffe_pb2

PP = caffe_pb2.PoolingParameter
_FLT_MAX = float(numpy.finfo(numpy.float32).max)
GEOMETRY = ("height", "width", "pooled_h", "pooled_w", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h",
            "pad_w", "method", "phase")


class PoolingEngine:
    """The window geometry shared by the engines.

    Each engine is made for one input shape and copies the layer's geometry (``height``, ``pooled_h``,
    ``kernel_h``, ``stride_h``, ``pad_h``, ... as ``PoolingLayer.reshape`` set them).
    """
    name = "pooling"

    def __init__(self, layer, reason=""):
        for key in GEOMETRY:
            setattr(self, key, getattr(layer, key))
        self.reason = reason

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

    def _offsets(self):
        return [(i, j) for i in range(self.kernel_h) for j in range(self.kernel_w)]

    def _source(self, x, fill, slot):
        """``x`` inside a frame of ``fill`` that covers every window (``x`` itself when none is needed).

        The frame lives in a shared work buffer; only the frame is written besides the copy of ``x``.
        """
        hp, wp = self._padded_extent()
        if (hp, wp) == (self.height, self.width):
            return x
        xp = get_array_module(x)
        n, c = x.shape[:2]
        buf = workspace(xp, x.dtype, slot, n * c * hp * wp).reshape(n, c, hp, wp)
        top, left = self.pad_h, self.pad_w
        bottom, right = top + self.height, left + self.width
        buf[:, :, :top] = fill
        buf[:, :, bottom:] = fill
        buf[:, :, top:bottom, :left] = fill
        buf[:, :, top:bottom, right:] = fill
        buf[:, :, top:bottom, left:right] = x
        return buf

    def _target(self, like, slot):
        """Where backward sums the input's gradient: the bottom's diff, or a framed work buffer."""
        hp, wp = self._padded_extent()
        if (hp, wp) == (self.height, self.width):
            return like, False
        xp = get_array_module(like)
        n, c = like.shape[:2]
        return workspace(xp, like.dtype, slot, n * c * hp * wp).reshape(n, c, hp, wp), True

    def _sizes(self, xp, dtype):
        key = (xp.__name__, numpy.dtype(dtype).str, self.pooled_h, self.pooled_w, self.height, self.width)
        cached = getattr(self, "_size_cache", None)
        if cached is None or cached[0] != key:
            cached = self._size_cache = (key, self._pool_size(xp, dtype))
        return cached[1]

    def _offset_views(self, x, fill, slot):
        """[(k, view)] for each kernel offset: the (N, C, PH, PW) values it sees, unit-stride along W.

        With a stride above 1 the input is split into its stride phases (padded rows ``a::sh``,
        columns ``b::sw``), each copied once into a work buffer inside a frame of ``fill`` where the
        windows reach past the input, so that every offset's window is a plain shifted slice of one
        phase instead of a strided view (numpy is far slower on those).  With unit strides the windows
        are slices of the input itself, or of a framed copy when they reach past it.
        """
        sh, sw, ph, pw = self.stride_h, self.stride_w, self.pooled_h, self.pooled_w
        offsets = self._offsets()
        if sh == 1 and sw == 1:
            src = self._source(x, fill, slot + ".src")
            return [(k, src[..., i:i + ph, j:j + pw]) for k, (i, j) in enumerate(offsets)]
        xp = get_array_module(x)
        n, c = x.shape[:2]
        rows = {a: max(i // sh for i in range(a, self.kernel_h, sh)) + ph for a in range(min(sh, self.kernel_h))}
        cols = {b: max(j // sw for j in range(b, self.kernel_w, sw)) + pw for b in range(min(sw, self.kernel_w))}
        total = sum(rows[a] * cols[b] for a in rows for b in cols) * n * c
        buf = workspace(xp, x.dtype, slot, total)
        phases, start = {}, 0
        for a in rows:
            for b in cols:
                size = n * c * rows[a] * cols[b]
                phases[a, b] = buf[start:start + size].reshape(n, c, rows[a], cols[b])
                start += size

        def images(lo, hi):
            for (a, b), phase in phases.items():
                r0, r1 = _phase_span(a, sh, self.pad_h, self.height, rows[a])
                c0, c1 = _phase_span(b, sw, self.pad_w, self.width, cols[b])
                phase = phase[lo:hi]
                # phase[r, q] = padded[a + r sh, b + q sw] = x[a + r sh - pad_h, b + q sw - pad_w] inside x.
                phase[:, :, :r0] = fill
                phase[:, :, r1:] = fill
                phase[:, :, r0:r1, :c0] = fill
                phase[:, :, r0:r1, c1:] = fill
                if r1 > r0 and c1 > c0:
                    phase[:, :, r0:r1, c0:c1] = x[lo:hi, :, a + r0 * sh - self.pad_h::sh,
                                                  b + c0 * sw - self.pad_w::sw][:, :, :r1 - r0, :c1 - c0]
        parallel_for(n, images, total, xp)
        return [(k, phases[i % sh, j % sw][..., i // sh:i // sh + ph, j // sw:j // sw + pw])
                for k, (i, j) in enumerate(offsets)]

    def _flat_index(self, xp, kidx, out, global_index):
        """Each window's maximum as ``h * W + w`` in its plane (Caffe's mask), plus the plane's start
        when ``global_index``: the position in the whole bottom blob, which backward scatters to.
        A window with no maximum (empty, or all -FLT_MAX / NaN) gets -1, as in Caffe."""
        hs = numpy.arange(self.pooled_h) * self.stride_h - self.pad_h
        ws = numpy.arange(self.pooled_w) * self.stride_w - self.pad_w
        none = len(self._offsets())
        row = workspace(xp, kidx.dtype, "pool.step", kidx.size).reshape(kidx.shape)
        corner = xp.asarray(hs[:, None] * self.width + ws[None, :])
        plane = self.height * self.width
        c = kidx.shape[1]

        def images(lo, hi):
            # offset k = i kw + j sits at i W + j from the window's corner (arithmetic: faster than a lookup).
            k, r, o = kidx[lo:hi], row[lo:hi], out[lo:hi]
            xp.floor_divide(k, self.kernel_w, out=r)
            xp.multiply(r, self.width - self.kernel_w, out=o, dtype=numpy.int64)
            o += k
            o += corner
            if global_index:
                o += (xp.arange(lo * c, hi * c, dtype=numpy.int64) * plane).reshape(hi - lo, c, 1, 1)
        parallel_for(kidx.shape[0], images, kidx.size * 4, xp)
        self.missing = bool((kidx == none).any())
        if self.missing:
            out[kidx == none] = -1
        return out


class WindowPooling(PoolingEngine):
    """MAX / AVE by a loop over the kernel offsets only, each step a strided view of the whole batch (inside a
    frame of -inf or 0 in a shared work buffer when the windows reach past the input).  MAX keeps, per output,
    the index of the winning kernel offset (one byte) for backward, which routes the gradient with one
    masked copy per offset -- a plain write when the windows do not overlap, a masked sum when they do."""
    name = "windows"

    def __init__(self, layer, reason=""):
        super().__init__(layer, reason)
        self.max_idx = None
        self.missing = False

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        y = top[0].data
        if self.method == PP.MAX:
            # Caffe's scan: start from -FLT_MAX and, for each kernel offset in row-major order, let a strictly
            # larger value replace the running maximum and record the offset k -- so the first maximum wins,
            # NaN never does (fmax keeps the other value, '>' is false), and a window with nothing above
            # -FLT_MAX keeps no offset (k = kk).  The offsets are recorded with uint8 arithmetic,
            # kidx += better * (k - kidx), instead of masked copies (which numpy runs far slower).
            none = len(self._offsets())
            kidx = workspace(xp, numpy.uint8 if none <= 255 else numpy.int32, "pool.kidx", y.size).reshape(y.shape)
            better = workspace(xp, numpy.bool_, "pool.mask", y.size).reshape(y.shape)
            step = workspace(xp, kidx.dtype, "pool.step", y.size).reshape(y.shape)
            views = self._offset_views(x, -numpy.inf, "pool.phase")

            def images(lo, hi):
                yy, kk, bb, ss = y[lo:hi], kidx[lo:hi], better[lo:hi], step[lo:hi]
                as_int = bb.view(kk.dtype) if kk.dtype == numpy.uint8 else bb
                yy[...] = -_FLT_MAX
                kk[...] = none
                for k, v in views:
                    v = v[lo:hi]
                    xp.greater(v, yy, out=bb)
                    xp.fmax(yy, v, out=yy)
                    xp.subtract(k, kk, out=ss)
                    xp.multiply(ss, as_int, out=ss)
                    kk += ss
            parallel_for(y.shape[0], images, y.size * len(views), xp)
            idx = self.max_idx
            if idx is None or idx.shape != y.shape or get_array_module(idx) is not xp:
                idx = self.max_idx = xp.empty(y.shape, dtype=numpy.int64)
            if len(top) > 1:
                top[1].data[...] = self._flat_index(xp, kidx, idx, global_index=False)
            self._flat_index(xp, kidx, idx, global_index=True)
        else:
            views = self._offset_views(x, 0, "pool.phase")
            sizes = self._sizes(xp, x.dtype)

            def images(lo, hi):
                yy = y[lo:hi]
                for k, v in views:
                    if k == 0:
                        yy[...] = v[lo:hi]
                    else:
                        yy += v[lo:hi]
                yy /= sizes
            parallel_for(y.shape[0], images, y.size * len(views), xp)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        xp = get_array_module(dy)
        if self.method == PP.MAX and len(top) > 1:
            # Caffe routes by the mask top (it may have been changed since forward): scatter-add.
            _route_by_index(xp, dy, bottom[0].diff, top[1].data.astype(numpy.int64), self.height * self.width)
            return
        if self.method == PP.MAX:
            # Each output's gradient goes to the one input its window's maximum came from (the index kept
            # by forward): a plain scatter when windows do not overlap, a scatter-add when they do.
            dx = bottom[0].diff.reshape(-1)
            dx[...] = 0
            idx, values = self.max_idx.reshape(-1), dy.reshape(-1)
            if self.missing:  # windows without a maximum pass nothing back
                keep = idx >= 0
                idx, values = idx[keep], values[keep]
            if self.stride_h >= self.kernel_h and self.stride_w >= self.kernel_w:
                dx[idx] = values
            else:
                _scatter_add(xp, dx, idx, values)
            return
        target, framed = self._target(bottom[0].diff, "pool.src")
        share = workspace(xp, dy.dtype, "pool.share", dy.size).reshape(dy.shape)
        sizes = self._sizes(xp, dy.dtype)
        dx = bottom[0].diff

        def images(lo, hi):
            t, sh_ = target[lo:hi], share[lo:hi]
            xp.divide(dy[lo:hi], sizes, out=sh_)
            t[...] = 0
            for i, j in self._offsets():
                t[self._window(i, j)] += sh_
            if framed:
                dx[lo:hi] = t[self._interior()]
        parallel_for(dy.shape[0], images, target.size * 2, xp)


class StochasticPooling(PoolingEngine):
    """Caffe's (GPU-only) STOCHASTIC pooling, on numpy or CuPy arrays: see ``PoolingLayer``'s docstring."""
    name = "stochastic"

    def __init__(self, layer, reason=""):
        super().__init__(layer, reason)
        self.rand_idx = None

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

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
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

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase != caffe_pb2.TRAIN:
            raise CaffeishError("STOCHASTIC pooling has no backward pass in the TEST phase (Caffe does not "
                                "implement one); run the layer in the TRAIN phase to train through it")
        dy = top[0].diff
        _route_by_index(get_array_module(dy), dy, bottom[0].diff, self.rand_idx, self.height * self.width)


class CudaPooling(PoolingEngine):
    """MAX / AVE by Caffe's CUDA kernels (``caffeish.cuda.pooling``); MAX keeps its int32 argmax for backward."""
    name = "cuda"

    def __init__(self, layer, reason=""):
        super().__init__(layer, reason)
        self.mask = None

    def geometry(self):
        return (self.height, self.width, self.pooled_h, self.pooled_w, self.kernel_h, self.kernel_w,
                self.stride_h, self.stride_w, self.pad_h, self.pad_w)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        is_max = self.method == PP.MAX
        if is_max and (self.mask is None or self.mask.shape != y.shape):
            self.mask = get_array_module(x).empty(y.shape, dtype=numpy.int32)
        cuda_pooling.forward(x, y, self.geometry(), is_max, self.mask)
        if is_max and len(top) > 1:
            top[1].data[...] = self.mask

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        mask = None
        if self.method == PP.MAX:
            # Caffe routes MAX by the mask top when there is one (it may have been changed since forward).
            mask = top[1].data.astype(numpy.int32) if len(top) > 1 else self.mask
            if mask is None:
                raise CaffeishError("MAX pooling's backward ran before its forward: there is no argmax to route by")
        cuda_pooling.backward(top[0].diff, bottom[0].diff, self.geometry(), self.method == PP.MAX, mask)


def _route_by_index(xp, dy, dx, idx, plane):
    """dx = 0, then dy scattered (summed) to the flat in-plane indices ``idx`` (dy's shape; -1: nowhere)."""
    n, c = dy.shape[:2]
    offsets = (xp.arange(n * c, dtype=numpy.int64) * plane).reshape(n, c, 1, 1)
    valid = (idx >= 0).ravel()
    dx = dx.reshape(-1)
    dx[...] = 0
    _scatter_add(xp, dx, (idx + offsets).ravel()[valid], dy.ravel()[valid])


def _phase_span(a, stride, pad, size, length):
    """The phase positions [lo, hi) (of ``length``) that fall inside the input: 0 <= a + r stride - pad < size."""
    lo = max(0, -(-(pad - a) // stride))
    hi = min(length, (size - 1 + pad - a) // stride + 1) if size - 1 + pad - a >= 0 else 0
    return lo, max(lo, hi)


def _scatter_add(xp, out, index, values):
    """out[index] += values, repeated indices summed (numpy's ufunc.at; CuPy's scatter_add)."""
    if xp is numpy:
        numpy.add.at(out, index, values)
        return
    import cupyx
    cupyx.scatter_add(out, index, values)
