"""The Scale and Bias layers (Caffe's ScaleLayer, BiasLayer): bottom[0] multiplied by, or added to, a learned
blob or bottom[1] broadcast along some of its axes.
"""
from ...blob import Blob
from ...errors import CaffeishError
from ...fillers import fill
from ...layer import Layer, register_layer
from ...proto import caffe_pb2


def operand_shape(bottom, axis, num_axes, what):
    """The shape of a learned operand: bottom.shape[axis : axis + num_axes], num_axes -1 meaning to the end."""
    axis = bottom.canonical_axis(axis)
    if num_axes < -1:
        raise CaffeishError(f"{what}.num_axes must be non-negative, or -1 to extend to the end of bottom[0]; "
                            f"got {num_axes}")
    if num_axes >= 0 and axis + num_axes > bottom.num_axes:
        raise CaffeishError(f"{what}: axis {axis} with num_axes {num_axes} extends past the {bottom.num_axes} axes "
                            f"of bottom[0] (shape {bottom.shape})")
    end = bottom.num_axes if num_axes == -1 else axis + num_axes
    return bottom.shape[axis:end]


def broadcast_layout(bottom, operand, axis, what):
    """(outer, dim, inner) for ``operand`` applied to ``bottom`` from ``axis``, with Caffe's shape checks."""
    n = operand.num_axes
    axis = 0 if n == 0 else bottom.canonical_axis(axis)
    if axis + n > bottom.num_axes:
        raise CaffeishError(f"{what} of shape {operand.shape} extends past the shape {bottom.shape} of bottom[0] "
                            f"when applied from axis {axis}")
    if bottom.shape[axis:axis + n] != operand.shape:
        raise CaffeishError(f"{what} of shape {operand.shape} does not match bottom[0] of shape {bottom.shape} "
                            f"from axis {axis} (its axes {axis}..{axis + n - 1} are {bottom.shape[axis:axis + n]})")
    return bottom.count_range(0, axis), operand.count, bottom.count_range(axis + n)


class _Broadcast(Layer):
    """The base of Scale and Bias: one or two bottoms, one top, and the learned blobs they make.

    The operand (a learned parameter, or bottom[1]) has the shape of bottom[0] from ``axis`` for its own
    number of axes, so bottom[0] is viewed as (outer, dim, inner) with outer = count(0, axis), dim = the
    operand's count and inner = count after it, exactly as Caffe.  A learned operand has the shape
    bottom[0].shape[axis : axis + num_axes] (num_axes -1: to the end; 0: a scalar).  A scalar operand is
    always applied with axis 0.  top: bottom[0]'s shape; in place allowed.
    """
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def _new_blob(self, shape, filler):
        blob = Blob(shape, dtype=self.dtype, name=f"{self.name}[{len(self.blobs)}]")
        fill(blob, filler)
        self.blobs.append(blob)
        return blob


def _sum_outer_inner(array, layout):
    """Sum an (outer * dim * inner) array down to (dim,)."""
    return array.reshape(layout).sum(axis=(0, 2))


@register_layer("Bias")
class BiasLayer(_Broadcast):
    """y = x + b, b learned or bottom[1].  Default filler: constant 0."""

    def layer_setup(self, bottom, top):
        p = self.param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = operand_shape(bottom[0], p.axis, p.num_axes, "bias_param")
            self._new_blob(shape, p.filler)
        self.param_propagate_down = [True] * len(self.blobs)

    def _bias(self, bottom):
        if len(bottom) > 1:
            return bottom[1]
        if not self.blobs:
            raise CaffeishError("Bias with one bottom needs its learned bias blob, but the layer has none")
        return self.blobs[0]

    def reshape(self, bottom, top):
        self.layout = broadcast_layout(bottom[0], self._bias(bottom), self.param.bias_param.axis, "the bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        b = self._bias(bottom).data.reshape(1, -1, 1)
        top[0].data.reshape(self.layout)[...] = x.reshape(self.layout) + b

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        learned = len(bottom) == 1
        if learned and self.param_propagate_down[0]:
            self.blobs[0].diff += _sum_outer_inner(dy, self.layout).reshape(self.blobs[0].shape)
        elif not learned and propagate_down[1]:
            bottom[1].diff[...] = _sum_outer_inner(dy, self.layout).reshape(bottom[1].shape)
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = dy   # in place, the diff is already there


@register_layer("Scale")
class ScaleLayer(_Broadcast):
    """y = x * s (+ b), s learned or bottom[1], b learned when ``bias_term``.

    Blobs: [scale, bias] with one bottom, [bias] with two.  Default fillers: scale constant 1, bias constant 0.
    """

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        if len(bottom) == 1 and not self.blobs:
            shape = operand_shape(bottom[0], p.axis, p.num_axes, "scale_param")
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1.0)
            self._new_blob(shape, filler)
        self.bias_index = None
        if p.bias_term:
            # Caffe: the bias is a new blob unless the layer already has one after the scale.
            if len(self.blobs) + len(bottom) < 3:
                # As Caffe's inner Bias layer: from scale_param.axis, over the scale's number of axes.
                num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
                self._new_blob(operand_shape(bottom[0], p.axis, num_axes, "scale_param"), p.bias_filler)
            self.bias_index = len(self.blobs) - 1
        self.param_propagate_down = [True] * len(self.blobs)
        self._saved_input = None

    def _scale(self, bottom):
        if len(bottom) > 1:
            return bottom[1]
        if not self.blobs:
            raise CaffeishError("Scale with one bottom needs its learned scale blob, but the layer has none")
        return self.blobs[0]

    def reshape(self, bottom, top):
        axis = self.param.scale_param.axis
        self.layout = broadcast_layout(bottom[0], self._scale(bottom), axis, "the scale")
        if self.bias_index is not None:
            bias_layout = broadcast_layout(bottom[0], self.blobs[self.bias_index], axis, "the bias")
            if bias_layout != self.layout:
                raise CaffeishError(f"the bias of shape {self.blobs[self.bias_index].shape} does not fit the "
                                    f"scale of shape {self._scale(bottom).shape}")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        # In place, backward needs x for the scale's gradient: keep it (Caffe's temp_).
        self._saved_input = x.copy() if top[0] is bottom[0] else None
        y = x.reshape(self.layout) * self._scale(bottom).data.reshape(1, -1, 1)
        if self.bias_index is not None:
            y += self.blobs[self.bias_index].data.reshape(1, -1, 1)
        top[0].data.reshape(self.layout)[...] = y

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        # Parameter gradients first: in place, writing the bottom diff overwrites the top diff.
        if self.bias_index is not None and self.param_propagate_down[self.bias_index]:
            bias = self.blobs[self.bias_index]
            bias.diff += _sum_outer_inner(dy, self.layout).reshape(bias.shape)
        learned = len(bottom) == 1
        scale = self._scale(bottom)
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            x = self._saved_input if self._saved_input is not None else bottom[0].data
            grad = _sum_outer_inner(dy * x, self.layout).reshape(scale.shape)
            if learned:
                scale.diff += grad
            else:
                scale.diff[...] = grad
        if propagate_down[0]:
            s = scale.data.reshape(1, -1, 1)
            bottom[0].diff.reshape(self.layout)[...] = dy.reshape(self.layout) * s
