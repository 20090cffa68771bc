"""Convolution: Caffe's N-D, grouped, dilated convolution (cross-correlation, as Caffe computes it).

bottom: one or more blobs of the same shape ``(*num, C, *spatial)`` where ``C`` is at
``convolution_param.axis`` (default 1); each gives the top of the same index,
``(*num, num_output, *out)`` with ``out = (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1``
(C++ integer division).  blobs: weights ``(num_output, C / group, *kernel)`` and, with
``bias_term``, bias ``(num_output,)``.

On the CPU, 2-D layers run the compiled direct convolution where it is built and applies
(``caffeish.cpu.native.direct.DirectConvolution``); the numpy path below is the reference it is tested
against, and what runs otherwise (no C compiler, ``CAFFEISH_NATIVE=0``, 1-D or 3-D, some strides).

The whole batch is turned into channel-major columns at once (``caffeish.im2col.im2col_cm``:
``(C * prod(kernel), N * prod(out))``, the images side by side) and multiplied by the weights
in one GEMM per group; the result is transposed into the top (with the bias added in the
same pass).  Backward recomputes the columns for the weights' GEMM (as Caffe does), then
reuses their buffer for the input's gradient columns, which col2im sums back.  The column,
GEMM and padding buffers are ``caffeish.cpu.workspace`` buffers shared by all layers and
kept across iterations.  A 1x1 kernel with stride 1 and no padding uses the input itself as
its columns (transposed when there are several images).  Very large batches are cut into
chunks so that the column buffer stays under ``COL_BUFFER_BYTES``.
"""
import math

import numpy

from ...backend import get_array_module
from ...cuda import cudnn as cuda_cudnn
from ...blob import Blob
from ...cpu import parallel_copy, parallel_for, workspace
from ...cpu import threads as cpu_threads
from ...cpu.native.direct import DirectConvolution, flipped
from ...errors import CaffeishError
from ...fillers import fill
from ...im2col import col2im_cm, col2im_cm_wide, conv_output_shape, im2col_cm, wide_ok, wide_width
from ...layer import Layer, register_layer

#: Upper bound for one im2col buffer; a batch whose columns exceed it is processed in equal chunks of images
#: (the work buffers are shared by all layers and kept, so this bounds the memory they hold; GEMMs over
#: 64 MiB of columns are as fast per FLOP as over the whole batch).
COL_BUFFER_BYTES = 64 << 20
#: Output channels per group below which forward computes the transposed product (more rows for the threads).
TRANSPOSED_FORWARD_BELOW = 64
#: Backward-data through wide columns (``caffeish.im2col.col2im_cm_wide``) where it applies.
WIDE_COL2IM = True
#: Backward-data as the correlation of the top's gradient with the flipped weights (unit strides), where cheaper.
CORRELATE_DATA_GRADIENT = True
#: The compiled direct convolution (``caffeish.cpu.native``) for 2-D layers on numpy arrays, where it is built and
#: applies (``caffeish.cpu.native.direct.DirectConvolution.make``).
NATIVE = True


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


def base_conv_setup(layer, bottom, transposed=False):
    """Caffe's BaseConvolutionLayer::LayerSetUp, shared by Convolution and Deconvolution.

    Sets channel_axis, num_spatial, kernel/stride/pad/dilation, channels, num_output, group, bias_term and
    the parameter blobs: weights (num_output, C / group, *kernel), or (C, num_output / group, *kernel) when
    ``transposed`` (Deconvolution), and a (num_output,) bias.
    """
    p = layer.param.convolution_param
    layer.channel_axis = bottom[0].canonical_axis(p.axis)
    layer.num_spatial = bottom[0].num_axes - layer.channel_axis - 1
    if layer.num_spatial < 1:
        raise CaffeishError(f"{layer.type} needs at least one spatial axis after the channel axis "
                            f"{layer.channel_axis}, but the bottom has shape {bottom[0].shape}")
    layer.kernel, layer.stride, layer.pad, layer.dilation = conv_geometry(p, layer.num_spatial)
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
    if layer.blobs:
        if len(layer.blobs) != 1 + layer.bias_term:
            raise CaffeishError(f"{layer.type} expects {1 + layer.bias_term} parameter blob(s), "
                                f"{len(layer.blobs)} given")
        if tuple(layer.blobs[0].shape) != weight_shape:
            raise CaffeishError(f"incorrect weight shape: expected {weight_shape}, got {layer.blobs[0].shape}")
        if layer.bias_term and tuple(layer.blobs[1].shape) != (layer.num_output,):
            raise CaffeishError(f"incorrect bias shape: expected ({layer.num_output},), got {layer.blobs[1].shape}")
    else:
        layer.blobs = [Blob(weight_shape, dtype=layer.dtype, name=f"{layer.name}[0]")]
        fill(layer.blobs[0], p.weight_filler)
        if layer.bias_term:
            layer.blobs.append(Blob((layer.num_output,), dtype=layer.dtype, name=f"{layer.name}[1]"))
            fill(layer.blobs[1], p.bias_filler)
    layer.param_propagate_down = [True] * len(layer.blobs)


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
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True

    def macs(self, bottom, top):
        """Each output value is a dot product over (C / group) x kernel inputs."""
        return sum(t.count for t in top) * math.prod(self.blobs[0].shape[1:]) if self.blobs else 0

    def layer_setup(self, bottom, top):
        base_conv_setup(self, bottom)
        self._cudnn = cuda_cudnn.Chooser()
        self.is_1x1 = all(k == 1 and s == 1 and q == 0 for k, s, q in zip(self.kernel, self.stride, self.pad))

    def reshape(self, bottom, top):
        check_conv_bottoms(self, bottom)
        axis, shape = self.channel_axis, bottom[0].shape
        self.spatial = tuple(shape[axis + 1:])
        self.out_shape = conv_output_shape(self.spatial, self.kernel, self.stride, self.pad, self.dilation)
        if any(o <= 0 for o in self.out_shape):
            raise CaffeishError(
                f"output size {self.out_shape} is not positive: input {self.spatial}, kernel {tuple(self.kernel)}, "
                f"stride {tuple(self.stride)}, pad {tuple(self.pad)}, dilation {tuple(self.dilation)}")
        self.num = 1
        for s in shape[:axis]:
            self.num *= s
        self.out_count = _count(self.out_shape)
        self.data_path = self._data_path()
        self.native = DirectConvolution.make(
            get_array_module(bottom[0].data), self.dtype, self.num, self.channels, self.num_output, self.group,
            self.kernel, self.stride, self.pad, self.dilation, self.spatial, self.out_shape) if NATIVE else None
        self.wide_width = wide_width(self.kernel, self.stride, self.pad, self.dilation, self.spatial) \
            if self.data_path == "wide" else None
        top_shape = tuple(shape[:axis]) + (self.num_output,) + self.out_shape
        for t in top:
            t.reshape(top_shape)

    # -- helpers ---------------------------------------------------------------
    def _data_path(self):
        """How backward computes the input's gradient (the cheapest that applies).

        "correlate": with unit strides the input's gradient is the correlation of the (padded) top
        gradient with the flipped, transposed weights -- a forward pass of its own, whose columns
        (nout * kk rows, one per input position) feed a GEMM with nout * kk as its inner dimension;
        "wide": the GEMM's columns (C * kk rows, one per output position) summed back by col2im over
        wide rows; "cols": the same with plain rows (strided last axis).  The estimate compares the
        column traffic: written once and read once by the GEMM, against written, then read and summed.
        """
        if self.is_1x1:
            return "cols"
        unit = all(s == 1 for s in self.stride)
        back_pad = [d * (k - 1) - q for k, d, q in zip(self.kernel, self.dilation, self.pad)]
        wide = WIDE_COL2IM and wide_ok(self.kernel, self.stride, self.pad, self.dilation, self.spatial)
        if unit and CORRELATE_DATA_GRADIENT and all(q >= 0 for q in back_pad):
            width = wide_width(self.kernel, self.stride, self.pad, self.dilation, self.spatial) if wide else \
                self.out_shape[-1]
            scattered = self.channels * _count(self.out_shape[:-1]) * width * 3
            correlated = self.num_output * _count(self.spatial) * 2
            if correlated <= scattered:
                return "correlate"
        return "wide" if wide else "cols"

    def _chunks(self):
        """Image ranges whose column buffer fits in COL_BUFFER_BYTES (one range for ordinary batches).

        (The top gradient's columns of the "correlate" data path are at most about twice as large: that
        path is only taken when they are not much larger.)
        """
        per_image = max(1, self.channels * _count(self.kernel) * self.out_count * self.dtype.itemsize)
        step = max(1, min(self.num, COL_BUFFER_BYTES // per_image))
        count = -(-max(self.num, 1) // step)
        step = -(-max(self.num, 1) // count)  # equal chunks: the buffer is no larger than it must be
        return [(i, min(i + step, self.num)) for i in range(0, max(self.num, 1), step)]

    def _weights(self):
        w = self.blobs[0].data
        return w.reshape(self.group, self.num_output // self.group, -1)

    def _as_batch(self, array):
        return array.reshape((self.num, self.channels) + self.spatial)

    # -- forward / backward ------------------------------------------------------
    def forward(self, bottom, top):
        w = self._weights()
        bias = self.blobs[1].data if self.bias_term else None
        for b, t in zip(bottom, top):
            x = self._as_batch(b.data)
            y = t.data.reshape(self.num, self.num_output, self.out_count)
            xp = get_array_module(x)
            if self.native is not None and xp is numpy:
                self.native.forward(x, self.blobs[0].data, bias, y)
            elif cpu_threads.available(xp, self.num):
                self._forward_images(x, w, y, bias)
            elif xp is not numpy and cuda_cudnn.applies(x, self.kernel, self.stride, self.pad, self.dilation):
                self._forward_cudnn(x, w, y, bias)
            else:
                self._forward_chunks(x, w, y, bias)

    def _forward_cudnn(self, x, w, y, bias):
        """forward by cuDNN or by the GEMMs, whichever measured faster for this shape."""
        y4 = y.reshape((self.num, self.num_output) + self.out_shape)
        self._cudnn.run(("forward", x.shape), lambda: cuda_cudnn.forward(
            x, self.blobs[0].data, bias, y4, self.stride, self.pad, self.dilation, self.group),
            lambda: self._forward_chunks(x, w, y, bias))

    def _forward_chunks(self, x, w, y, bias):
        for start, stop in self._chunks():
            _correlate(x[start:stop], w, self.kernel, self.stride, self.pad, self.dilation, self.out_shape,
                       y[start:stop], bias)

    def _forward_images(self, x, w, y, bias):
        """forward, the images split across threads a few at a time (``caffeish.cpu.threads``)."""
        def chunk(start, stop, part):
            _correlate(x[start:stop], w, self.kernel, self.stride, self.pad, self.dilation, self.out_shape,
                       y[start:stop], bias, transposed_below=0)
        cpu_threads.for_image_chunks(self.num, self._image_step(), chunk)

    def _image_step(self):
        """Images per chunk on the image-parallel path: their columns about fill a core's L2 cache."""
        per_image = self.channels * _count(self.kernel) * self.out_count * self.dtype.itemsize
        return cpu_threads.images_per_chunk(per_image)

    def backward(self, top, propagate_down, bottom):
        need_weight = self.param_propagate_down[0]
        need_bias = self.bias_term and self.param_propagate_down[1]
        w = self._weights()
        for t, down, b in zip(top, propagate_down, bottom):
            if not (need_weight or need_bias or down):
                continue
            dy = t.diff.reshape(self.num, self.num_output, self.out_count)
            xp = get_array_module(dy)
            x = self._as_batch(b.data)
            dx = self._as_batch(b.diff) if down else None
            dw = self.blobs[0].diff.reshape(w.shape) if need_weight else None
            db = self.blobs[1].diff if need_bias else None
            if self.native is not None and xp is numpy:
                self._backward_native(w, x, dy, dx, dw, db)
                continue
            wflip = self._flipped_weights(xp, w) if down and self.data_path == "correlate" else None
            if cpu_threads.available(xp, self.num):
                self._backward_images(xp, w, wflip, x, dy, dx, dw, db)
            elif xp is not numpy and cuda_cudnn.applies(x, self.kernel, self.stride, self.pad, self.dilation):
                self._backward_cudnn(xp, w, wflip, x, dy, dx, dw, db)
            else:
                for start, stop in self._chunks():
                    self._backward_chunk(xp, w, wflip, x, dy, dx, start, stop, dw, db)

    def _backward_native(self, w, x, dy, dx, dw, db):
        """backward by the compiled direct convolution; the input's gradient by the numpy path where the
        kernel does not cover it (a pad past dilation (k - 1))."""
        if db is not None:
            db += dy.sum(axis=(0, 2))
        if dw is not None:
            self.native.weight_gradient(x, self.blobs[0].data, dy, dw)
        if dx is None:
            return
        if self.native.covers_data_gradient:
            self.native.data_gradient(self.blobs[0].data, dy, dx)
            return
        wflip = self._flipped_weights(numpy, w) if self.data_path == "correlate" else None
        for start, stop in self._chunks():
            self._backward_chunk(numpy, w, wflip, x, dy, dx, start, stop, None, None)

    def _backward_cudnn(self, xp, w, wflip, x, dy, dx, dw, db):
        """backward where cuDNN is there: each pass by cuDNN or by the GEMMs, whichever measured faster."""
        geometry = (self.stride, self.pad, self.dilation, self.group)
        dy4 = dy.reshape((self.num, self.num_output) + self.out_shape)
        if db is not None:
            db += dy.sum(axis=(0, 2))
        if dw is not None:
            # not "conv.dw": the GEMM path below computes its product there, and would overwrite the sum
            scratch = workspace(xp, dy.dtype, "conv.cudnn.dw", dw.size).reshape(self.blobs[0].shape)

            def gemm_filter():
                scratch[...] = 0
                for start, stop in self._chunks():
                    self._backward_chunk(xp, w, None, x, dy, None, start, stop, scratch.reshape(w.shape), None)
            self._cudnn.run(("filter", x.shape), lambda: cuda_cudnn.backward_filter(x, dy4, scratch, *geometry),
                            gemm_filter)
            dw += scratch.reshape(w.shape)
        if dx is not None:
            def gemm_data():
                for start, stop in self._chunks():
                    self._backward_chunk(xp, w, wflip, x, dy, dx, start, stop, None, None)
            self._cudnn.run(("data", x.shape), lambda: cuda_cudnn.backward_data(self.blobs[0].data, dy4, dx,
                                                                                 *geometry), gemm_data)

    def _backward_images(self, xp, w, wflip, x, dy, dx, dw, db):
        """backward, the images split across threads a few at a time (``caffeish.cpu.threads``): each
        thread sums its images' parameter gradients privately, and the sums are added at the end."""
        step = self._image_step()
        sums = [(_zeroed(xp, dy.dtype, f"conv.dw.{p}", dw), _zeroed(xp, dy.dtype, f"conv.db.{p}", db))
                for p in range(cpu_threads.num_parts(self.num, step))]

        def chunk(start, stop, part):
            self._backward_chunk(xp, w, wflip, x, dy, dx, start, stop, *sums[part], transposed_below=0)
        cpu_threads.for_image_chunks(self.num, step, chunk)
        for dw_part, db_part in sums:
            if dw is not None:
                dw += dw_part
            if db is not None:
                db += db_part

    def _backward_chunk(self, xp, w, wflip, x, dy, dx, start, stop, dw, db, transposed_below=None):
        """Images [start, stop): the parameter gradients added into ``dw`` / ``db`` (None: not wanted), the
        input's gradient written into ``dx`` (None: not wanted).  ``transposed_below`` as in ``_correlate``."""
        g, og = self.group, self.num_output // self.group
        nout, L = self.num_output, self.out_count
        n = stop - start
        if n == 1:
            dyt = dy[start].reshape(g, og, L)
        elif dw is not None or db is not None or (dx is not None and self.data_path == "cols"):
            # the top's gradient, channel-major like the columns: (nout, n L)
            dyt = workspace(xp, dy.dtype, "conv.gemm", nout * n * L).reshape(nout, n, L)
            parallel_copy(dyt, dy[start:stop].swapaxes(0, 1))
            dyt = dyt.reshape(g, og, n * L)
        if db is not None:
            db += dyt.reshape(nout, -1).sum(axis=1)
        if dw is not None:
            cols = _columns(x[start:stop], g, self.kernel, self.stride, self.pad, self.dilation, self.out_shape)
            if transposed_below == 0:  # one thread's GEMM: the orientation that adds contiguously
                # (g, nout/g, n L) @ (g, n L, K) -> (g, nout/g, K)
                dw += _gemm(xp, dyt, cols.swapaxes(1, 2), workspace(xp, dy.dtype, "conv.dw", w.size).reshape(w.shape))
            else:
                # sum over images and output positions, transposed so that the product's rows are the
                # many K (for the BLAS's threads): (g, K, n L) @ (g, n L, nout/g) -> (g, K, nout/g).
                dwt = _gemm(xp, cols, dyt.swapaxes(1, 2), workspace(xp, dy.dtype, "conv.dw", w.size)
                            .reshape(w.shape[0], w.shape[2], w.shape[1]))
                dw += dwt.swapaxes(1, 2)
        if dx is None:
            return
        if self.data_path == "correlate":
            self._backward_data_correlate(xp, wflip, dy[start:stop], dx[start:stop], transposed_below)
        elif self.data_path == "wide":
            self._backward_data_wide(xp, w.swapaxes(1, 2), dy[start:stop], dx[start:stop])
        else:
            wt = w.swapaxes(1, 2)
            if self.is_1x1 and n == 1:
                _gemm(xp, wt, dyt, dx[start].reshape(g, -1, L))
                return
            # (g, K, nout/g) @ (g, nout/g, n L) -> (g, K, n L), in the columns' work buffer.
            dcols = _gemm(xp, wt, dyt, workspace(xp, dy.dtype, "conv", g * wt.shape[1] * n * L)
                          .reshape(g, -1, n * L))
            if self.is_1x1:
                images_first = dcols.reshape(self.channels, n, -1).swapaxes(0, 1)
                dx[start:stop] = images_first.reshape(dx[start:stop].shape)
            else:
                col2im_cm(dcols.reshape(-1, n * L), dx[start:stop], self.kernel, self.stride, self.pad,
                          self.dilation, self.out_shape, slot="conv.pad")

    def _flipped_weights(self, xp, w):
        """(g, og, cg * kk) -> (g, cg, og * kk): flipped in space, input and output channels swapped."""
        return flipped(w.reshape(self.blobs[0].shape), self.group, xp).reshape(self.group, self.channels // self.group,
                                                                               -1)

    def _backward_data_correlate(self, xp, wflip, dy, dx, transposed_below=None):
        """Unit strides: dx = the correlation of dy, padded by dilation (k - 1) - pad, with the weights
        flipped in space and with input and output channels swapped per group (``wflip``)."""
        back_pad = [d * (k - 1) - q for k, d, q in zip(self.kernel, self.dilation, self.pad)]
        n = dy.shape[0]
        _correlate(dy.reshape((n, self.num_output) + tuple(self.out_shape)), wflip, self.kernel,
                   [1] * len(self.kernel), back_pad, self.dilation, self.spatial,
                   dx.reshape(n, self.channels, -1), None, transposed_below=transposed_below)

    def _backward_data_wide(self, xp, wt, dy, dx):
        """The input's gradient through wide columns (see ``caffeish.im2col.col2im_cm_wide``).

        The top's gradient is laid out channel-major with each output row padded with zeros to the
        padded input width; its GEMM with the weights then gives wide columns whose col2im is a few
        long contiguous sums per kernel offset.
        """
        n, g = dy.shape[0], self.group
        rows = self.out_shape[:-1]
        width = self.wide_width
        dyw = workspace(xp, dy.dtype, "conv.wide", self.num_output * n * _count(rows) * width)
        dyw = dyw.reshape((self.num_output, n) + tuple(rows) + (width,))
        source = dy.reshape((n, self.num_output) + tuple(self.out_shape)).swapaxes(0, 1)
        last = self.out_shape[-1]

        def channels(lo, hi):
            dyw[lo:hi, ..., last:] = 0
            dyw[lo:hi, ..., :last] = source[lo:hi]
        parallel_for(self.num_output, channels, dyw.size, xp)
        columns = n * _count(rows) * width
        dcols = _gemm(xp, wt, dyw.reshape(g, -1, columns),
                      workspace(xp, dy.dtype, "conv", g * wt.shape[1] * columns).reshape(g, -1, columns))
        col2im_cm_wide(dcols.reshape(-1, columns), dx, self.kernel, self.stride, self.pad, self.dilation,
                       self.out_shape, slot="conv.pad")


def _count(shape):
    result = 1
    for s in shape:
        result *= int(s)
    return result


def _columns(x, group, kernel, stride, pad, dilation, out_shape):
    """x (n, C, *spatial) -> channel-major columns (group, C/group * prod(kernel), n * prod(out))."""
    n, c = x.shape[:2]
    length = _count(out_shape)
    if all(k == 1 and s == 1 and q == 0 for k, s, q in zip(kernel, stride, pad)):
        if n == 1:
            cols = x.reshape(c, -1)
        else:  # 1x1: the input is its own columns, transposed to channel-major
            cols = workspace(get_array_module(x), x.dtype, "conv", x.size).reshape(c, n, -1)
            parallel_copy(cols, x.reshape(n, c, -1).swapaxes(0, 1))
    else:
        cols = im2col_cm(x, kernel, stride, pad, dilation, out_shape, slot="conv")
    return cols.reshape(group, -1, n * length)


def _correlate(x, w, kernel, stride, pad, dilation, out_shape, y, bias, transposed_below=None):
    """y (n, g * og, prod(out)) = Caffe's grouped correlation of x (n, C, *spatial) with w (g, og, C/g * kk).

    One GEMM per group covers the whole batch.  With few output channels the product is computed
    transposed -- OpenBLAS splits its threads over the rows of the product, and there would be too few
    -- and either way it is transposed into ``y``, images first, with the bias added in the same pass.
    """
    xp = get_array_module(x)
    n = x.shape[0]
    g, og = w.shape[:2]
    nout, length = g * og, _count(out_shape)
    cols = _columns(x, g, kernel, stride, pad, dilation, out_shape)
    if og < (TRANSPOSED_FORWARD_BELOW if transposed_below is None else transposed_below):
        # (g, n L, K) @ (g, K, og) -> (g, n L, og)
        yt = _gemm(xp, cols.swapaxes(1, 2), w.swapaxes(1, 2),
                   workspace(xp, x.dtype, "conv.gemm", nout * n * length).reshape(g, n * length, og))
        images_first = yt.reshape(g, n, length, og).transpose(1, 0, 3, 2)  # (n, g, og, L)
        _store(xp, y.reshape(n, g, og, length), images_first, None if bias is None else bias.reshape(g, og, 1))
        return
    # (g, og, K) @ (g, K, n L) -> (g, og, n L)
    if n == 1:
        _gemm(xp, w, cols, y[0].reshape(g, og, length))
        if bias is not None:
            y[0] += bias[:, None]
        return
    out = workspace(xp, x.dtype, "conv.gemm", nout * n * length).reshape(g, og, n * length)
    _gemm(xp, w, cols, out)
    _store(xp, y, out.reshape(nout, n, length).swapaxes(0, 1), None if bias is None else bias[:, None])


def _zeroed(xp, dtype, slot, like):
    """A zeroed work array shaped like ``like`` (None for None)."""
    if like is None:
        return None
    out = workspace(xp, dtype, slot, like.size).reshape(like.shape)
    out[...] = 0
    return out


def _store(xp, y, images_first, bias):
    """y = images_first (+ bias), the images split across threads."""
    def images(lo, hi):
        if bias is not None:
            xp.add(images_first[lo:hi], bias, out=y[lo:hi])
        else:
            y[lo:hi] = images_first[lo:hi]
    parallel_for(y.shape[0], images, y.size, xp)


def _gemm(xp, a, b, out):
    """out = a @ b for stacks of one matrix per group; a plain 2-D GEMM when there is one group."""
    if a.shape[0] == 1:
        xp.matmul(a[0], b[0], out=out[0])
    else:
        xp.matmul(a, b, out=out)
    return out
