"""Vision layers over feature maps ``(N, C, *spatial)``: Convolution, Deconvolution, Im2col, Pooling, SPP, Crop,
and the normalisations LRN, MVN and BatchNorm.
"""
from ...registry import import_modules

import_modules(__name__, __path__)  # each module registers its layer types
