"""The Split layer (Caffe's SplitLayer): one bottom copied to several tops, inserted by the Net wherever a
blob is read by more than one layer.
"""
from ...layer import Layer, register_layer


@register_layer("Split")
class SplitLayer(Layer):
    """Split: copies one bottom to several tops; backward sums the tops' diffs.

    Net inserts these wherever a blob is read by more than one layer, so that every
    other layer may overwrite its bottom's diff.
    """
    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for blob in top:
            # Tops share the bottom's data: a split costs no copy forward.
            blob.reshape(bottom[0].shape)
            blob.share_data(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        diff = bottom[0].diff
        if len(top) == 1:
            diff[...] = top[0].diff
            return
        diff[...] = top[0].diff
        for blob in top[1:]:
            diff += blob.diff
