"""Silence: consumes any number of bottoms (so they are not net outputs) and has no tops.

Forward does nothing; backward sets the bottoms' diffs to zero where
propagate_down, as Caffe does.
"""
from ...layer import Layer, register_layer


@register_layer("Silence")
class SilenceLayer(Layer):
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
