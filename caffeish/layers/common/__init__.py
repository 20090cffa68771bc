"""Common layers: InnerProduct, Embed, Softmax, and the utilities that join, cut, reshape, select, reduce or
copy blobs (Concat, Slice, Split, Flatten, Reshape, Eltwise, Scale, Bias, ArgMax, ...), plus Python layers.
"""
from ...registry import import_modules

import_modules(__name__, __path__)  # each module registers its layer types
