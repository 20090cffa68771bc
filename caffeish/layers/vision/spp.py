"""The SPP layer (Caffe's SPPLayer): spatial pyramid pooling over (N, C, H, W), one inner Pooling layer per
pyramid level (``spp_level_param``), their outputs flattened and concatenated (one level's: as it is).
"""
import math

from ...blob import Blob
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from ...proto import caffe_pb2
from .pooling import PoolingLayer

SP = caffe_pb2.SPPParameter
PP = caffe_pb2.PoolingParameter
MAX_PYRAMID_HEIGHT = 32
_POOL = {SP.MAX: PP.MAX, SP.AVE: PP.AVE, SP.STOCHASTIC: PP.STOCHASTIC}


def spp_level_param(level, height, width, pool, name=""):
    """The LayerParameter of Caffe's pooling layer for pyramid ``level`` of an H x W input."""
    bins = 2 ** level
    lp = caffe_pb2.LayerParameter(name=f"{name}_level{level}", type="Pooling", phase=caffe_pb2.TRAIN)
    p = lp.pooling_param
    p.pool = _POOL[pool]
    for size, kernel_field, stride_field, pad_field in ((height, "kernel_h", "stride_h", "pad_h"),
                                                        (width, "kernel_w", "stride_w", "pad_w")):
        kernel = math.ceil(size / bins)
        setattr(p, kernel_field, kernel)
        setattr(p, stride_field, kernel)
        setattr(p, pad_field, (kernel * bins - size + 1) // 2)
    return lp


@register_layer("SPP")
class SPPLayer(Layer):
    """SPP: Caffe's spatial pyramid pooling over (N, C, H, W).

    Level ``l`` (0 .. pyramid_height - 1) has ``b = 2^l`` bins per side and is a Pooling layer with
    ``kernel = ceil(H / b)``, ``stride = kernel``, ``pad = (kernel b - H + 1) / 2`` (integer division;
    likewise for W), and Caffe's pooling output size (so a level may have fewer than ``b`` bins, and
    Pooling's rule ``pad < kernel`` may refuse a small input).  With ``pyramid_height`` 1 the single
    level's output is the top, ``(N, C, 1, 1)``; otherwise each level is flattened to ``(N, C * bins)`` and
    the levels are concatenated: top ``(N, sum over levels of C * bins)``.  ``pool`` is MAX, AVE or
    STOCHASTIC; as in Caffe the inner Pooling layers always run in the TRAIN phase (Caffe builds them
    from a LayerParameter whose phase is left at its default).  Backward sums the levels' gradients.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.spp_param
        if not p.HasField("pyramid_height") or p.pyramid_height < 1:
            raise CaffeishError(f"spp_param needs a positive pyramid_height, got {p.pyramid_height}")
        if p.pyramid_height > MAX_PYRAMID_HEIGHT:
            raise CaffeishError(f"spp_param.pyramid_height {p.pyramid_height} is more than {MAX_PYRAMID_HEIGHT} "
                                f"levels (level l has 2^l x 2^l bins)")
        if p.pool not in _POOL:
            raise CaffeishError(f"unknown SPP pooling method {p.pool}")
        self.pyramid_height = int(p.pyramid_height)
        self.geometry = None
        self.levels = []
        self.source = Blob(dtype=self.dtype, name=f"{self.name}_input")
        self.pooled = [Blob(dtype=self.dtype, name=f"{self.name}_level{i}") for i in range(self.pyramid_height)]

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise CaffeishError(f"SPP needs a 4-axis (num, channels, height, width) input, got shape {b.shape}")
        if b.shape[2] <= 0 or b.shape[3] <= 0:
            raise CaffeishError(f"SPP's input height and width must be positive, got shape {b.shape}")
        if top[0] is b:
            raise CaffeishError("SPP cannot run in place; give its top a name of its own")
        self.source.reshape(b.shape)
        self.source.share_data(b)
        if self.geometry != b.shape:
            # Caffe rebuilds the pooling layers whenever the input shape changes.
            self.geometry = b.shape
            self.levels = []
            for i in range(self.pyramid_height):
                lp = spp_level_param(i, b.shape[2], b.shape[3], self.param.spp_param.pool, self.name)
                layer = PoolingLayer(lp, dtype=self.dtype)
                try:
                    layer.setup([self.source], [self.pooled[i]])
                except CaffeishError as e:
                    raise CaffeishError(f"pyramid level {i} ({2 ** i} x {2 ** i} bins) cannot pool the "
                                        f"{b.shape[2]} x {b.shape[3]} input: {e.reason}") from None
                self.levels.append(layer)
        else:
            for layer, out in zip(self.levels, self.pooled):
                layer.reshape([self.source], [out])
        if self.pyramid_height == 1:
            top[0].reshape(self.pooled[0].shape)
        else:
            self.widths = [out.count_range(1) for out in self.pooled]
            top[0].reshape((b.shape[0], sum(self.widths)))

    def forward(self, bottom, top):
        self.source.share_data(bottom[0])
        if self.pyramid_height == 1:
            self.levels[0].forward([self.source], [self.pooled[0]])
            top[0].data[...] = self.pooled[0].data
            return
        y = top[0].data
        start = 0
        for layer, out, width in zip(self.levels, self.pooled, self.widths):
            layer.forward([self.source], [out])
            y[:, start:start + width] = out.data.reshape(out.shape[0], width)
            start += width

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        total = None
        start = 0
        for i, (layer, out) in enumerate(zip(self.levels, self.pooled)):
            if self.pyramid_height == 1:
                out.diff[...] = dy
            else:
                width = self.widths[i]
                out.diff[...] = dy[:, start:start + width].reshape(out.shape)
                start += width
            layer.backward([out], [True], [self.source])
            total = self.source.diff.copy() if total is None else total + self.source.diff
        bottom[0].diff[...] = total
