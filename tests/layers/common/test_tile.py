import numpy
import pytest

from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def tile_layer(params):
    return make_layer(f'type: "Tile" tile_param {{ {params} }}')


@checks_forward("Tile")
@pytest.mark.parametrize("params,axis,tiles", [
    ("tiles: 3", 1, 3),
    ("axis: 0 tiles: 2", 0, 2),
    ("axis: -1 tiles: 4", 3, 4),
    ("axis: 2 tiles: 1", 2, 1),
])
def test_tile_forward(params, axis, tiles):
    x = blob((2, 3, 2, 2))
    layer = tile_layer(params)
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    shape = list(x.shape)
    shape[axis] *= tiles
    assert top[0].shape == tuple(shape)
    # Caffe copies the whole block from `axis` on, tiles times, for every outer index.
    outer = int(numpy.prod(x.shape[:axis]))
    block = x.data.reshape(outer, -1)
    for o in range(outer):
        for t in range(tiles):
            numpy.testing.assert_array_equal(top[0].data.reshape(outer, -1)[o, t * block.shape[1]:(t + 1) * block.shape[1]],
                                             block[o])


def test_tile_matches_numpy_tile_on_the_last_axis():
    x = blob((2, 3))
    layer = tile_layer("axis: 1 tiles: 3")
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_array_equal(top[0].data, numpy.tile(x.data, (1, 3)))


@checks_gradient("Tile")
@pytest.mark.parametrize("params,shape", [("tiles: 3", (2, 2, 3)), ("axis: 0 tiles: 2", (2, 3))])
def test_tile_gradient(params, shape):
    check_gradient(tile_layer(params), [blob(shape)], empty())


def test_tile_backward_sums_tiles():
    x = blob((1, 2))
    layer = tile_layer("tiles: 3")
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = numpy.arange(6.0).reshape(1, 6)
    layer.backward(top, [True], [x])
    numpy.testing.assert_array_equal(x.diff, [[0 + 2 + 4, 1 + 3 + 5]])


@pytest.mark.parametrize("params,message", [("axis: 1", "tiles"), ("tiles: 0", "positive, got 0"),
                                            ("tiles: 2 axis: 4", "axis 4 is out of range")])
def test_tile_errors(params, message):
    with pytest.raises(CaffeishError, match=message):
        tile_layer(params).setup([blob((2, 3))], empty())
