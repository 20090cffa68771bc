"""The ReLU layer (Caffe's ReLULayer): rectified linear units, leaky with a ``negative_slope``, the work split
across threads on the CPU."""
import numpy

from ...backend import get_array_module
from ...cpu import parallel_for, workspace
from ...layer import NeuronLayer, register_layer


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """ReLU: y = max(0, x) + negative_slope * min(0, x).   bottom, top: any shape (in place allowed)."""

    def layer_setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1)
        y = top[0].data.reshape(-1)
        xp = get_array_module(x)
        if self.slope == 0:
            parallel_for(x.size, lambda lo, hi: xp.maximum(x[lo:hi], 0, out=y[lo:hi]), x.size, xp)
            return
        # y = max(x, 0) + slope * min(x, 0), without temporaries (works in place too).
        neg = workspace(xp, x.dtype, "relu.tmp", x.size)

        def part(lo, hi):
            xp.minimum(x[lo:hi], 0, out=neg[lo:hi])
            neg[lo:hi] *= self.slope
            xp.maximum(x[lo:hi], 0, out=y[lo:hi])
            y[lo:hi] += neg[lo:hi]
        parallel_for(x.size, part, x.size, xp)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, bottom data is already y; y > 0 exactly where x > 0 (for slope >= 0), so the mask is the same.
        x = bottom[0].data.reshape(-1)
        dy = top[0].diff.reshape(-1)
        dx = bottom[0].diff.reshape(-1)
        xp = get_array_module(x)
        positive = workspace(xp, numpy.bool_, "relu.mask", x.size)
        one, slope = dy.dtype.type(1), dy.dtype.type(self.slope)

        def part(lo, hi):
            xp.greater(x[lo:hi], 0, out=positive[lo:hi])
            if self.slope == 0:
                xp.multiply(dy[lo:hi], positive[lo:hi], out=dx[lo:hi])
            else:
                xp.multiply(dy[lo:hi], xp.where(positive[lo:hi], one, slope), out=dx[lo:hi])
        parallel_for(x.size, part, x.size, xp)
