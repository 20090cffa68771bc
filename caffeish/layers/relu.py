"""ReLU: y = max(0, x) + negative_slope * min(0, x).   bottom, top: any shape (in place allowed)."""
from ..backend import get_array_module
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
            top[0].data[...] = xp.where(x > 0, x, x * self.slope)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, bottom data is already y; y > 0 exactly where x > 0, so the mask is the same.
        x = bottom[0].data
        dy = top[0].diff
        if self.slope == 0:
            bottom[0].diff[...] = dy * (x > 0)
        else:
            xp = get_array_module(x)
            bottom[0].diff[...] = dy * xp.where(x > 0, 1.0, self.slope).astype(dy.dtype)
