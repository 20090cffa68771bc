"""The Reduction layer (Caffe's ReductionLayer): SUM, ASUM, SUMSQ or MEAN over all axes from ``axis``,
times ``coeff``.
"""
from ...backend import get_array_module
from ...layer import Layer, register_layer
from ...proto import caffe_pb2

_OPS = caffe_pb2.ReductionParameter


@register_layer("Reduction")
class ReductionLayer(Layer):
    """Reduction: SUM, ASUM (sum of |x|), SUMSQ (sum of x^2) or MEAN over all axes from ``axis``, times ``coeff``.

    bottom: any shape; top: bottom.shape[:axis] (a scalar for axis 0, the default).  Reducing only some
    middle axes is not possible, as in Caffe.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.op = self.param.reduction_param.operation

    def reshape(self, bottom, top):
        p = self.param.reduction_param
        axis = bottom[0].canonical_axis(p.axis)
        self.num = bottom[0].count_range(0, axis)
        self.dim = bottom[0].count_range(axis)
        top[0].reshape(bottom[0].shape[:axis])
        self.coeff = float(p.coeff)
        if self.op == _OPS.MEAN and self.dim:
            self.coeff /= self.dim

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        xp = get_array_module(x)
        if self.op in (_OPS.SUM, _OPS.MEAN):
            y = x.sum(axis=1)
        elif self.op == _OPS.ASUM:
            y = xp.abs(x).sum(axis=1)
        else:  # SUMSQ
            y = (x * x).sum(axis=1)
        if self.coeff != 1:
            y *= self.coeff
        top[0].data.reshape(self.num)[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        scale = top[0].diff.reshape(self.num, 1) * self.coeff
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.op in (_OPS.SUM, _OPS.MEAN):
            dx[...] = scale
        else:
            x = bottom[0].data.reshape(self.num, self.dim)
            if self.op == _OPS.ASUM:
                xp = get_array_module(x)
                dx[...] = xp.sign(x) * scale
            else:  # SUMSQ
                dx[...] = x * (2 * scale)
