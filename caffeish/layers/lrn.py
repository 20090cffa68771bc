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
"""
from ..backend import get_array_module
from ..errors import CaffeishError
from ..layer import Layer, register_layer
from ..proto import caffe_pb2

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


@register_layer("LRN")
class LRNLayer(Layer):
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

    def _scale(self, x):
        sq = x * x
        if self.region == LP.ACROSS_CHANNELS:
            return self.k + (self.alpha / self.size) * _window_sum(sq, self.size, (1,))
        return 1.0 + (self.alpha / (self.size * self.size)) * _window_sum(sq, self.size, (2, 3))

    def forward(self, bottom, top):
        x = bottom[0].data
        # In place the input is overwritten: keep a copy for backward (Caffe would read the overwritten data).
        self.saved_input = x.copy() if self._in_place(bottom, top) else None
        self.scale = self._scale(x)
        top[0].data[...] = x * self.scale ** -self.beta

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.saved_input if self._in_place(bottom, top) and self.saved_input is not None else bottom[0].data
        dy = top[0].diff
        scale = self.scale
        if scale is None or scale.shape != x.shape:
            scale = self._scale(x)
        # y = x s^-b  =>  dx = dy s^-b - 2 a b / N x * window_sum(dy x s^(-b-1)), the window being
        # symmetric so that its transpose is itself; N = n (across) or n^2 (within).
        ratio = dy * x * scale ** (-self.beta - 1.0)
        if self.region == LP.ACROSS_CHANNELS:
            spread = _window_sum(ratio, self.size, (1,))
            coeff = 2.0 * self.alpha * self.beta / self.size
        else:
            spread = _window_sum(ratio, self.size, (2, 3))
            coeff = 2.0 * self.alpha * self.beta / (self.size * self.size)
        bottom[0].diff[...] = dy * scale ** -self.beta - coeff * x * spread
