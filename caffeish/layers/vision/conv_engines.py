"""The engines that run a Convolution layer's passes: im2col + GEMM (numpy or CuPy), the same image by image
over CPU threads, cuDNN, and the compiled direct convolution.  ``caffeish.layers.vision.engines`` picks one.
"""
import math

import numpy

from ... import im2col
from ...backend import get_array_module
from ...cpu import parallel_copy, parallel_for, workspace
from ...cpu import threads as cpu_threads
from ...cpu.native.direct import flipped
from ...cuda import cudnn as cuda_cudnn

#: Upper bound for one im2col buffer; a batch whose columns exceed it is processed in equal chunks of images
#: (the work buffers are shared by all layers and kept, so this bounds the memory they hold).
COL_BUFFER_BYTES = 64 << 20
#: Output channels per group below which forward computes the transposed product (more rows for the threads).
TRANSPOSED_FORWARD_BELOW = 64
#: Backward-data through wide columns (``caffeish.im2col.col2im_cm_wide``) where it applies.
WIDE_COL2IM = True
#: Backward-data as the correlation of the top's gradient with the flipped weights (unit strides), where cheaper.
CORRELATE_DATA_GRADIENT = True


class GemmConvolution:
    """Caffe's BaseConvolutionLayer: channel-major columns of the whole batch, one GEMM per group.

    ``columns`` is the module with ``im2col_cm`` / ``col2im_cm`` / ``col2im_cm_wide``: ``caffeish.im2col``
    (strided copies, numpy or CuPy) or ``caffeish.cuda.im2col`` (CUDA kernels).  The columns
    ``(C * prod(kernel), N * prod(out))`` are multiplied by the weights in one GEMM per group and the result
    transposed into the top with the bias added in the same pass.  Backward recomputes the columns for the
    weights' GEMM (as Caffe does) and computes the input's gradient by the cheapest of three data paths
    (``data_path``).  Column, GEMM and padding buffers are ``caffeish.cpu.workspace`` buffers shared by all
    layers.  A 1x1 kernel with stride 1 and no padding uses the input as its columns.  Very large batches are cut
    into chunks whose columns stay under ``COL_BUFFER_BYTES``.

    Every Convolution engine (this and its subclasses) takes the layer's batch views: ``x`` (num, C, *spatial),
    ``y`` / ``dy`` (num, num_output, prod(out)); ``dx`` like ``x`` or None; ``dw`` / ``db`` the parameter diffs
    (added to) or None.  Weights are read from ``layer.blobs`` on every call (weight sharing swaps the arrays).
    """
    name = "gemm"

    def __init__(self, layer, columns=im2col, reason=""):
        self.layer, self.columns, self.reason = layer, columns, reason
        self.data_path = data_path(layer)
        self.wide_width = im2col.wide_width(layer.kernel, layer.stride, layer.pad, layer.dilation, layer.spatial) \
            if self.data_path == "wide" else None

    # -- the three passes -----------------------------------------------------------------------------------
    def forward(self, x, y, bias):
        w = self.weights()
        for start, stop in self.chunks():
            self.correlate(x[start:stop], w, self.layer.stride, self.layer.pad, self.layer.out_shape,
                           y[start:stop], bias)

    def backward(self, x, dy, dx, dw, db):
        w = self.weights()
        wflip = self.flipped_weights(w) if dx is not None and self.data_path == "correlate" else None
        dw = None if dw is None else dw.reshape(w.shape)
        for start, stop in self.chunks():
            self.backward_chunk(w, wflip, x, dy, dx, start, stop, dw, db)

    # -- geometry ----------------------------------------------------------------------------------------------
    def weights(self):
        """(group, num_output / group, C / group * prod(kernel))"""
        layer = self.layer
        return layer.blobs[0].data.reshape(layer.group, layer.num_output // layer.group, -1)

    def chunks(self):
        """Image ranges whose column buffer fits in COL_BUFFER_BYTES (one range for ordinary batches).

        (The top gradient's columns of the "correlate" data path are at most about twice as large: that
        path is only taken when they are not much larger.)
        """
        layer = self.layer
        return image_ranges(layer.num, layer.channels * math.prod(layer.kernel) * layer.out_count *
                            layer.dtype.itemsize)

    def flipped_weights(self, w):
        """(g, og, cg * kk) -> (g, cg, og * kk): flipped in space, input and output channels swapped."""
        layer = self.layer
        xp = get_array_module(w)
        return flipped(w.reshape(layer.blobs[0].shape), layer.group, xp).reshape(
            layer.group, layer.channels // layer.group, -1)

    # -- the GEMMs -------------------------------------------------------------------------------------------
    def column_matrix(self, x, group, kernel, stride, pad, out_shape):
        """x (n, C, *spatial) -> channel-major columns (group, C/group * prod(kernel), n * prod(out))."""
        n, c = x.shape[:2]
        length = math.prod(out_shape)
        if pointwise(kernel, stride, pad):
            if n == 1:
                cols = x.reshape(c, -1)
            else:  # 1x1: the input is its own columns, transposed to channel-major
                cols = workspace(get_array_module(x), x.dtype, "conv", x.size).reshape(c, n, -1)
                parallel_copy(cols, x.reshape(n, c, -1).swapaxes(0, 1))
        else:
            cols = self.columns.im2col_cm(x, kernel, stride, pad, self.layer.dilation, out_shape, slot="conv")
        return cols.reshape(group, -1, n * length)

    def correlate(self, x, w, stride, pad, out_shape, y, bias, transposed_below=None):
        """y (n, g og, prod(out)) = Caffe's grouped correlation of x (n, C, *spatial) with w (g, og, C/g kk).

        One GEMM per group covers the whole batch.  With few output channels the product is computed
        transposed -- OpenBLAS splits its threads over the rows of the product, and there would be too few
        -- and either way it is transposed into ``y``, images first, with the bias added in the same pass.
        """
        xp = get_array_module(x)
        n = x.shape[0]
        g, og = w.shape[:2]
        nout, length = g * og, math.prod(out_shape)
        cols = self.column_matrix(x, g, self.layer.kernel, stride, pad, out_shape)
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

    def backward_chunk(self, w, wflip, x, dy, dx, start, stop, dw, db, transposed_below=None):
        """Images [start, stop): the parameter gradients added into ``dw`` / ``db`` (None: not wanted), the
        input's gradient written into ``dx`` (None: not wanted).  ``transposed_below`` as in ``correlate``."""
        layer = self.layer
        xp = get_array_module(dy)
        g, og = layer.group, layer.num_output // layer.group
        nout, L = layer.num_output, layer.out_count
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
            cols = self.column_matrix(x[start:stop], g, layer.kernel, layer.stride, layer.pad, layer.out_shape)
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
            self.backward_data_correlate(wflip, dy[start:stop], dx[start:stop], transposed_below)
        elif self.data_path == "wide":
            self.backward_data_wide(w.swapaxes(1, 2), dy[start:stop], dx[start:stop])
        else:
            wt = w.swapaxes(1, 2)
            is_1x1 = pointwise(layer.kernel, layer.stride, layer.pad)
            if is_1x1 and n == 1:
                _gemm(xp, wt, dyt, dx[start].reshape(g, -1, L))
                return
            # (g, K, nout/g) @ (g, nout/g, n L) -> (g, K, n L), in the columns' work buffer.
            dcols = _gemm(xp, wt, dyt, workspace(xp, dy.dtype, "conv", g * wt.shape[1] * n * L)
                          .reshape(g, -1, n * L))
            if is_1x1:
                images_first = dcols.reshape(layer.channels, n, -1).swapaxes(0, 1)
                dx[start:stop] = images_first.reshape(dx[start:stop].shape)
            else:
                self.columns.col2im_cm(dcols.reshape(-1, n * L), dx[start:stop], layer.kernel, layer.stride,
                                       layer.pad, layer.dilation, layer.out_shape, slot="conv.pad")

    def backward_data_correlate(self, wflip, dy, dx, transposed_below=None):
        """Unit strides: dx = the correlation of dy, padded by dilation (k - 1) - pad, with the weights
        flipped in space and with input and output channels swapped per group (``wflip``)."""
        layer = self.layer
        back_pad = [d * (k - 1) - q for k, d, q in zip(layer.kernel, layer.dilation, layer.pad)]
        n = dy.shape[0]
        self.correlate(dy.reshape((n, layer.num_output) + tuple(layer.out_shape)), wflip, [1] * len(layer.kernel),
                       back_pad, layer.spatial, dx.reshape(n, layer.channels, -1), None,
                       transposed_below=transposed_below)

    def backward_data_wide(self, wt, dy, dx):
        """The input's gradient through wide columns (see ``caffeish.im2col.col2im_cm_wide``).

        The top's gradient is laid out channel-major with each output row padded with zeros to the
        padded input width; its GEMM with the weights then gives wide columns whose col2im is a few
        long contiguous sums per kernel offset.
        """
        layer = self.layer
        xp = get_array_module(dy)
        n, g = dy.shape[0], layer.group
        rows = layer.out_shape[:-1]
        width = self.wide_width
        dyw = workspace(xp, dy.dtype, "conv.wide", layer.num_output * n * math.prod(rows) * width)
        dyw = dyw.reshape((layer.num_output, n) + tuple(rows) + (width,))
        source = dy.reshape((n, layer.num_output) + tuple(layer.out_shape)).swapaxes(0, 1)
        last = layer.out_shape[-1]

        def channels(lo, hi):
            dyw[lo:hi, ..., last:] = 0
            dyw[lo:hi, ..., :last] = source[lo:hi]
        parallel_for(layer.num_output, channels, dyw.size, xp)
        columns = n * math.prod(rows) * width
        dcols = _gemm(xp, wt, dyw.reshape(g, -1, columns),
                      workspace(xp, dy.dtype, "conv", g * wt.shape[1] * columns).reshape(g, -1, columns))
        self.columns.col2im_cm_wide(dcols.reshape(-1, columns), dx, layer.kernel, layer.stride, layer.pad,
                                    layer.dilation, layer.out_shape, slot="conv.pad")


class ImageThreadsConvolution(GemmConvolution):
    """The GEMM engine with the images split across threads a few at a time (``caffeish.cpu.threads``), each
    thread's BLAS single-threaded: for batches whose GEMMs are too small to keep the BLAS's threads busy."""
    name = "image-threads"

    def image_step(self):
        """Images per chunk: their columns about fill a core's L2 cache."""
        layer = self.layer
        return cpu_threads.images_per_chunk(layer.channels * math.prod(layer.kernel) * layer.out_count *
                                            layer.dtype.itemsize)

    def forward(self, x, y, bias):
        w = self.weights()
        layer = self.layer

        def chunk(start, stop, part):
            self.correlate(x[start:stop], w, layer.stride, layer.pad, layer.out_shape, y[start:stop], bias,
                           transposed_below=0)
        cpu_threads.for_image_chunks(layer.num, self.image_step(), chunk)

    def backward(self, x, dy, dx, dw, db):
        """Each thread sums its images' parameter gradients privately; the sums are added at the end."""
        w = self.weights()
        wflip = self.flipped_weights(w) if dx is not None and self.data_path == "correlate" else None
        dw = None if dw is None else dw.reshape(w.shape)
        num, step = self.layer.num, self.image_step()
        sums = [(_zeroed(dy.dtype, f"conv.dw.{p}", dw), _zeroed(dy.dtype, f"conv.db.{p}", db))
                for p in range(cpu_threads.num_parts(num, step))]

        def chunk(start, stop, part):
            self.backward_chunk(w, wflip, x, dy, dx, start, stop, *sums[part], transposed_below=0)
        cpu_threads.for_image_chunks(num, step, chunk)
        for dw_part, db_part in sums:
            if dw is not None:
                dw += dw_part
            if db is not None:
                db += db_part


class CudnnConvolution(GemmConvolution):
    """cuDNN for each pass, or the GEMMs over CUDA im2col where they measured faster for this shape (each pass
    is timed both ways on its first calls: ``caffeish.cuda.cudnn.Chooser``)."""
    name = "cudnn"

    def __init__(self, layer, columns, reason=""):
        super().__init__(layer, columns, reason)
        # kept by the layer: the timings outlive a change of input shape
        self.chooser = layer.__dict__.setdefault("cudnn_chooser", cuda_cudnn.Chooser())

    def _geometry(self):
        layer = self.layer
        return layer.stride, layer.pad, layer.dilation, layer.group

    def forward(self, x, y, bias):
        layer = self.layer
        y4 = y.reshape((layer.num, layer.num_output) + layer.out_shape)
        self.chooser.run(("forward", x.shape), lambda: cuda_cudnn.forward(
            x, layer.blobs[0].data, bias, y4, layer.stride, layer.pad, layer.dilation, layer.group),
            lambda: super(CudnnConvolution, self).forward(x, y, bias))

    def backward(self, x, dy, dx, dw, db):
        layer = self.layer
        xp = get_array_module(dy)
        w = self.weights()
        dy4 = dy.reshape((layer.num, layer.num_output) + layer.out_shape)
        if db is not None:
            db += dy.sum(axis=(0, 2))
        if dw is not None:
            # not "conv.dw": the GEMM path computes its product there, and would overwrite the sum
            scratch = workspace(xp, dy.dtype, "conv.cudnn.dw", dw.size).reshape(layer.blobs[0].shape)

            def gemm_filter():
                scratch[...] = 0
                for start, stop in self.chunks():
                    self.backward_chunk(w, None, x, dy, None, start, stop, scratch.reshape(w.shape), None)
            self.chooser.run(("filter", x.shape),
                             lambda: cuda_cudnn.backward_filter(x, dy4, scratch, *self._geometry()), gemm_filter)
            dw += scratch.reshape(dw.shape)
        if dx is not None:
            wflip = self.flipped_weights(w) if self.data_path == "correlate" else None

            def gemm_data():
                for start, stop in self.chunks():
                    self.backward_chunk(w, wflip, x, dy, dx, start, stop, None, None)
            self.chooser.run(("data", x.shape), lambda: cuda_cudnn.backward_data(
                layer.blobs[0].data, dy4, dx, *self._geometry()), gemm_data)


class NativeConvolution(GemmConvolution):
    """The compiled direct convolution (``caffeish.cpu.native.direct.DirectConvolution``: 2-D, numpy, on all
    threads); the input's gradient by the GEMM path where the kernel does not cover it (a pad past
    dilation (k - 1))."""
    name = "native"

    def __init__(self, layer, direct, reason=""):
        super().__init__(layer, im2col, reason)
        self.direct = direct

    def forward(self, x, y, bias):
        self.direct.forward(x, self.layer.blobs[0].data, bias, y)

    def backward(self, x, dy, dx, dw, db):
        if db is not None:
            db += dy.sum(axis=(0, 2))
        if dw is not None:
            self.direct.weight_gradient(x, self.layer.blobs[0].data, dy, dw)
        if dx is None:
            return
        if self.direct.covers_data_gradient:
            self.direct.data_gradient(self.layer.blobs[0].data, dy, dx)
            return
        super().backward(x, dy, dx, None, None)


def data_path(layer):
    """How backward computes the input's gradient (the cheapest that applies).

    "correlate": with unit strides the input's gradient is the correlation of the (padded) top
    gradient with the flipped, transposed weights -- a forward pass of its own, whose columns
    (nout * kk rows, one per input position) feed a GEMM with nout * kk as its inner dimension;
    "wide": the GEMM's columns (C * kk rows, one per output position) summed back by col2im over
    wide rows; "cols": the same with plain rows (strided last axis).  The estimate compares the
    column traffic: written once and read once by the GEMM, against written, then read and summed.
    """
    if pointwise(layer.kernel, layer.stride, layer.pad):
        return "cols"
    geometry = (layer.kernel, layer.stride, layer.pad, layer.dilation, layer.spatial)
    unit = all(s == 1 for s in layer.stride)
    back_pad = [d * (k - 1) - q for k, d, q in zip(layer.kernel, layer.dilation, layer.pad)]
    wide = WIDE_COL2IM and im2col.wide_ok(*geometry)
    if unit and CORRELATE_DATA_GRADIENT and all(q >= 0 for q in back_pad):
        width = im2col.wide_width(*geometry) if wide else layer.out_shape[-1]
        scattered = layer.channels * math.prod(layer.out_shape[:-1]) * width * 3
        correlated = layer.num_output * math.prod(layer.spatial) * 2
        if correlated <= scattered:
            return "correlate"
    return "wide" if wide else "cols"


def pointwise(kernel, stride, pad):
    """A 1x1 kernel with unit stride and no padding: the input is its own columns."""
    return all(k == 1 and s == 1 and q == 0 for k, s, q in zip(kernel, stride, pad))


def image_ranges(num, bytes_per_image):
    """[start, stop) ranges of equal numbers of images whose columns fit in COL_BUFFER_BYTES (one range for
    ordinary batches): the work buffer is no larger than it must be."""
    total = max(num, 1)
    step = max(1, min(total, COL_BUFFER_BYTES // max(1, bytes_per_image)))
    step = -(-total // -(-total // step))  # as many chunks as needed, all (but the last) equal
    return [(i, min(i + step, num)) for i in range(0, total, step)]


def _zeroed(dtype, slot, like):
    """A zeroed work array shaped like ``like`` (None for None)."""
    if like is None:
        return None
    out = workspace(numpy, dtype, slot, like.size).reshape(like.shape)
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


class GemmDeconvolution:
    """Deconvolution as Convolution's passes swapped, by im2col / col2im (numpy or CuPy).

    forward is Convolution's backward-data: per group, columns ``W^T x`` scattered back with col2im onto the
    (padded) output, whose padding is then dropped.  backward is a Convolution forward of the top's gradient:
    the bottom's gradient is ``W im2col(dy)``, the weights' gradient ``x im2col(dy)^T`` summed over images.
    """
    name = "gemm"

    def __init__(self, layer, reason=""):
        self.layer, self.reason = layer, reason

    def chunks(self):
        """Image ranges whose column buffer fits in COL_BUFFER_BYTES."""
        layer = self.layer
        return image_ranges(layer.num, layer.num_output * math.prod(layer.kernel) * math.prod(layer.spatial) *
                            layer.dtype.itemsize)

    def weights(self):
        """(group, C / group, num_output / group * prod(kernel))"""
        layer = self.layer
        return layer.blobs[0].data.reshape(layer.group, layer.channels // layer.group, -1)

    def _top_batch(self, n):
        return (n, self.layer.num_output) + self.layer.out_shape

    def _columns(self, y):
        """y (n, num_output, *out) -> (n, group, num_output / group * prod(kernel), prod(in))."""
        layer = self.layer
        cols = im2col.im2col(y, layer.kernel, layer.stride, layer.pad, layer.dilation, layer.spatial)
        return cols.reshape(y.shape[0], layer.group, -1, cols.shape[-1])

    def forward(self, x, y):
        layer = self.layer
        wt = self.weights().swapaxes(1, 2)[None]
        x = x.reshape(layer.num, layer.group, layer.channels // layer.group, -1)
        for start, stop in self.chunks():
            # (1, g, O/g K, C/g) @ (n, g, C/g, L) -> (n, g, O/g K, L), then scattered onto the output.
            cols = wt @ x[start:stop]
            n = stop - start
            y[start:stop] = im2col.col2im(cols.reshape(n, -1, cols.shape[-1]), self._top_batch(n), layer.kernel,
                                          layer.stride, layer.pad, layer.dilation, layer.spatial)

    def backward(self, x, dy, dx, dw):
        layer = self.layer
        xp = get_array_module(dy)
        w = self.weights()
        g, cg = layer.group, layer.channels // layer.group
        x = x.reshape(layer.num, g, cg, -1)
        dx = None if dx is None else dx.reshape(layer.num, g, cg, -1)
        dw = None if dw is None else dw.reshape(g, cg, -1)
        for start, stop in self.chunks():
            cols = self._columns(dy[start:stop])
            if dw is not None:
                x_c = x[start:stop]
                for gi in range(g):
                    # sum over images and input positions: one GEMM per group.
                    dw[gi] += xp.tensordot(x_c[:, gi], cols[:, gi], axes=((0, 2), (0, 2)))
            if dx is not None:
                # (1, g, C/g, O/g K) @ (n, g, O/g K, L) -> (n, g, C/g, L)
                dx[start:stop] = w[None] @ cols


class NativeDeconvolution:
    """All three passes by the compiled direct convolution of the transposed geometry (from the top's shape to
    the bottom's, with the same weights): forward is its data gradient, backward its forward and weight
    gradient."""
    name = "native"

    def __init__(self, layer, direct, reason=""):
        self.layer, self.direct, self.reason = layer, direct, reason

    def forward(self, x, y):
        self.direct.data_gradient(self.layer.blobs[0].data, x, y)

    def backward(self, x, dy, dx, dw):
        if dw is not None:
            self.direct.weight_gradient(dy, self.layer.blobs[0].data, x, dw)
        if dx is not None:
            self.direct.forward(dy, self.layer.blobs[0].data, None, dx)
