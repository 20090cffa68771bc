"""Convolution: Caffe's N-D, grouped, dilated convolution (cross-correlation, as Caffe computes it), and the
parameter rules it shares with Deconvolution.  Its engines are in ``conv_engines``, picked by ``engines``.
"""
import math

from ...errors import CaffeishError
from ...im2col import conv_output_shape
from ...layer import Layer, ParamBlob, register_layer
from .engines import engine_for


def _spatial_values(p, name, num_spatial, default, what):
    """Caffe's rule for repeated ``name`` vs. ``name_h``/``name_w``."""
    values = list(getattr(p, name))
    h_name, w_name = f"{name}_h", f"{name}_w"
    if h_name == "kernel_size_h":
        h_name, w_name = "kernel_h", "kernel_w"
    if p.HasField(h_name) or p.HasField(w_name):
        if num_spatial != 2:
            raise CaffeishError(f"{h_name} & {w_name} can only be used for 2-D convolution, "
                                f"but the input has {num_spatial} spatial axes")
        if values:
            raise CaffeishError(f"give either {name} or {h_name}/{w_name}, not both")
        if name == "kernel_size" and not (p.HasField(h_name) and p.HasField(w_name)):
            raise CaffeishError("for a non-square kernel both kernel_h and kernel_w are required")
        return [int(getattr(p, h_name)), int(getattr(p, w_name))]
    if not values:
        if default is None:
            raise CaffeishError(f"convolution_param needs {what}: give kernel_size (or kernel_h and kernel_w)")
        return [default] * num_spatial
    if len(values) not in (1, num_spatial):
        raise CaffeishError(f"{name} must be given once or once per spatial axis ({num_spatial}), "
                            f"but it is given {len(values)} times")
    return [int(values[0])] * num_spatial if len(values) == 1 else [int(v) for v in values]


def conv_geometry(p, num_spatial):
    """(kernel, stride, pad, dilation) lists from a ConvolutionParameter, by Caffe's rules, checked."""
    kernel = _spatial_values(p, "kernel_size", num_spatial, None, "a kernel size")
    stride = _spatial_values(p, "stride", num_spatial, 1, "")
    pad = _spatial_values(p, "pad", num_spatial, 0, "")
    dilation = [int(d) for d in p.dilation]
    if len(dilation) not in (0, 1, num_spatial):
        raise CaffeishError(f"dilation must be given once or once per spatial axis ({num_spatial}), "
                            f"but it is given {len(dilation)} times")
    dilation = dilation * num_spatial if len(dilation) == 1 else (dilation or [1] * num_spatial)
    for name, values in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in values):
            raise CaffeishError(f"every {name} must be positive, got {tuple(values)}")
    return kernel, stride, pad, dilation


def window_setup(layer, bottom):
    """The window geometry of a convolution_param (Convolution, Deconvolution, Im2col): sets channel_axis,
    num_spatial and kernel / stride / pad / dilation, by Caffe's rules, checked."""
    p = layer.param.convolution_param
    layer.channel_axis = bottom[0].canonical_axis(p.axis)
    layer.num_spatial = bottom[0].num_axes - layer.channel_axis - 1
    if layer.num_spatial < 1:
        raise CaffeishError(f"{layer.type} needs at least one spatial axis after the channel axis "
                            f"{layer.channel_axis}, but the bottom has shape {bottom[0].shape}")
    layer.kernel, layer.stride, layer.pad, layer.dilation = conv_geometry(p, layer.num_spatial)


def base_conv_setup(layer, bottom, transposed=False):
    """Caffe's BaseConvolutionLayer::LayerSetUp, shared by Convolution and Deconvolution.

    Sets channel_axis, num_spatial, kernel/stride/pad/dilation, channels, num_output, group, bias_term and
    the parameter blobs: weights (num_output, C / group, *kernel), or (C, num_output / group, *kernel) when
    ``transposed`` (Deconvolution), and a (num_output,) bias.
    """
    p = layer.param.convolution_param
    window_setup(layer, bottom)
    layer.channels = bottom[0].shape[layer.channel_axis]
    if not p.HasField("num_output") or p.num_output <= 0:
        raise CaffeishError("convolution_param needs a positive num_output")
    layer.num_output = int(p.num_output)
    layer.group = int(p.group)
    if layer.group <= 0:
        raise CaffeishError(f"group must be positive, got {layer.group}")
    if layer.channels % layer.group:
        raise CaffeishError(f"the input's {layer.channels} channels are not divisible by group {layer.group}")
    if layer.num_output % layer.group:
        raise CaffeishError(f"num_output {layer.num_output} is not divisible by group {layer.group}")
    layer.bias_term = bool(p.bias_term)
    if transposed:
        weight_shape = (layer.channels, layer.num_output // layer.group) + tuple(layer.kernel)
    else:
        weight_shape = (layer.num_output, layer.channels // layer.group) + tuple(layer.kernel)
    specs = [ParamBlob("weights", weight_shape, p.weight_filler)]
    if layer.bias_term:
        specs.append(ParamBlob("bias", (layer.num_output,), p.bias_filler))
    layer.init_params(specs, f"with num_output {layer.num_output}, {layer.channels} input channels, group "
                             f"{layer.group} and kernel {tuple(layer.kernel)}")


def check_conv_bottoms(layer, bottom):
    """The bottoms keep the set-up's axes and channels, and all have the same shape."""
    axis, shape = layer.channel_axis, bottom[0].shape
    if len(shape) != axis + 1 + layer.num_spatial:
        raise CaffeishError(f"the bottom's number of axes may not change: it was {axis + 1 + layer.num_spatial}, "
                            f"now shape {shape}")
    if shape[axis] != layer.channels:
        raise CaffeishError(f"the bottom has {shape[axis]} channels, but the layer was set up for {layer.channels}")
    for b in bottom[1:]:
        if b.shape != shape:
            raise CaffeishError(f"all bottoms must have the same shape: {shape} vs. {b.shape}")


@register_layer("Convolution")
class ConvolutionLayer(Layer):
    """y = w * x + b, Caffe's grouped correlation, for each bottom.

    bottom: one or more blobs of the same shape ``(*num, C, *spatial)`` where ``C`` is at
    ``convolution_param.axis`` (default 1); each gives the top of the same index,
    ``(*num, num_output, *out)`` with ``out = (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1``
    (C++ integer division).  blobs: weights ``(num_output, C / group, *kernel)`` and, with
    ``bias_term``, bias ``(num_output,)``.
    """
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True

    def macs(self, bottom, top):
        """Each output value is a dot product over (C / group) x kernel inputs."""
        return sum(t.count for t in top) * math.prod(self.blobs[0].shape[1:]) if self.blobs else 0

    def layer_setup(self, bottom, top):
        base_conv_setup(self, bottom)
        self.engine = None

    def reshape(self, bottom, top):
        check_conv_bottoms(self, bottom)
        axis, shape = self.channel_axis, bottom[0].shape
        self.spatial = tuple(shape[axis + 1:])
        self.out_shape = conv_output_shape(self.spatial, self.kernel, self.stride, self.pad, self.dilation)
        if any(o <= 0 for o in self.out_shape):
            raise CaffeishError(
                f"output size {self.out_shape} is not positive: input {self.spatial}, kernel {tuple(self.kernel)}, "
                f"stride {tuple(self.stride)}, pad {tuple(self.pad)}, dilation {tuple(self.dilation)}")
        self.num = math.prod(shape[:axis])
        self.out_count = math.prod(self.out_shape)
        top_shape = tuple(shape[:axis]) + (self.num_output,) + self.out_shape
        for t in top:
            t.reshape(top_shape)
        engine_for(self, self._as_batch(bottom[0].data))

    def _as_batch(self, array):
        return array.reshape((self.num, self.channels) + self.spatial)

    def forward(self, bottom, top):
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            self.engine.forward(self._as_batch(b.data), t.data.reshape(self.num, self.num_output, self.out_count),
                                bias)

    def backward(self, top, propagate_down, bottom):
        need_weight = self.param_propagate_down[0]
        need_bias = self.bias_term and self.param_propagate_down[1]
        for t, down, b in zip(top, propagate_down, bottom):
            if not (need_weight or need_bias or down):
                continue
            self.engine.backward(self._as_batch(b.data), t.diff.reshape(self.num, self.num_output, self.out_count),
                                 self._as_batch(b.diff) if down else None,
                                 self.blobs[0].diff if need_weight else None,
                                 self.blobs[1].diff if need_bias else None)
