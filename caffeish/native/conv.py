"""numpy front end of the native direct convolution (``conv.c``): checks, geometry, threads.

``applies`` says whether a convolution can run here: two spatial axes, unit strides, float32 or
float64 C-contiguous numpy arrays, and the library built.  The callers split the images across
threads (ctypes releases the GIL for the call); each call handles a run of whole images.
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
        # the kernel sums a block of images before reducing its vector accumulators: larger blocks
        # spread that cost (CIFAR-10's 8x8 layer: 42 GFLOP/s with one image, 92 with 16), within a budget
        per_image = (x[0].size * 2 + dy[0].size * 2) * x.itemsize
        images_per_block = max(1, min(16, BLOCK_BYTES // max(1, per_image)))
    fn = getattr(library(), "caffeish_conv_backward_weights_" + _SUFFIX[x.dtype])
    if fn(g.ctypes.data, _ptr(x), _ptr(dy), _ptr(dw), int(images_per_block), int(part), int(parts)):
        raise MemoryError("native convolution: out of memory for its work buffers")


def flipped(w, group):
    """w (M, C/group, kh, kw) -> (C, M/group, kh, kw): flipped in space, input and output channels swapped per
    group -- the weights whose forward is ``w``'s input gradient (with the top gradient padded by k - 1 - pad)."""
    m, cg, kh, kw = w.shape
    per_group = w.reshape(group, m // group, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return numpy.ascontiguousarray(per_group).reshape(group * cg, m // group, kh, kw)


class StridePhases:
    """A strided 2-D convolution as a unit-stride one over the input's stride phases (space to depth).

    With stride s, tap i = a s + u (u < s) of output o reads padded row o s + i = (o + a) s + u: row o + a of
    phase u.  So the input, padded, becomes ``Z[(c, u, v), y, x] = Xp[c, y sh + u, x sw + v]`` -- C U V
    channels of ``spatial`` = (Ho + ka - 1, Wo + kb - 1) -- and the weights ``(M, C/g U V, ka, kb)`` with
    ka = ceil(kh / sh), taps past the kernel zero.  Only phases a tap uses are kept (U = min(sh, kh): a 1x1
    kernel with stride 2 takes one phase).  ``waste`` is the multiply-adds on zero taps, as a factor.
    """

    def __init__(self, kernel, stride, pad, out_shape):
        (kh, kw), (self.sh, self.sw), (self.ph, self.pw) = kernel, stride, pad
        self.kh, self.kw = kh, kw
        self.U, self.V = min(self.sh, kh), min(self.sw, kw)
        self.kernel = (-(-kh // self.sh), -(-kw // self.sw))
        self.spatial = (out_shape[0] + self.kernel[0] - 1, out_shape[1] + self.kernel[1] - 1)
        self.waste = self.kernel[0] * self.U * self.kernel[1] * self.V / (kh * kw)

    def _extended(self, n, c):
        """shape of the padded input, cut or zero-extended to the rows and columns the phases cover"""
        return (n, c, self.spatial[0] * self.sh, self.spatial[1] * self.sw)

    def _inside(self, h, w):
        """rows and columns of the input that land inside the extended input"""
        return max(0, min(h, self.spatial[0] * self.sh - self.ph)), max(0, min(w, self.spatial[1] * self.sw - self.pw))

    def _phases_view(self, extended):
        """(n, C, rows sh, cols sw) -> its kept phases as (n, C, U, V, rows, cols), a view"""
        n, c, h, w = extended.shape
        six = extended.reshape(n, c, h // self.sh, self.sh, w // self.sw, self.sw)
        return six[:, :, :, :self.U, :, :self.V].transpose(0, 1, 3, 5, 2, 4)

    def input(self, x, extended, out):
        """x (n, C, H, W) -> out (n, C U V, *spatial); ``extended`` is scratch of ``_extended``'s size."""
        n, c, h, w = x.shape
        ext = extended.reshape(self._extended(n, c))
        hi, wi = self._inside(h, w)
        ext[...] = 0
        ext[:, :, self.ph:self.ph + hi, self.pw:self.pw + wi] = x[:, :, :hi, :wi]
        out.reshape((n, c, self.U, self.V) + self.spatial)[...] = self._phases_view(ext)
        return out

    def input_gradient(self, dz, extended, dx):
        """The adjoint of ``input``: dz (n, C U V, *spatial) -> dx (n, C, H, W), overwritten."""
        n, c, h, w = dx.shape
        ext = extended.reshape(self._extended(n, c))
        ext[...] = 0
        self._phases_view(ext)[...] = dz.reshape((n, c, self.U, self.V) + self.spatial)
        hi, wi = self._inside(h, w)
        dx[:, :, :hi, :wi] = ext[:, :, self.ph:self.ph + hi, self.pw:self.pw + wi]
        dx[:, :, hi:] = 0
        dx[:, :, :, wi:] = 0

    def weights(self, w):
        """w (M, Cg, kh, kw) -> (M, Cg U V, ka, kb), contiguous."""
        m, cg = w.shape[:2]
        ext = numpy.zeros((m, cg, self.kernel[0] * self.sh, self.kernel[1] * self.sw), dtype=w.dtype)
        ext[:, :, :self.kh, :self.kw] = w
        return numpy.ascontiguousarray(self._phases_view(ext)).reshape((m, cg * self.U * self.V) + self.kernel)

    def add_weight_gradient(self, dwu, dw):
        """dw (M, Cg, kh, kw) += the gradient ``dwu`` (M, Cg U V, ka, kb) of ``weights``' result."""
        m, cg = dw.shape[:2]
        ext = numpy.zeros((m, cg, self.kernel[0] * self.sh, self.kernel[1] * self.sw), dtype=dw.dtype)
        self._phases_view(ext)[...] = dwu.reshape((m, cg, self.U, self.V) + self.kernel)
        dw += ext[:, :, :self.kh, :self.kw]
