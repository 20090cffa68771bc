"""The EuclideanLoss layer (Caffe's EuclideanLossLayer): half the mean squared distance between two bottoms."""
from ...errors import CaffeishError
from ...layer import LossLayer, register_layer


@register_layer("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """EuclideanLoss: loss = sum((a - b)^2) / (2 N), N = bottom[0].shape[0].

    bottom[0], bottom[1]: the same first axis and the same count; both may receive
    gradients (b gets the negative).   top: the scalar loss.
    """
    exact_num_bottom = 2

    def allow_force_backward(self, bottom_index):
        return True  # both inputs are predictions/targets, not labels

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise CaffeishError(
                f"inputs must have the same dimension: bottom[0] {bottom[0].shape} has {bottom[0].count} "
                f"values, bottom[1] {bottom[1].shape} has {bottom[1].count}")

    def forward(self, bottom, top):
        a = bottom[0].data
        self.delta = a - bottom[1].data.reshape(a.shape)
        num = bottom[0].shape[0]
        top[0].data[...] = (self.delta * self.delta).sum() / a.dtype.type(num) / a.dtype.type(2)

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if i < len(propagate_down) and propagate_down[i]:
                alpha = top[0].diff * bottom[i].dtype.type(sign) / bottom[i].dtype.type(bottom[i].shape[0])
                bottom[i].diff[...] = (self.delta * alpha).reshape(bottom[i].shape)
