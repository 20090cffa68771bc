import itertools

import numpy
import pytest

from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def crop_layer(params=""):
    return make_layer(f'type: "Crop" crop_param {{ {params} }}')


def loop_crop(x, target_shape, axis, offsets):
    """Caffe's crop, one element at a time."""
    top = numpy.zeros([x.shape[i] if i < axis else target_shape[i] for i in range(x.ndim)])
    for index in itertools.product(*(range(s) for s in top.shape)):
        src = tuple(v + (offsets[i - axis] if i >= axis else 0) for i, v in enumerate(index))
        top[index] = x[src]
    return top


@checks_forward("Crop")
@pytest.mark.parametrize("params,shape,like,axis,offsets", [
    ("", (2, 3, 5, 6), (1, 1, 3, 4), 2, (0, 0)),
    ("offset: 1", (2, 3, 5, 6), (1, 1, 3, 4), 2, (1, 1)),
    ("axis: 1 offset: 1 offset: 2 offset: 1", (2, 4, 5, 6), (1, 2, 3, 4), 1, (1, 2, 1)),
    ("axis: -1 offset: 2", (2, 3, 4, 6), (9, 9, 9, 3), 3, (2,)),
    ("axis: 0 offset: 1", (3, 4), (2, 2), 0, (1, 1)),
])
def test_crop_forward(params, shape, like, axis, offsets):
    x, target = blob(shape), blob(like)
    layer = crop_layer(params)
    top = empty()
    layer.setup([x, target], top)
    layer.Forward([x, target], top)
    ref = loop_crop(x.data, like, axis, offsets)
    assert top[0].shape == ref.shape
    numpy.testing.assert_array_equal(top[0].data, ref)


def test_crop_backward_zero_fills_then_copies():
    x, target = blob((1, 1, 4, 4)), blob((1, 1, 2, 2))
    layer = crop_layer("offset: 1")
    top = empty()
    layer.setup([x, target], top)
    layer.Forward([x, target], top)
    x.diff[...] = 7.0
    target.diff[...] = 7.0
    top[0].diff[...] = [[[[1, 2], [3, 4]]]]
    layer.backward(top, [True, True], [x, target])
    expect = numpy.zeros((4, 4))
    expect[1:3, 1:3] = [[1, 2], [3, 4]]
    numpy.testing.assert_array_equal(x.diff[0, 0], expect)
    numpy.testing.assert_array_equal(target.diff, 0.0)
    assert not layer.allow_force_backward(1)


@checks_gradient("Crop")
@pytest.mark.parametrize("params,shape,like", [
    ("offset: 1", (2, 2, 4, 3), (1, 1, 2, 2)),
    ("axis: 1 offset: 0 offset: 1 offset: 2", (2, 3, 3, 4), (2, 2, 2, 2)),
])
def test_crop_gradient(params, shape, like):
    check_gradient(crop_layer(params), [blob(shape), blob(like)], empty(), check_bottom=[0])


@pytest.mark.parametrize("params,shape,like,message", [
    ("axis: 1 offset: 1 offset: 1", (2, 3, 4, 4), (2, 3, 2, 2), "2 offsets.*from axis 1.*has 3 axes"),
    ("offset: 1 offset: 1 offset: 1", (2, 3, 4, 4), (2, 3, 2, 2), "3 offsets"),
    ("offset: 3", (2, 3, 4, 4), (2, 3, 2, 2), "crop of axis 2 is out of bounds: size 2 at offset 3"),
    ("", (2, 3, 4, 4), (2, 3, 5, 4), "size 5 at offset 0 does not fit in 4"),
    ("axis: 4", (2, 3, 4, 4), (2, 3, 2, 2), "axis 4 is out of range"),
    ("", (2, 3, 4, 4), (2, 3, 2), "same number of axes"),
])
def test_crop_errors(params, shape, like, message):
    with pytest.raises(CaffeishError, match=message):
        crop_layer(params).setup([blob(shape), blob(like)], empty())
