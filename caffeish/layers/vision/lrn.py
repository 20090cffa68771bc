"""The LRN layer (Caffe's LRNLayer): local response normalisation over (N, C, H, W), across channels or
within each channel; CUDA kernels for ACROSS_CHANNELS on CuPy arrays (``caffeish.cuda.lrn``).
"""
from ...backend import get_array_module
from ...cuda import kernels as cuda_kernels
from ...cuda import lrn as cuda_lrn
from ...errors import CaffeishError
from ...cpu import parallel_for, workspace
from ...layer import Layer, register_layer
from ...proto import caffe_pb2

LP = caffe_pb2.LRNParameter


def _window_sum(a, size, axes):
    """Sum over a centred window of odd ``size`` along each axis in ``axes``, zero padded (separable)."""
    xp = get_array_module(a)
    half = (size - 1) // 2
    for axis in axes:
        length = a.shape[axis]
        pad_shape = list(a.shape)
        pad_shape[axis] = length + 2 * half
        padded = xp.zeros(pad_shape, dtype=a.dtype)
        index = [slice(None)] * a.ndim
        index[axis] = slice(half, half + length)
        padded[tuple(index)] = a
        out = xp.zeros_like(a)
        for off in range(size):
            index[axis] = slice(off, off + length)
            out += padded[tuple(index)]
        a = out
    return a


#: Up to this local_size the channel window is summed as shifted slices; beyond, as a difference of
#: cumulative sums (see bench/README.md, Tuning history).
SHIFTED_SUM_MAX_SIZE = 25


def _channel_window_sum(a, size, out):
    """out[:, c] = sum of a[:, c'] for |c' - c| <= (size - 1) / 2 (channels past either end are 0).

    ``a`` is (N, C, ...); no padded copy is made: each shift adds the overlapping slices only.
    """
    xp = get_array_module(a)
    half = (size - 1) // 2
    channels = a.shape[1]
    if size <= SHIFTED_SUM_MAX_SIZE:
        out[...] = a
        for shift in range(1, min(half, channels - 1) + 1):
            out[:, shift:] += a[:, :channels - shift]   # the window's channels below c
            out[:, :channels - shift] += a[:, shift:]   # and above
        return out
    # Cumulative sums: window(c) = cs[min(c + half, C - 1)] - cs[c - half - 1] (0 below channel 0).
    cs = xp.cumsum(a, axis=1, dtype=a.dtype)
    top = min(half, channels - 1)
    out[:, :channels - top] = cs[:, top:]          # cs[c + half], while it exists
    out[:, channels - top:] = cs[:, channels - 1:]  # then the last one
    if channels > half + 1:
        out[:, half + 1:] -= cs[:, :channels - half - 1]   # minus cs[c - half - 1]
    return out


@register_layer("LRN")
class LRNLayer(Layer):
    """LRN: Caffe's local response normalisation over (N, C, H, W).   top: the bottom's shape.

    ACROSS_CHANNELS (default):
        scale = k + alpha / n * sum_{c' in [c - (n-1)/2, c + (n-1)/2]} x[c']^2   (channels outside are 0)
        y = x * scale^-beta
    WITHIN_CHANNEL (Caffe builds it from Split, Power, AVE Pooling, Power, Eltwise PROD):
        scale = 1 + alpha / n^2 * sum over the n x n window centred on (h, w) of x^2   (zero padded)
        y = x * scale^-beta
        -- ``k`` is not used, and the window sum is divided by n^2 everywhere, borders included:
        Caffe's AVE pool with pad (n-1)/2 counts the padding in its divisor.
    ``n`` is ``local_size``, which must be odd.  In place (top = bottom) works: the input is kept for backward.
    Across channels the window sum adds shifted channel slices (no padded copy; a difference of cumulative
    sums for very large windows); ``scale`` and ``scale^-beta`` are kept from forward for backward.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise CaffeishError(f"LRN only supports odd values for local_size, got {self.size}")
        self.alpha = float(p.alpha)
        self.beta = float(p.beta)
        self.k = float(p.k)
        self.region = p.norm_region
        if self.region not in (LP.ACROSS_CHANNELS, LP.WITHIN_CHANNEL):
            raise CaffeishError(f"unknown LRN norm_region {self.region}")
        self.scale = None
        self.saved_input = None

    @staticmethod
    def _in_place(bottom, top):
        return top[0] is bottom[0] or top[0].shares_data_with(bottom[0])

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise CaffeishError(f"LRN needs a 4-axis (num, channels, height, width) input, got shape {bottom[0].shape}")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _buffers(self, xp, shape):
        """Per-layer (scale, scale^-beta) kept from forward for backward, allocated once per shape."""
        kept = getattr(self, "_kept", None)
        if kept is None or kept[0].shape != shape or get_array_module(kept[0]) is not xp:
            kept = self._kept = (xp.empty(shape, dtype=self.dtype), xp.empty(shape, dtype=self.dtype))
        return kept

    def _scale(self, x, out=None):
        xp = get_array_module(x)
        out = xp.empty_like(x) if out is None else out
        if self.region == LP.ACROSS_CHANNELS:
            sq = workspace(xp, x.dtype, "lrn.tmp", x.size).reshape(x.shape)

            def images(lo, hi):
                xp.multiply(x[lo:hi], x[lo:hi], out=sq[lo:hi])
                _channel_window_sum(sq[lo:hi], self.size, out[lo:hi])
                out[lo:hi] *= self.alpha / self.size
                out[lo:hi] += self.k
            parallel_for(x.shape[0], images, x.size * 4, xp)
            return out
        out[...] = 1.0 + (self.alpha / (self.size * self.size)) * _window_sum(x * x, self.size, (2, 3))
        return out

    def _keep_input(self, bottom, top):
        """In place the input is overwritten: keep a copy for backward (Caffe would read the overwritten data)."""
        x = bottom[0].data
        if self._in_place(bottom, top):
            if self.saved_input is None or self.saved_input.shape != x.shape:
                self.saved_input = get_array_module(x).empty_like(x)
            self.saved_input[...] = x
        else:
            self.saved_input = None

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        self._keep_input(bottom, top)
        scale, powered = self._buffers(xp, x.shape)
        y = top[0].data
        self.scale = self._scale(x, scale)

        def images(lo, hi):
            xp.power(scale[lo:hi], -self.beta, out=powered[lo:hi])
            xp.multiply(x[lo:hi], powered[lo:hi], out=y[lo:hi])
        parallel_for(x.shape[0], images, x.size * 4, xp)

    def forward_gpu(self, bottom, top):
        """ACROSS_CHANNELS by the CUDA kernels (``caffeish.cuda.lrn``); otherwise the numpy code on CuPy arrays."""
        x, y = bottom[0].data, top[0].data
        scale, powered = self._buffers(get_array_module(x), x.shape)
        if not self._kernels_apply(x, y, scale):
            return self.forward_cpu(bottom, top)
        self._keep_input(bottom, top)
        # the kernel reads an input element before it writes it, so in place needs no copy for forward itself
        cuda_lrn.forward(x, y, scale, powered, self.size, self.alpha, self.beta, self.k)
        self.scale = scale

    def _kernels_apply(self, *arrays):
        return self.region == LP.ACROSS_CHANNELS and cuda_kernels.usable(*arrays)

    def _input_and_kept(self, bottom, top, fill_scale):
        """The forward input and (scale, scale^-beta) for backward, recomputed if forward did not keep them."""
        x = self.saved_input if self._in_place(bottom, top) and self.saved_input is not None else bottom[0].data
        xp = get_array_module(x)
        kept = getattr(self, "_kept", None)
        if self.scale is None or self.scale.shape != x.shape or kept is None:
            scale, powered = self._buffers(xp, x.shape)
            fill_scale(x, scale)
            xp.power(scale, -self.beta, out=powered)
            return x, scale, powered
        return x, self.scale, kept[1]

    def backward_gpu(self, top, propagate_down, bottom):
        x = bottom[0].data
        scale, powered = self._buffers(get_array_module(x), x.shape)
        if not (propagate_down[0] and self._kernels_apply(x, top[0].diff, bottom[0].diff, scale, powered)):
            return self.backward_cpu(top, propagate_down, bottom)
        x, scale, powered = self._input_and_kept(
            bottom, top, lambda x, scale: cuda_lrn.fill_scale(x, scale, self.size, self.alpha, self.k))
        cuda_lrn.backward(x, scale, powered, top[0].diff, bottom[0].diff, self.size, self.alpha, self.beta)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, scale, powered = self._input_and_kept(bottom, top, self._scale)
        xp = get_array_module(x)
        dy = top[0].diff
        # y = x s^-b  =>  dx = dy s^-b - 2 a b / N x * window_sum(dy x s^(-b-1)), the window being
        # symmetric so that its transpose is itself; N = n (across) or n^2 (within).
        direct = workspace(xp, x.dtype, "lrn.direct", x.size).reshape(x.shape)
        ratio = workspace(xp, x.dtype, "lrn.tmp", x.size).reshape(x.shape)
        across = self.region == LP.ACROSS_CHANNELS
        spread = workspace(xp, x.dtype, "lrn.spread", x.size).reshape(x.shape) if across else None
        dx = bottom[0].diff
        if across:
            coeff = 2.0 * self.alpha * self.beta / self.size
        else:
            coeff = 2.0 * self.alpha * self.beta / (self.size * self.size)

        def images(lo, hi):
            xp.multiply(dy[lo:hi], powered[lo:hi], out=direct[lo:hi])   # dy s^-b
            xp.multiply(direct[lo:hi], x[lo:hi], out=ratio[lo:hi])
            ratio[lo:hi] /= scale[lo:hi]                                  # dy x s^(-b-1)
            if across:
                part = _channel_window_sum(ratio[lo:hi], self.size, spread[lo:hi])
            else:
                part = _window_sum(ratio[lo:hi], self.size, (2, 3))
            part *= x[lo:hi]
            part *= coeff
            xp.subtract(direct[lo:hi], part, out=dx[lo:hi])
        parallel_for(x.shape[0], images, x.size * 6, xp)
