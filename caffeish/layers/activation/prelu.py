"""The PReLU layer (Caffe's PReLULayer): a ReLU whose negative slope is learned, one per channel or one
shared by all.
"""
import math

from ...backend import get_array_module
from ...blob import Blob
from ...errors import CaffeishError
from ...fillers import fill
from ...layer import NeuronLayer, register_layer
from ...proto import caffe_pb2


@register_layer("PReLU")
class PReLULayer(NeuronLayer):
    """PReLU: y = max(x, 0) + a_c * min(x, 0), with a learned slope a_c per channel (axis 1), or one shared.

    bottom: at least 2 axes (N, C, ...); top: the same shape (in place allowed: forward then keeps a copy
    of the bottom for backward, as Caffe's bottom_memory_).  The slope blob has shape (C,), or () when
    ``channel_shared``; it is filled by ``prelu_param.filler``, constant 0.25 when that is not given.
    """
    def layer_setup(self, bottom, top):
        p = self.param.prelu_param
        self._check_axes(bottom[0])
        self.channel_shared = bool(p.channel_shared)
        channels = bottom[0].shape[1]
        shape = () if self.channel_shared else (channels,)
        if not self.blobs:
            self.blobs = [Blob(shape, dtype=self.dtype, name=f"{self.name}[0]")]
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
            fill(self.blobs[0], filler)
        elif len(self.blobs) != 1 or self.blobs[0].count != (1 if self.channel_shared else channels):
            raise CaffeishError(
                f"PReLU with channel_shared {str(self.channel_shared).lower()} on {channels} channels needs one "
                f"slope blob of {1 if self.channel_shared else channels} values, but the layer has "
                f"{[b.shape for b in self.blobs]}")
        self.param_propagate_down = [True]
        self._saved_input = None

    def _check_axes(self, blob):
        if blob.num_axes < 2:
            raise CaffeishError(f"PReLU needs a bottom with at least 2 axes (N, C, ...), got shape {blob.shape}")

    def reshape(self, bottom, top):
        self._check_axes(bottom[0])
        channels = bottom[0].shape[1]
        if not self.channel_shared and self.blobs[0].count != channels:
            raise CaffeishError(f"PReLU has {self.blobs[0].count} slopes, but the bottom of shape "
                                f"{bottom[0].shape} has {channels} channels")
        super().reshape(bottom, top)

    def _slopes(self, x):
        """The slopes shaped to broadcast against ``x`` viewed as (N, C, rest)."""
        a = self.blobs[0].data
        return a.reshape(()) if self.channel_shared else a.reshape(1, -1, 1)

    def _view(self, array):
        return array.reshape(array.shape[0], array.shape[1], math.prod(array.shape[2:]))  # -1 fails on 0 values

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        self._saved_input = x.copy() if top[0] is bottom[0] else None
        x3 = self._view(x)
        top[0].data[...] = (xp.maximum(x3, 0) + self._slopes(x3) * xp.minimum(x3, 0)).reshape(x.shape)

    def backward(self, top, propagate_down, bottom):
        x = self._saved_input if self._saved_input is not None else bottom[0].data
        x3 = self._view(x)
        dy3 = self._view(top[0].diff)
        xp = get_array_module(x3)
        # The slope gradient first: in place, writing the bottom diff overwrites the top diff.
        if self.param_propagate_down[0]:
            contrib = dy3 * xp.minimum(x3, 0)          # dy * x where x <= 0
            if self.channel_shared:
                self.blobs[0].diff += contrib.sum()
            else:
                self.blobs[0].diff += contrib.sum(axis=(0, 2)).reshape(self.blobs[0].shape)
        if propagate_down[0]:
            grad = xp.where(x3 > 0, dy3, dy3 * self._slopes(x3))
            bottom[0].diff[...] = grad.reshape(x.shape)
