"""The BatchNorm layer (Caffe's BatchNormLayer): batch normalisation per channel, without scale and shift
(a Scale layer follows it for those).
"""
from ...blob import Blob
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from ...proto import caffe_pb2


@register_layer("BatchNorm")
class BatchNormLayer(Layer):
    """BatchNorm: Caffe's batch normalisation (no scale and shift; a Scale layer follows it for those).

    bottom: ``(N, C, *rest)`` (a 1-axis bottom has one channel).  top: the same shape; may run in place.
    Statistics are per channel, over the batch and all the other axes (``m = count / C`` values each).

    blobs (not learned): [0] the running sum of means ``(C,)``, [1] of variances ``(C,)``, [2] the scale
    factor ``(1,)``, all 0 at first.  Setup appends ``param { lr_mult: 0 }`` to the layer's ParamSpecs for
    each of them that has none (and refuses a non-zero lr_mult), as Caffe does, so that a Net gives them
    no update.

    use_global_stats (unset: true in TEST, false in TRAIN):
      false -- normalise with the batch mean and (biased) variance, ``y = (x - mean) / sqrt(var + eps)``,
               and update the running sums: ``s = s * maf + 1``, ``mean_sum = maf * mean_sum + mean``,
               ``var_sum = maf * var_sum + m / (m - 1) * var`` (factor 1 when m is 1), ``maf`` the
               moving_average_fraction.
      true  -- normalise with ``mean_sum / s`` and ``var_sum / s`` (0 when ``s`` is 0).
    Backward: ``dx = (dy - mean(dy) - y mean(dy y)) / sqrt(var + eps)`` with batch statistics, and
    ``dx = dy / sqrt(var + eps)`` with global ones.  The parameter blobs get no gradient.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.use_global_stats = self.phase == caffe_pb2.TEST
        if p.HasField("use_global_stats"):
            self.use_global_stats = bool(p.use_global_stats)
        self.eps = float(p.eps)
        if bottom[0].num_axes < 1:
            raise CaffeishError(f"BatchNorm needs a bottom with at least one axis, got shape {bottom[0].shape}")
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if self.blobs:
            expect = (self.channels, self.channels, 1)
            if len(self.blobs) != 3 or tuple(b.count for b in self.blobs) != expect:
                raise CaffeishError(f"BatchNorm expects 3 blobs holding {expect} values (mean, variance, scale "
                                    f"factor), got {[b.shape for b in self.blobs]}")
        else:
            self.blobs = [Blob(shape, dtype=self.dtype, name=f"{self.name}[{i}]")
                          for i, shape in enumerate(((self.channels,), (self.channels,), (1,)))]
        # Mask the statistics from the solver: lr_mult 0 for each blob, as Caffe does.
        specs = self.param.param
        for i in range(len(self.blobs)):
            if len(specs) == i:
                specs.add().lr_mult = 0.0
            elif specs[i].lr_mult != 0:
                raise CaffeishError(f"BatchNorm's statistics cannot be learned: param {i} has lr_mult "
                                    f"{specs[i].lr_mult}, but it must be 0 (or left out)")
        self.param_propagate_down = [False] * len(self.blobs)
        self.x_norm = None
        self.std = None

    def reshape(self, bottom, top):
        b = bottom[0]
        channels = 1 if b.num_axes == 1 else (b.shape[1] if b.num_axes > 1 else None)
        if channels != self.channels:
            raise CaffeishError(f"the bottom of shape {b.shape} has {channels} channels, but the layer was set "
                                f"up for {self.channels}")
        if top[0] is not b:
            top[0].reshape(b.shape)

    def _as_ncs(self, array):
        return array.reshape(array.shape[0] if array.ndim else 1, self.channels, -1)

    def forward(self, bottom, top):
        x = self._as_ncs(bottom[0].data)
        if self.use_global_stats:
            s = float(self.blobs[2].data.reshape(-1)[0])
            factor = 0.0 if s == 0 else 1.0 / s
            mean = factor * self.blobs[0].data.reshape(-1)
            var = factor * self.blobs[1].data.reshape(-1)
            centred = x - mean.reshape(1, -1, 1)
        else:
            mean = x.mean(axis=(0, 2))
            centred = x - mean.reshape(1, -1, 1)
            var = (centred * centred).mean(axis=(0, 2))
            maf = self.moving_average_fraction
            self.blobs[2].data[...] = self.blobs[2].data * maf + 1
            m = bottom[0].count // self.channels
            correction = m / (m - 1) if m > 1 else 1.0
            mean_sum = self.blobs[0].data
            mean_sum[...] = maf * mean_sum + mean.reshape(mean_sum.shape)
            var_sum = self.blobs[1].data
            var_sum[...] = maf * var_sum + correction * var.reshape(var_sum.shape)
        std = ((var + self.eps) ** 0.5).reshape(1, -1, 1)
        y = centred / std
        # Kept for backward: a later in-place layer may overwrite the top.
        self.x_norm, self.std = y, std
        top[0].data[...] = y.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.x_norm is None:
            raise CaffeishError("BatchNorm backward was called before forward")
        dy = self._as_ncs(top[0].diff)
        if self.use_global_stats:
            dx = dy / self.std
        else:
            y = self.x_norm
            dx = (dy - dy.mean(axis=(0, 2), keepdims=True)
                  - y * (dy * y).mean(axis=(0, 2), keepdims=True)) / self.std
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
