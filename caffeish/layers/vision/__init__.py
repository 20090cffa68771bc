"""Vision layers over feature maps ``(N, C, *spatial)``: Convolution, Deconvolution, Im2col, Pooling, SPP, Crop,
and the normalisations LRN, MVN and BatchNorm.
"""
from . import batch_norm, convolution, crop, deconvolution, im2col_layer, lrn, mvn, pooling, spp  # noqa: F401
