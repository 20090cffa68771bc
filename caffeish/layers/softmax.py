"""Softmax along ``softmax_param.axis``.   bottom, top: any shape (in place allowed)."""
from ..backend import get_array_module
from ..layer import Layer, register_layer


def softmax(x, axis, out):
    """Write softmax(x) along ``axis`` into ``out`` (may be ``x``), subtracting the max first."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    out[...] = e


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = bottom[0].canonical_axis(self.param.softmax_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax(bottom[0].data, self.axis, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # dx = (dy - sum(dy * y)) * y, from the top alone.
        y, dy = top[0].data, top[0].diff
        dot = (dy * y).sum(axis=self.axis, keepdims=True)
        bottom[0].diff[...] = (dy - dot) * y
