"""Small builders shared by the tests."""
import numpy

from caffeish import Blob, caffe_pb2, im2col
from caffeish.layer import create_layer
from caffeish.prototxt import parse_text


def layer_param(text):
    """A LayerParameter from prototxt text (``type: "ReLU" relu_param {...}``)."""
    return parse_text(text, caffe_pb2.LayerParameter())


def make_layer(text, dtype=numpy.float64, phase=caffe_pb2.TRAIN):
    param = layer_param(text)
    if not param.HasField("phase"):
        param.phase = phase
    if not param.name:
        param.name = param.type.lower()
    return create_layer(param, dtype=dtype)


def blob(array_or_shape, dtype=numpy.float64, name="", rng=None, low=-1.0, high=1.0):
    """A Blob holding ``array`` or uniform random values of ``shape``."""
    if isinstance(array_or_shape, tuple):
        rng = rng or numpy.random.default_rng(0)
        array = rng.uniform(low, high, size=array_or_shape)
    else:
        array = numpy.asarray(array_or_shape)
    b = Blob(array.shape, dtype=dtype, name=name)
    b.data[...] = array
    return b


def empty(n=1, dtype=numpy.float64):
    return [Blob(dtype=dtype, name=f"top{i}") for i in range(n)]


def random_geometry(rng, nd, unit_last_stride=False):
    """(spatial, kernel, stride, pad, dilation) with a non-empty output."""
    while True:
        spatial = tuple(int(v) for v in rng.integers(1, 10, size=nd))
        kernel = tuple(int(v) for v in rng.integers(1, 5, size=nd))
        stride = tuple(int(v) for v in rng.integers(1, 4, size=nd))
        if unit_last_stride:
            stride = stride[:-1] + (1,)
        pad = tuple(int(v) for v in rng.integers(0, 3, size=nd))
        dilation = tuple(int(v) for v in rng.integers(1, 3, size=nd))
        out = im2col.conv_output_shape(spatial, kernel, stride, pad, dilation)
        if all(o > 0 for o in out):
            return spatial, kernel, stride, pad, dilation
