"""ctypes front end of the native direct convolution (``conv.c``): argument checks and the geometry vector.

``applies`` says whether a convolution can run there at all (2-D, float32/float64, the library built);
``caffeish.cpu.native.direct`` decides where it pays and runs the passes on threads (ctypes releases the GIL
for the call).  Each call takes a run of whole images, or -- with ``part``/``parts`` -- its share of every
image's work.
"""
import numpy

from . import library

#: Work-buffer bytes for the weight gradient's block of padded images and packed top gradients.
BLOCK_BYTES = 8 << 20

_SUFFIX = {numpy.dtype(numpy.float32): "f32", numpy.dtype(numpy.float64): "f64"}


def applies(dtype, kernel, stride, pad, dilation):
    """Whether the native kernels cover this convolution: 2-D, float32/float64, unit strides -- or strides
    without dilation, through ``StridePhases`` (whose ``waste`` the caller weighs)."""
    return (len(kernel) == 2 and (all(s == 1 for s in stride) or all(d == 1 for d in dilation))
            and all(q >= 0 for q in pad)
            and numpy.dtype(dtype) in _SUFFIX and library() is not None)


def geometry(x_shape, num_output, group, kernel, pad, dilation, out_shape):
    """The int64 geometry vector conv.c reads: n, C, H, W, M, G, KH, KW, ph, pw, dh, dw, Ho, Wo."""
    n, c, h, w = x_shape
    return numpy.array([n, c, h, w, num_output, group, *kernel, *pad, *dilation, *out_shape], dtype=numpy.int64)


def _ptr(a):
    return None if a is None else a.ctypes.data


def _check(a, dtype, name):
    if a is not None and (a.dtype != dtype or not a.flags.c_contiguous):
        raise ValueError(f"native convolution: {name} must be C-contiguous {dtype}, got {a.dtype}")


def forward(x, w, bias, y, group, kernel, pad, dilation, out_shape, part=0, parts=1):
    """y (n, M, *out) = Caffe's grouped correlation of x (n, C, H, W) with w (M, C/group, *kernel) + bias.

    With ``parts`` > 1, only part ``part`` of every image's output positions is computed (threads
    sharing the same images write disjoint outputs)."""
    for a, name in ((x, "x"), (w, "w"), (bias, "bias"), (y, "y")):
        _check(a, x.dtype, name)
    g = geometry(x.shape, w.shape[0], group, kernel, pad, dilation, out_shape)
    fn = getattr(library(), "caffeish_conv_forward_" + _SUFFIX[x.dtype])
    if fn(g.ctypes.data, _ptr(x), _ptr(w), _ptr(bias), _ptr(y), int(part), int(parts)):
        raise MemoryError("native convolution: out of memory for its work buffers")


def backward_weights(x, dy, dw, group, kernel, pad, dilation, out_shape, images_per_block=None, part=0, parts=1):
    """dw (M, C/group, *kernel) += the weight gradient of ``forward`` for x (n, C, H, W), dy (n, M, *out).

    With ``parts`` > 1, only part ``part`` of each group's output channels (rows of dw) is computed."""
    for a, name in ((x, "x"), (dy, "dy"), (dw, "dw")):
        _check(a, x.dtype, name)
    g = geometry(x.shape, dw.shape[0], group, kernel, pad, dilation, out_shape)
    if images_per_block is None:
        # the kernel sums a block of images (up to 16, within BLOCK_BYTES) before reducing its vector
        # accumulators: larger blocks spread that cost (see bench/README.md, Tuning history)
        per_image = (x[0].size * 2 + dy[0].size * 2) * x.itemsize
        images_per_block = max(1, min(16, BLOCK_BYTES // max(1, per_image)))
    fn = getattr(library(), "caffeish_conv_backward_weights_" + _SUFFIX[x.dtype])
    if fn(g.ctypes.data, _ptr(x), _ptr(dy), _ptr(dw), int(images_per_block), int(part), int(parts)):
        raise MemoryError("native convolution: out of memory for its work buffers")

