"""Common layers: InnerProduct, Embed, Softmax, and the utilities that join, cut, reshape, select, reduce or
copy blobs (Concat, Slice, Split, Flatten, Reshape, Eltwise, Scale, Bias, ArgMax, ...), plus Python layers.
"""
from . import (argmax, batch_reindex, concat, eltwise, embed, filter, flatten, inner_product,  # noqa: F401
               parameter, python_layer, reduction, reshape, scale_bias, silence, slice, softmax, split, tile)
