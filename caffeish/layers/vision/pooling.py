"""The Pooling layer (Caffe's PoolingLayer): 2-D MAX / AVE / STOCHASTIC pooling over (N, C, H, W), with
Caffe's output-size rounding (``pooled_size``).  The engine that runs it (``pooling_engines``) is chosen per
input shape by ``caffeish.layers.vision.engines``.
"""
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from ...proto import caffe_pb2
from .engines import engine_for

PP = caffe_pb2.PoolingParameter


def pooled_size(size, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooled length along one axis (see ``PoolingLayer``)."""
    num = size + 2 * pad - kernel
    out = (-(-num // stride) if ceil_mode else num // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register_layer("Pooling")
class PoolingLayer(Layer):
    """Pooling: Caffe's 2-D MAX / AVE / STOCHASTIC pooling over (N, C, H, W), with Caffe's output-size rounding.

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
    """
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
        self.engine = None

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
        engine_for(self, bottom[0].data)

    def forward(self, bottom, top):
        self.engine.forward(bottom, top)

    def backward(self, top, propagate_down, bottom):
        self.engine.backward(top, propagate_down, bottom)
