"""Convolution: Caffe's N-D, grouped, dilated convolution (cross-correlation, as Caffe computes it).

bottom: one or more blobs of the same shape ``(*num, C, *spatial)`` where ``C`` is at
``convolution_param.axis`` (default 1); each gives the top of the same index,
``(*num, num_output, *out)`` with ``out = (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1``
(C++ integer division).  blobs: weights ``(num_output, C / group, *kernel)`` and, with
``bias_term``, bias ``(num_output,)``.

The whole batch is turned into columns at once (``caffeish.im2col``) and multiplied
by the weights in one batched GEMM over images and groups; a 1x1 kernel with stride
1 and no padding uses the input as its own columns.  Very large batches are cut into
chunks so that the column buffer stays under ``COL_BUFFER_BYTES``.
"""
from ..backend import get_array_module
from ..blob import Blob
from ..errors import CaffeishError
from ..fillers import fill
from ..im2col import col2im, conv_output_shape, im2col
from ..layer import Layer, register_layer

#: Upper bound for one im2col buffer; a batch whose columns exceed it is processed in chunks of images.
COL_BUFFER_BYTES = 1 << 30


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


@register_layer("Convolution")
class ConvolutionLayer(Layer):
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True

    def layer_setup(self, bottom, top):
        p = self.param.convolution_param
        self.channel_axis = bottom[0].canonical_axis(p.axis)
        self.num_spatial = bottom[0].num_axes - self.channel_axis - 1
        if self.num_spatial < 1:
            raise CaffeishError(f"Convolution needs at least one spatial axis after the channel axis "
                                f"{self.channel_axis}, but the bottom has shape {bottom[0].shape}")
        ns = self.num_spatial
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(p, ns)
        self.is_1x1 = all(k == 1 and s == 1 and q == 0 for k, s, q in zip(self.kernel, self.stride, self.pad))

        self.channels = bottom[0].shape[self.channel_axis]
        if not p.HasField("num_output") or p.num_output <= 0:
            raise CaffeishError("convolution_param needs a positive num_output")
        self.num_output = int(p.num_output)
        self.group = int(p.group)
        if self.group <= 0:
            raise CaffeishError(f"group must be positive, got {self.group}")
        if self.channels % self.group:
            raise CaffeishError(f"the input's {self.channels} channels are not divisible by group {self.group}")
        if self.num_output % self.group:
            raise CaffeishError(f"num_output {self.num_output} is not divisible by group {self.group}")
        self.bias_term = bool(p.bias_term)

        weight_shape = (self.num_output, self.channels // self.group) + tuple(self.kernel)
        if self.blobs:
            if len(self.blobs) != 1 + self.bias_term:
                raise CaffeishError(f"Convolution expects {1 + self.bias_term} parameter blob(s), "
                                    f"{len(self.blobs)} given")
            if tuple(self.blobs[0].shape) != weight_shape:
                raise CaffeishError(f"incorrect weight shape: expected {weight_shape}, got {self.blobs[0].shape}")
            if self.bias_term and tuple(self.blobs[1].shape) != (self.num_output,):
                raise CaffeishError(f"incorrect bias shape: expected ({self.num_output},), "
                                    f"got {self.blobs[1].shape}")
        else:
            self.blobs = [Blob(weight_shape, dtype=self.dtype, name=f"{self.name}[0]")]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                self.blobs.append(Blob((self.num_output,), dtype=self.dtype, name=f"{self.name}[1]"))
                fill(self.blobs[1], p.bias_filler)
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        axis = self.channel_axis
        shape = bottom[0].shape
        if len(shape) != axis + 1 + self.num_spatial:
            raise CaffeishError(f"the bottom's number of axes may not change: it was {axis + 1 + self.num_spatial}, "
                                f"now shape {shape}")
        if shape[axis] != self.channels:
            raise CaffeishError(f"the bottom has {shape[axis]} channels, but the layer was set up for "
                                f"{self.channels}")
        for b in bottom[1:]:
            if b.shape != shape:
                raise CaffeishError(f"all bottoms must have the same shape: {shape} vs. {b.shape}")
        self.spatial = tuple(shape[axis + 1:])
        self.out_shape = conv_output_shape(self.spatial, self.kernel, self.stride, self.pad, self.dilation)
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

    # -- helpers ---------------------------------------------------------------
    def _chunks(self):
        """Image ranges whose column buffer fits in COL_BUFFER_BYTES (one range for ordinary batches)."""
        kdim = self.channels
        for k in self.kernel:
            kdim *= k
        out = 1
        for o in self.out_shape:
            out *= o
        per_image = max(1, kdim * out * self.dtype.itemsize)
        step = self.num if self.is_1x1 else max(1, min(self.num, COL_BUFFER_BYTES // per_image))
        return [(i, min(i + step, self.num)) for i in range(0, max(self.num, 1), step)]

    def _columns(self, x):
        """x (n, C, *spatial) -> (n, group, C/group * prod(kernel), prod(out))."""
        n = x.shape[0]
        if self.is_1x1:
            cols = x.reshape(n, self.channels, -1)
        else:
            cols = im2col(x, self.kernel, self.stride, self.pad, self.dilation, self.out_shape)
        return cols.reshape(n, self.group, -1, cols.shape[-1])

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
            y = t.data.reshape(self.num, self.group, self.num_output // self.group, -1)
            for start, stop in self._chunks():
                # (1, g, O/g, K) @ (n, g, K, L) -> (n, g, O/g, L): one batched GEMM over images and groups.
                y[start:stop] = w[None] @ self._columns(x[start:stop])
            if bias is not None:
                y = t.data.reshape(self.num, self.num_output, -1)
                y += bias.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        need_weight = self.param_propagate_down[0]
        need_bias = self.bias_term and self.param_propagate_down[1]
        w = self._weights()
        g, og = self.group, self.num_output // self.group
        for t, down, b in zip(top, propagate_down, bottom):
            dy = t.diff.reshape(self.num, g, og, -1)
            if need_bias:
                self.blobs[1].diff[...] += dy.reshape(self.num, self.num_output, -1).sum(axis=(0, 2))
            if not (need_weight or down):
                continue
            xp = get_array_module(dy)
            x = self._as_batch(b.data)
            if down:
                dx = self._as_batch(b.diff)
            dw = self.blobs[0].diff.reshape(g, og, -1) if need_weight else None
            for start, stop in self._chunks():
                dy_c = dy[start:stop]
                if need_weight:
                    cols = self._columns(x[start:stop])
                    for gi in range(g):
                        # sum over images and output positions: one GEMM per group.
                        dw[gi] += xp.tensordot(dy_c[:, gi], cols[:, gi], axes=((0, 2), (0, 2)))
                if down:
                    # (1, g, K, O/g) @ (n, g, O/g, L) -> (n, g, K, L)
                    dcols = xp.swapaxes(w, 1, 2)[None] @ dy_c
                    n = stop - start
                    if self.is_1x1:
                        dx[start:stop] = dcols.reshape((n, self.channels) + self.spatial)
                    else:
                        dx[start:stop] = col2im(dcols.reshape(n, -1, dcols.shape[-1]),
                                                (n, self.channels) + self.spatial, self.kernel, self.stride,
                                                self.pad, self.dilation, self.out_shape)
