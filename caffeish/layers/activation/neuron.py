"""Element-wise neuron layers Sigmoid, TanH and Dropout.  Backward reads only the top (data and diff) and,
for Dropout, the mask kept from forward, so all three work in place.
"""
from ...backend import get_array_module, random_uniform
from ...errors import CaffeishError
from ...layer import NeuronLayer, register_layer
from ...proto import caffe_pb2


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 x) + 0.5 (stable, as Caffe does).

    bottom, top: any shape, the same (in place allowed)."""

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        top[0].data[...] = xp.tanh(x * 0.5) * 0.5 + 0.5

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        xp = get_array_module(y)
        one_minus = xp.subtract(1, y)
        one_minus *= y
        xp.multiply(top[0].diff, one_minus, out=bottom[0].diff)


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    """y = tanh(x).  bottom, top: any shape, the same (in place allowed)."""

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        xp.tanh(x, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        xp = get_array_module(y)
        factor = xp.empty_like(y)  # an array even for 0-axis blobs, where y * y would be a scalar
        xp.multiply(y, y, out=factor)
        xp.subtract(1, factor, out=factor)
        xp.multiply(top[0].diff, factor, out=bottom[0].diff)


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """TRAIN: y = x * mask / (1 - ratio), mask = (uniform >= ratio); TEST: y = x.

    bottom, top: any shape, the same (in place allowed)."""

    def layer_setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise CaffeishError(f"dropout_param.dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.mask = None

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.phase == caffe_pb2.TRAIN:
            xp = get_array_module(x)
            u = random_uniform(xp, x.shape, self.dtype)
            # The mask (a per-layer array, kept for backward) already carries the scale: 0 or 1 / (1 - ratio).
            if self.mask is None or self.mask.shape != x.shape or get_array_module(self.mask) is not xp:
                self.mask = xp.empty(x.shape, dtype=self.dtype)
            xp.greater_equal(u, self.ratio, out=self.mask)
            self.mask *= self.dtype.type(self.scale)
            xp.multiply(x, self.mask, out=top[0].data)
        elif top[0] is not bottom[0]:
            top[0].data[...] = x

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase == caffe_pb2.TRAIN:
            xp = get_array_module(self.mask)
            xp.multiply(top[0].diff, self.mask, out=bottom[0].diff)
        elif top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff
