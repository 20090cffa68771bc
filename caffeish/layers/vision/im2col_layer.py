"""The Im2col layer (Caffe's Im2colLayer): the convolution column buffer of its bottom as its top.
"""
from ...errors import CaffeishError
from ...im2col import col2im, conv_output_shape, im2col
from ...layer import Layer, register_layer
from .convolution import window_setup


@register_layer("Im2col")
class Im2colLayer(Layer):
    """Im2col: Caffe's layer that exposes the convolution column buffer as its top.

    bottom: ``(*num, C, *spatial)`` with ``C`` at ``convolution_param.axis`` (default 1).
    top: ``(*num, C * prod(kernel), *out)``, ``out = (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1``
    (C++ integer division), laid out as Caffe's column buffer: channel ``c * prod(kernel) + k`` (``k`` the
    row-major kernel offset) holds, at each output position, the input value that offset sees, or 0 in the
    padding.  Only ``kernel_size`` / ``stride`` / ``pad`` / ``dilation`` (or their ``_h``/``_w`` forms) are read.
    Backward is col2im: the overlapping patches are summed back onto the input.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        window_setup(self, bottom)

    def reshape(self, bottom, top):
        axis = self.channel_axis
        shape = bottom[0].shape
        if len(shape) != axis + 1 + self.num_spatial:
            raise CaffeishError(f"the bottom's number of axes may not change: it was {axis + 1 + self.num_spatial}, "
                                f"now shape {shape}")
        if top[0] is bottom[0]:
            raise CaffeishError("Im2col cannot run in place; give its top a name of its own")
        self.spatial = tuple(shape[axis + 1:])
        self.out_shape = conv_output_shape(self.spatial, self.kernel, self.stride, self.pad, self.dilation)
        if any(o <= 0 for o in self.out_shape):
            raise CaffeishError(
                f"output size {self.out_shape} is not positive: input {self.spatial}, kernel {tuple(self.kernel)}, "
                f"stride {tuple(self.stride)}, pad {tuple(self.pad)}, dilation {tuple(self.dilation)}")
        self.channels = shape[axis]
        self.num = 1
        for s in shape[:axis]:
            self.num *= s
        kdim = self.channels
        for k in self.kernel:
            kdim *= k
        top[0].reshape(tuple(shape[:axis]) + (kdim,) + self.out_shape)

    def _batch_shape(self):
        return (self.num, self.channels) + self.spatial

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self._batch_shape())
        cols = im2col(x, self.kernel, self.stride, self.pad, self.dilation, self.out_shape)
        top[0].data[...] = cols.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dcols = top[0].diff.reshape(self.num, -1, top[0].count_range(self.channel_axis + 1))
        dx = col2im(dcols, self._batch_shape(), self.kernel, self.stride, self.pad, self.dilation, self.out_shape)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
