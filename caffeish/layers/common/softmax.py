"""The Softmax layer (Caffe's SoftmaxLayer), and ``softmax``, the function it and the softmax losses use."""
from ...backend import get_array_module
from ...cpu import workspace
from ...layer import Layer, register_layer


def softmax(x, axis, out):
    """Write softmax(x) along ``axis`` into ``out`` (may be ``x``), subtracting the max first.

    Works in ``out`` itself: no array of ``x``'s size is made besides it.
    """
    xp = get_array_module(x)
    xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    """Softmax along ``softmax_param.axis``.   bottom, top: any shape (in place allowed)."""
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
        xp = get_array_module(y)
        dx = bottom[0].diff  # may be dy itself (in place): dot is taken before it is written
        prod = workspace(xp, y.dtype, "softmax.tmp", y.size).reshape(y.shape)
        xp.multiply(dy, y, out=prod)
        dot = prod.sum(axis=self.axis, keepdims=True)
        xp.subtract(dy, dot, out=dx)
        dx *= y
