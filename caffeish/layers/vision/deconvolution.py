"""The Deconvolution layer (Caffe's DeconvolutionLayer): the transposed convolution, the gradient of Convolution
with respect to its input.  Its engines (``conv_engines.GemmDeconvolution``, ``NativeDeconvolution``) are
picked by ``engines``.
"""
import math


from ...errors import CaffeishError
from ...layer import Layer, register_layer
from .convolution import base_conv_setup, check_conv_bottoms
from .engines import engine_for


@register_layer("Deconvolution")
class DeconvolutionLayer(Layer):
    """Deconvolution: Caffe's transposed convolution (the gradient of Convolution with respect to its input).

    bottom: one or more blobs of the same shape ``(*num, C, *spatial)`` with ``C`` at
    ``convolution_param.axis`` (default 1); each gives the top of the same index,
    ``(*num, num_output, *out)`` with ``out = stride (in - 1) + dilation (k - 1) + 1 - 2 pad``.
    blobs: weights ``(C, num_output / group, *kernel)`` (Caffe's reversed convolution shape) and, with
    ``bias_term``, bias ``(num_output,)``.
    """
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True

    def macs(self, bottom, top):
        """Each input value is spread over (O / group) x kernel outputs."""
        return sum(b.count for b in bottom) * math.prod(self.blobs[0].shape[1:]) if self.blobs else 0

    def layer_setup(self, bottom, top):
        base_conv_setup(self, bottom, transposed=True)
        self.engine = None

    def reshape(self, bottom, top):
        check_conv_bottoms(self, bottom)
        axis, shape = self.channel_axis, bottom[0].shape
        for t, b in zip(top, bottom):
            if t is b:
                raise CaffeishError("Deconvolution cannot run in place; give its top a name of its own")
        self.spatial = tuple(shape[axis + 1:])
        self.out_shape = tuple(s * (i - 1) + d * (k - 1) + 1 - 2 * q for i, k, s, q, d in
                               zip(self.spatial, self.kernel, self.stride, self.pad, self.dilation))
        if any(o <= 0 for o in self.out_shape):
            raise CaffeishError(
                f"output size {self.out_shape} is not positive: input {self.spatial}, kernel {tuple(self.kernel)}, "
                f"stride {tuple(self.stride)}, pad {tuple(self.pad)}, dilation {tuple(self.dilation)}")
        self.num = math.prod(shape[:axis])
        top_shape = tuple(shape[:axis]) + (self.num_output,) + self.out_shape
        for t in top:
            t.reshape(top_shape)
        engine_for(self, bottom[0].data)

    def forward(self, bottom, top):
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            self.engine.forward(b.data.reshape((self.num, self.channels) + self.spatial),
                                t.data.reshape((self.num, self.num_output) + self.out_shape))
            if bias is not None:
                y = t.data.reshape(self.num, self.num_output, -1)
                y += bias.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        need_weight = self.param_propagate_down[0]
        need_bias = self.bias_term and self.param_propagate_down[1]
        for t, down, b in zip(top, propagate_down, bottom):
            dy = t.diff.reshape((self.num, self.num_output) + self.out_shape)
            if need_bias:
                self.blobs[1].diff[...] += dy.reshape(self.num, self.num_output, -1).sum(axis=(0, 2))
            if need_weight or down:
                batch = (self.num, self.channels) + self.spatial
                self.engine.backward(b.data.reshape(batch), dy, b.diff.reshape(batch) if down else None,
                                     self.blobs[0].diff if need_weight else None)
