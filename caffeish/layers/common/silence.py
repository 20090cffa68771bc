"""The Silence layer (Caffe's SilenceLayer): consumes any number of bottoms, so that they are not net
outputs; no tops.
"""
from ...layer import Layer, register_layer


@register_layer("Silence")
class SilenceLayer(Layer):
    """Silence: consumes any number of bottoms (so they are not net outputs) and has no tops.

    Forward does nothing; backward sets the bottoms' diffs to zero where
    propagate_down, as Caffe does.
    """
    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
