"""Weight fillers (Caffe's FillerParameter types).

Values are drawn on the host from the engine's seeded generator and copied to
the blob's device, so a seed gives the same weights on the CPU and the GPU.
Fan-in is ``count / shape[0]`` and fan-out ``count / shape[1]``, as in Caffe.
"""
import math

import numpy

from . import backend
from .errors import CaffeishError
from .registry import Registry

FILLERS = Registry("filler")


def fill(blob, filler_param):
    """Fill ``blob.data`` as ``filler_param`` (a caffe_pb2.FillerParameter) says."""
    if blob.count == 0:
        FILLERS.get(filler_param.type)  # an unknown type is still an error
        return
    values = FILLERS.get(filler_param.type)(blob.shape, filler_param, backend.rng())
    blob.data[...] = backend.to_current(values.astype(blob.dtype, copy=False))


def _fans(shape):
    count = int(numpy.prod(shape)) if shape else 1
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _norm(shape, p):
    fan_in, fan_out = _fans(shape)
    variance_norm = p.variance_norm
    cls = type(p)
    if variance_norm == cls.FAN_OUT:
        return fan_out
    if variance_norm == cls.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


@FILLERS.register("constant")
def _constant(shape, p, rng):
    return numpy.full(shape, p.value, dtype=numpy.float64)


@FILLERS.register("uniform")
def _uniform(shape, p, rng):
    if p.max < p.min:
        raise CaffeishError(f"uniform filler: max ({p.max}) is below min ({p.min})")
    if not numpy.isfinite(float(p.max) - float(p.min)):
        raise CaffeishError(f"uniform filler: the range [{p.min:g}, {p.max:g}] is not a finite interval")
    return rng.uniform(p.min, p.max, size=shape)


@FILLERS.register("gaussian")
def _gaussian(shape, p, rng):
    values = rng.normal(p.mean, p.std, size=shape)
    if p.sparse >= 0:
        # Each output keeps about `sparse` non-zero incoming weights.
        if len(shape) < 1:
            raise CaffeishError("gaussian filler with sparse needs a blob with at least one axis")
        num_outputs = shape[0]
        keep = rng.random(size=shape) < p.sparse / float(num_outputs)
        values = values * keep
    return values


@FILLERS.register("positive_unitball")
def _positive_unitball(shape, p, rng):
    num = shape[0] if shape else 1
    values = rng.uniform(0.0, 1.0, size=shape).reshape(num, -1)
    values /= values.sum(axis=1, keepdims=True)
    return values.reshape(shape)


@FILLERS.register("xavier")
def _xavier(shape, p, rng):
    scale = math.sqrt(3.0 / _norm(shape, p))
    return rng.uniform(-scale, scale, size=shape)


@FILLERS.register("msra")
def _msra(shape, p, rng):
    std = math.sqrt(2.0 / _norm(shape, p))
    return rng.normal(0.0, std, size=shape)


@FILLERS.register("bilinear")
def _bilinear(shape, p, rng):
    """Upsampling kernels for Deconvolution: a separable triangle filter."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise CaffeishError(f"bilinear filler needs a 4-D blob with square kernels, got shape {tuple(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    axis = 1 - numpy.abs(numpy.arange(k) / f - c)
    return numpy.broadcast_to(numpy.outer(axis, axis), shape).copy()
