"""A 2-D convolution run by the native kernels on all threads (``DirectConvolution``): what Convolution and
Deconvolution call, with strided layers turned into unit-stride ones over their input's stride phases
(``StridePhases``).
"""
import numpy

from ..buffers import workspace
from ..threads import num_threads, parallel_for
from . import status as native_status
from . import conv as native_conv

#: Fewer output positions than this (ResNet's and GoogLeNet's 7x7 stages: 49) leave the kernel's tiles part
#: empty and its weight-gradient sums short: the GEMMs, whose inner dimension is the whole batch's, do better.
MIN_OUTPUTS = 64
#: A 1x1 kernel's columns are its input (no im2col to spare): a plain GEMM is the tool.
POINTWISE_TO_GEMM = True
#: Strided layers run over their input's stride phases when that adds at most this factor of multiply-adds on
#: zero taps (see bench/README.md, Tuning history).
STRIDED_WASTE = 1.5


def _count(shape):
    result = 1
    for s in shape:
        result *= int(s)
    return result


def flipped(w, group, xp=numpy):
    """w (M, C/group, *kernel) -> (C, M/group, *kernel): flipped in space, input and output channels swapped per
    group -- the weights whose correlation with the top's gradient (padded by dilation (k - 1) - pad) is the
    input's gradient.  Written into a kept work buffer (``workspace`` slot "conv.wflip")."""
    m, cg = w.shape[:2]
    kernel = tuple(w.shape[2:])
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * len(kernel)
    out = workspace(xp, w.dtype, "conv.wflip", w.size).reshape((group, cg, m // group) + kernel)
    out[...] = w.reshape((group, m // group, cg) + kernel)[flip].swapaxes(1, 2)
    return out.reshape((group * cg, m // group) + kernel)


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


class DirectConvolution:
    """One layer's 2-D convolution: x (num, channels, *spatial) -> y (num, num_output, *out_shape) with weights
    (num_output, channels / group, *kernel), by the native kernels.  Build it with ``make``.

    ``make`` (and ``plan``, which also says why not) says whether (and how) a layer's convolution runs here: 2-D,
    numpy, float32 or float64, the library built, a kernel larger than 1x1 and at least ``MIN_OUTPUTS`` output
    positions; unit strides directly, other strides through ``StridePhases`` where the zero taps those add cost
    at most ``STRIDED_WASTE``.  Its three passes -- ``forward``, ``weight_gradient`` and ``data_gradient`` --
    are the convolution's; Deconvolution runs them with the roles of input and output swapped (its forward is a
    convolution's data gradient).

    Threads: runs of whole images when there are at least as many images as threads (weight gradients summed
    per run and added in a fixed order), else every image's outputs (forward, data gradient) and its weight
    gradient's rows dealt out (deployment at batch 1).
    """

    def __init__(self, num, channels, num_output, group, kernel, stride, pad, dilation, spatial, out_shape):
        self.num, self.channels, self.num_output, self.group = num, channels, num_output, group
        self.kernel, self.stride, self.pad, self.dilation = tuple(kernel), tuple(stride), tuple(pad), tuple(dilation)
        self.spatial, self.out_shape = tuple(spatial), tuple(out_shape)
        self.phases = StridePhases(kernel, stride, pad, out_shape) if any(s != 1 for s in stride) else None
        unit_kernel = self.kernel if self.phases is None else self.phases.kernel
        unit_pad = self.pad if self.phases is None else (0, 0)
        #: the data gradient pads the top's gradient by d (k - 1) - pad: a negative pad is not done here
        self.back_pad = tuple(d * (k - 1) - q for k, d, q in zip(unit_kernel, self.dilation, unit_pad))
        self.covers_data_gradient = min(self.back_pad) >= 0
        macs = num * num_output * _count(out_shape) * (channels // group) * _count(kernel)
        self.work = macs // 16  # the multiply-adds in parallel_for's units (see bench/README.md, Tuning history)

    @classmethod
    def make(cls, xp, dtype, num, channels, num_output, group, kernel, stride, pad, dilation, spatial, out_shape):
        """A DirectConvolution, or None where the native kernels do not run this convolution."""
        return cls.plan(xp, dtype, num, channels, num_output, group, kernel, stride, pad, dilation, spatial,
                        out_shape)[0]

    @classmethod
    def plan(cls, xp, dtype, num, channels, num_output, group, kernel, stride, pad, dilation, spatial, out_shape):
        """(DirectConvolution, "") where the native kernels run this convolution, else (None, why not)."""
        if xp is not numpy:
            return None, "the arrays are not numpy arrays"
        if len(kernel) != 2:
            return None, f"{len(kernel)}-D (the native kernels are 2-D)"
        if not native_conv.applies(dtype, kernel, stride, pad, dilation):
            if native_conv.library() is None:
                return None, f"native kernels unavailable: {native_status()}"
            return None, "the native kernels do not cover this dtype, negative pad, or stride with dilation"
        if POINTWISE_TO_GEMM and _count(kernel) == 1:
            return None, "a 1x1 kernel's columns are its input: a plain GEMM"
        if _count(out_shape) < MIN_OUTPUTS:
            return None, f"{_count(out_shape)} output positions, fewer than MIN_OUTPUTS = {MIN_OUTPUTS}"
        direct = cls(num, channels, num_output, group, kernel, stride, pad, dilation, spatial, out_shape)
        if direct.phases is not None and direct.phases.waste > STRIDED_WASTE:
            return None, (f"stride phases would add {direct.phases.waste:.2f}x the multiply-adds "
                          f"(above STRIDED_WASTE = {STRIDED_WASTE})")
        return direct, ""

    # -- the unit-stride convolution the kernels run -------------------------------------------------
    def _unit_input(self, x):
        if self.phases is None:
            return x
        shape = (self.num, self.channels * self.phases.U * self.phases.V) + self.phases.spatial
        out = workspace(numpy, x.dtype, "direct.phases", _count(shape)).reshape(shape)
        return self.phases.input(x, self._extended_scratch(x.dtype), out)

    def _extended_scratch(self, dtype):
        return workspace(numpy, dtype, "direct.phases.ext", _count(self.phases._extended(self.num, self.channels)))

    def _unit(self, w):
        """(weights, kernel, pad) of the unit-stride convolution"""
        if self.phases is None:
            return w, self.kernel, self.pad
        return self.phases.weights(w), self.phases.kernel, (0, 0)

    def _parts(self):
        """(parts, bounds): bounds of each part's images, or None when the parts share every image"""
        threads = num_threads()
        if self.num >= threads or self.num == 0:
            parts = max(1, min(threads, self.num))
            return parts, [self.num * p // parts for p in range(parts + 1)]
        return threads, None

    def _run(self, fn):
        """fn(a, b, share) for every part: images [a, b), ``share`` the kernels' part arguments"""
        parts, bounds = self._parts()

        def run(lo, hi):
            for p in range(lo, hi):
                if bounds is None:
                    fn(p, 0, self.num, {"part": p, "parts": parts})
                else:
                    fn(p, bounds[p], bounds[p + 1], {})
        parallel_for(parts, run, self.work)
        return parts, bounds

    # -- the passes -----------------------------------------------------------------------------------
    def forward(self, x, w, bias, y):
        """y (num, num_output, *out_shape) = the correlation of x with w, + bias (None: none)."""
        xu = self._unit_input(x)
        wu, kernel, pad = self._unit(w)
        y = y.reshape((self.num, self.num_output) + self.out_shape)
        geometry = (self.group, kernel, pad, self.dilation, self.out_shape)
        self._run(lambda p, a, b, share: native_conv.forward(xu[a:b], wu, bias, y[a:b], *geometry, **share))

    def weight_gradient(self, x, w, dy, dw):
        """dw (weights' shape) += the weights' gradient, from x and the top's gradient dy."""
        xu = self._unit_input(x)
        wu, kernel, pad = self._unit(w)
        dy = dy.reshape((self.num, self.num_output) + self.out_shape)
        parts, bounds = self._parts()
        direct = self.phases is None and bounds is None  # rows dealt out: each part adds into its own rows
        unit = dw.reshape(wu.shape) if direct else _zeroed(wu, "direct.dw")
        sums = [unit] * parts if bounds is None else [_zeroed(wu, f"direct.dw.{p}") for p in range(parts)]
        geometry = (self.group, kernel, pad, self.dilation, self.out_shape)
        self._run(lambda p, a, b, share: native_conv.backward_weights(xu[a:b], dy[a:b], sums[p], *geometry, **share))
        if bounds is not None:
            for part in sums:
                unit += part
        if self.phases is not None:
            self.phases.add_weight_gradient(unit, dw.reshape(w.shape))
        elif not direct:
            dw += unit.reshape(dw.shape)

    def data_gradient(self, w, dy, dx):
        """dx (num, channels, *spatial) = the input's gradient from the top's gradient dy (overwritten).
        Only where ``covers_data_gradient``."""
        wu, kernel, _ = self._unit(w)
        wflip = flipped(wu, self.group)
        dy = dy.reshape((self.num, self.num_output) + self.out_shape)
        if self.phases is None:
            dxu = dx.reshape((self.num, self.channels) + self.spatial)
        else:
            shape = (self.num, self.channels * self.phases.U * self.phases.V) + self.phases.spatial
            dxu = workspace(numpy, dx.dtype, "direct.phases.dx", _count(shape)).reshape(shape)
        geometry = (self.group, kernel, self.back_pad, self.dilation, dxu.shape[2:])
        self._run(lambda p, a, b, share: native_conv.forward(dy[a:b], wflip, None, dxu[a:b], *geometry, **share))
        if self.phases is not None:
            self.phases.input_gradient(dxu, self._extended_scratch(dx.dtype),
                                       dx.reshape((self.num, self.channels) + self.spatial))


def _zeroed(like, slot):
    out = workspace(numpy, like.dtype, slot, like.size).reshape(like.shape)
    out[...] = 0
    return out
