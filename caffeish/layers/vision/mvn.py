"""The MVN layer (Caffe's MVNLayer): mean-variance normalisation of each (image, channel) plane, or of each
image with ``across_channels``.
"""
from ...errors import CaffeishError
from ...layer import Layer, register_layer


@register_layer("MVN")
class MVNLayer(Layer):
    """MVN: Caffe's mean-variance normalisation.

    bottom: up to 4 axes, read as Caffe's legacy (num, channels, height, width).  top: that 4-axis shape
    ``(num, channels, height, width)`` -- Caffe reshapes its top so (a bottom (N, D) gives (N, D, 1, 1)).

    Each group -- one (image, channel) plane, or with ``across_channels`` the whole image -- gets
    ``y = x - mean``, and with ``normalize_variance`` (default) ``y = (x - mean) / (std + eps)``, where
    ``std = sqrt(mean((x - mean)^2))`` and ``eps`` (default 1e-9) is added to the standard deviation, not
    to the variance.  Backward, as Caffe: ``dx = dy - mean(dy)``, or with the variance normalised
    ``dx = (dy - mean(dy) - y mean(dy y)) / (std + eps)``.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        self.y = None
        self.scale = None

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes > 4:
            raise CaffeishError(f"MVN takes a bottom of at most 4 axes (num, channels, height, width), "
                                f"got shape {b.shape}")
        shape = (b.num, b.channels, b.height, b.width)
        if top[0] is b and b.shape != shape:
            raise CaffeishError(f"MVN can run in place only on a 4-axis bottom; its top is reshaped to {shape}, "
                                f"but the bottom has shape {b.shape}")
        top[0].reshape(shape)

    def _groups(self, array, blob):
        rows = blob.num if self.across_channels else blob.num * blob.channels
        return array.reshape(rows, -1)

    def forward(self, bottom, top):
        x = self._groups(bottom[0].data, bottom[0])
        y = x - x.mean(axis=1, keepdims=True)
        if self.normalize_variance:
            self.scale = (y * y).mean(axis=1, keepdims=True) ** 0.5 + self.eps
            y = y / self.scale
        self.y = y  # kept for backward: a later in-place layer may overwrite the top
        top[0].data[...] = y.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.y is None:
            raise CaffeishError("MVN backward was called before forward")
        dy = self._groups(top[0].diff, top[0])
        if self.normalize_variance:
            y = self.y
            dx = (dy - dy.mean(axis=1, keepdims=True) - y * (dy * y).mean(axis=1, keepdims=True)) / self.scale
        else:
            dx = dy - dy.mean(axis=1, keepdims=True)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
