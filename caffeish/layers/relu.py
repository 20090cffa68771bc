"""ReLU: y = max(0, x) + negative_slope * min(0, x).   bottom, top: any shape (in place allowed)."""
import numpy

from ..backend import get_array_module
from ..im2col import workspace
from ..layer import NeuronLayer, register_layer


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    def layer_setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        if self.slope == 0:
            xp.maximum(x, 0, out=top[0].data)
        else:
            # y = max(x, 0) + slope * min(x, 0), without temporaries (works in place too).
            neg = workspace(xp, x.dtype, "relu.tmp", x.size).reshape(x.shape)
            xp.minimum(x, 0, out=neg)
            neg *= self.slope
            xp.maximum(x, 0, out=top[0].data)
            top[0].data[...] += neg

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, bottom data is already y; y > 0 exactly where x > 0 (for slope >= 0), so the mask is the same.
        x = bottom[0].data
        dy = top[0].diff
        xp = get_array_module(x)
        positive = workspace(xp, numpy.bool_, "relu.mask", x.size).reshape(x.shape)
        xp.greater(x, 0, out=positive)
        if self.slope == 0:
            xp.multiply(dy, positive, out=bottom[0].diff)
        else:
            one, slope = dy.dtype.type(1), dy.dtype.type(self.slope)
            xp.multiply(dy, xp.where(positive, one, slope), out=bottom[0].diff)
