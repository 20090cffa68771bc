"""Deconvolution: Caffe's transposed convolution (the gradient of Convolution with respect to its input).

bottom: one or more blobs of the same shape ``(*num, C, *spatial)`` with ``C`` at
``convolution_param.axis`` (default 1); each gives the top of the same index,
``(*num, num_output, *out)`` with ``out = stride (in - 1) + dilation (k - 1) + 1 - 2 pad``.
blobs: weights ``(C, num_output / group, *kernel)`` (Caffe's reversed convolution shape) and, with
``bias_term``, bias ``(num_output,)``.

Where the compiled direct convolution applies (``caffeish.cpu.native.direct``; 2-D, numpy) all three passes
run there, with the roles of input and output swapped.  Otherwise forward is Convolution's backward-data:
per group, columns ``W^T x`` are scattered back with col2im onto the (padded) output, whose padding is then
dropped, and the bias is added.  Backward is a Convolution forward of the top's gradient: the bottom's
gradient is ``W im2col(dy)``, the weights' gradient ``x im2col(dy)^T`` summed over images, the bias's the
sum of ``dy``.
"""
import math

import numpy

from ...backend import get_array_module
from ...errors import CaffeishError
from ...im2col import col2im, im2col
from ...layer import Layer, register_layer
from ...cpu.native.direct import DirectConvolution
from . import convolution
from .convolution import base_conv_setup, check_conv_bottoms


@register_layer("Deconvolution")
class DeconvolutionLayer(Layer):
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True

    def macs(self, bottom, top):
        """Each input value is spread over (O / group) x kernel outputs."""
        return sum(b.count for b in bottom) * math.prod(self.blobs[0].shape[1:]) if self.blobs else 0

    def layer_setup(self, bottom, top):
        base_conv_setup(self, bottom, transposed=True)

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
        self.num = 1
        for s in shape[:axis]:
            self.num *= s
        top_shape = tuple(shape[:axis]) + (self.num_output,) + self.out_shape
        for t in top:
            t.reshape(top_shape)
        # the convolution this layer transposes: from the top's shape to the bottom's, with the same weights
        self.native = DirectConvolution.make(
            get_array_module(bottom[0].data), self.dtype, self.num, self.num_output, self.channels, self.group,
            self.kernel, self.stride, self.pad, self.dilation, self.out_shape, self.spatial) \
            if convolution.NATIVE else None
        if self.native is not None and not self.native.covers_data_gradient:
            self.native = None

    # -- helpers ---------------------------------------------------------------
    def _chunks(self):
        """Image ranges whose column buffer fits in Convolution's COL_BUFFER_BYTES."""
        kdim = self.num_output
        for k in self.kernel:
            kdim *= k
        cols = 1
        for s in self.spatial:
            cols *= s
        per_image = max(1, kdim * cols * self.dtype.itemsize)
        step = max(1, min(self.num, convolution.COL_BUFFER_BYTES // per_image))
        return [(i, min(i + step, self.num)) for i in range(0, max(self.num, 1), step)]

    def _weights(self):
        """(group, C / group, num_output / group * prod(kernel))."""
        return self.blobs[0].data.reshape(self.group, self.channels // self.group, -1)

    def _top_batch(self, n):
        return (n, self.num_output) + self.out_shape

    def _columns(self, y):
        """y (n, num_output, *out) -> (n, group, num_output / group * prod(kernel), prod(in))."""
        cols = im2col(y, self.kernel, self.stride, self.pad, self.dilation, self.spatial)
        return cols.reshape(y.shape[0], self.group, -1, cols.shape[-1])

    # -- forward / backward ------------------------------------------------------
    def forward(self, bottom, top):
        wt = self._weights().swapaxes(1, 2)[None]
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            x = b.data.reshape(self.num, self.group, self.channels // self.group, -1)
            y = t.data.reshape(self._top_batch(self.num))
            if self.native is not None and get_array_module(x) is numpy:
                self.native.data_gradient(self.blobs[0].data, b.data, y)
                self._add_bias(t, bias)
                continue
            for start, stop in self._chunks():
                # (1, g, O/g K, C/g) @ (n, g, C/g, L) -> (n, g, O/g K, L), then scattered onto the output.
                cols = wt @ x[start:stop]
                n = stop - start
                y[start:stop] = col2im(cols.reshape(n, -1, cols.shape[-1]), self._top_batch(n), self.kernel,
                                       self.stride, self.pad, self.dilation, self.spatial)
            self._add_bias(t, bias)

    def _add_bias(self, t, bias):
        if bias is not None:
            y = t.data.reshape(self.num, self.num_output, -1)
            y += bias.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        need_weight = self.param_propagate_down[0]
        need_bias = self.bias_term and self.param_propagate_down[1]
        w = self._weights()
        g, cg = self.group, self.channels // self.group
        for t, down, b in zip(top, propagate_down, bottom):
            dy = t.diff.reshape(self._top_batch(self.num))
            if need_bias:
                self.blobs[1].diff[...] += dy.reshape(self.num, self.num_output, -1).sum(axis=(0, 2))
            if not (need_weight or down):
                continue
            xp = get_array_module(dy)
            if self.native is not None and xp is numpy:
                if need_weight:
                    self.native.weight_gradient(dy, self.blobs[0].data, b.data, self.blobs[0].diff)
                if down:
                    self.native.forward(dy, self.blobs[0].data, None, b.diff)
                continue
            x = b.data.reshape(self.num, g, cg, -1)
            dx = b.diff.reshape(self.num, g, cg, -1) if down else None
            dw = self.blobs[0].diff.reshape(g, cg, -1) if need_weight else None
            for start, stop in self._chunks():
                cols = self._columns(dy[start:stop])
                if need_weight:
                    x_c = x[start:stop]
                    for gi in range(g):
                        # sum over images and input positions: one GEMM per group.
                        dw[gi] += xp.tensordot(x_c[:, gi], cols[:, gi], axes=((0, 2), (0, 2)))
                if down:
                    # (1, g, C/g, O/g K) @ (n, g, O/g K, L) -> (n, g, C/g, L)
                    dx[start:stop] = w[None] @ cols
