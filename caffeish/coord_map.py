"""pycaffe's ``caffe.coord_map``: how spatial coordinates map between the tops of a NetSpec, and the Crop
layer that aligns two of them (what fully convolutional nets use to cut an upsampled score map back to the
input's size).
"""
import numpy

from . import layers as L

#: Layers that keep coordinates as they are.
PASS_THROUGH_LAYERS = ("AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold")


class UndefinedMapException(Exception):
    """The layer does not map coordinates (an InnerProduct, a global pooling)."""


class AxisMismatchException(Exception):
    """Two maps act on different spatial axes."""


def _values(repeated, default):
    return numpy.array(list(repeated) if len(repeated) else [default], ndmin=1)


def conv_params(fn):
    """``(axis, stride, effective kernel size, pad)`` of a Convolution, Deconvolution, Pooling or Im2col."""
    if fn.type_name == "Pooling":
        p = fn.proto.pooling_param
        if p.global_pooling:
            raise UndefinedMapException("a global pooling maps every position to one")
        ks = numpy.array([p.kernel_h, p.kernel_w] if p.kernel_h else [p.kernel_size], ndmin=1)
        stride = numpy.array([p.stride_h, p.stride_w] if p.stride_h else [p.stride or 1], ndmin=1)
        pad = numpy.array([p.pad_h, p.pad_w] if p.pad_h or p.pad_w else [p.pad], ndmin=1)
        return 1, stride, ks, pad
    p = fn.proto.convolution_param
    ks = numpy.array([p.kernel_h, p.kernel_w], ndmin=1) if p.kernel_h else _values(p.kernel_size, 1)
    stride = numpy.array([p.stride_h, p.stride_w], ndmin=1) if p.stride_h else _values(p.stride, 1)
    pad = numpy.array([p.pad_h, p.pad_w], ndmin=1) if p.pad_h or p.pad_w else _values(p.pad, 0)
    dilation = _values(p.dilation, 1)
    return p.axis, stride, (ks - 1) * dilation + 1, pad


def crop_params(fn):
    """``(axis, offset)`` of a Crop layer."""
    p = fn.proto.crop_param
    return p.axis, _values(p.offset, 0)


def coord_map(fn):
    """The map ``(axis, a, b)`` from ``fn``'s bottom to its top coordinates.

    A map is ``(axis, a, b)``: a coordinate ``x`` of the later top is ``a * x + b`` in the earlier one, for the
    spatial axes from ``axis`` on (``None``: the layer keeps every axis).  ``a`` and ``b`` are arrays, one value
    per spatial axis (or one for all).  A convolution of kernel ``k`` (dilated: ``(k - 1) * d + 1``), stride
    ``s`` and pad ``p`` maps its output ``x`` to input ``s * x + (k - 1) / 2 - p`` (the centre of its window),
    so the map from input to output is ``a = 1 / s``, ``b = (p - (k - 1) / 2) / s``; a deconvolution is the
    inverse; Crop shifts by its offset; element-wise layers are the identity.
    """
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset
    raise UndefinedMapException(f"{fn.type_name} layers do not map coordinates")


def compose(base_map, next_map):
    """The map of ``next_map`` applied after ``base_map``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"maps on axis {ax1} and axis {ax2} do not compose")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _bottoms(top):
    # A Crop's second bottom only gives the size: coordinates flow through the first.
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def _walk(start):
    """Yield ``(top, map from top to start)`` for ``start`` and every top it depends on through layers that map
    coordinates."""
    maps, frontier = {start: (None, 1, 0)}, [start]
    while frontier:
        top = frontier.pop()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _bottoms(top):
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                frontier.append(bottom)


def coord_map_from_to(top_from, top_to):
    """The map ``(axis, a, b)`` taking coordinates of ``top_from`` to those of ``top_to``, through the blob
    nearest to both that they share.  Raises RuntimeError when no chain of spatial layers connects them."""
    from_maps = dict(_walk(top_from))
    for top, to_map in _walk(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError("cannot map coordinates between these tops: they are not connected by layers that keep "
                       "spatial coordinates (Convolution, Pooling, Deconvolution, Crop, element-wise layers)")


def crop(top_from, top_to):
    """A Crop layer cutting ``top_from`` to the extent of ``top_to`` (``L.Crop(top_from, top_to, ...)``) with
    the axis and offsets the coordinate map gives.  AssertionError where no whole-pixel crop aligns them."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    assert (numpy.asarray(a) == 1).all(), f"the tops are at different scales (a = {a}), so no crop aligns them"
    assert (numpy.asarray(b) <= 0).all(), f"cannot crop by a negative offset (b = {b}): top_from is the smaller"
    assert (numpy.round(b) == b).all(), f"cannot crop by a fractional offset (b = {b})"
    offset = [int(v) for v in -numpy.round(numpy.array(b, ndmin=1))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))
