import numpy
import pytest

from caffeish import CaffeishError, set_random_seed
from gradient_check import checks_forward
from helpers import empty, make_layer


def _setup(param, ntop=1):
    layer = make_layer(f'type: "DummyData" dummy_data_param {{ {param} }}')
    top = empty(ntop)
    layer.setup([], top)
    return layer, top


@checks_forward("DummyData")
def test_dummy_data_default_is_constant_zero():
    layer, top = _setup("shape { dim: 2 dim: 3 } shape { dim: 4 }", 2)
    assert top[0].shape == (2, 3) and top[1].shape == (4,)
    top[0].data[...] = 9.0
    layer.Forward([], top)
    assert (top[0].data == 9.0).all()  # constant tops are filled once, at setup
    assert (top[1].data == 0.0).all()
    assert not layer.has_backward


@checks_forward("DummyData")
def test_dummy_data_one_shape_one_filler_for_all_tops():
    layer, top = _setup("shape { dim: 2 dim: 2 } data_filler { type: 'constant' value: 1.5 }", 3)
    for t in top:
        assert t.shape == (2, 2)
        assert (t.data == 1.5).all()


@checks_forward("DummyData")
def test_dummy_data_refills_non_constant_tops_every_forward():
    set_random_seed(5)
    layer, top = _setup("shape { dim: 3 dim: 4 } shape { dim: 5 } "
                        "data_filler { type: 'uniform' min: 2 max: 3 } data_filler { type: 'constant' value: -1 }", 2)
    assert (top[1].data == -1).all()
    layer.Forward([], top)
    first = top[0].data.copy()
    assert ((first >= 2) & (first <= 3)).all()
    top[1].data[...] = 7.0
    layer.Forward([], top)
    assert not numpy.array_equal(first, top[0].data)
    assert ((top[0].data >= 2) & (top[0].data <= 3)).all()
    assert (top[1].data == 7.0).all()


@checks_forward("DummyData")
def test_dummy_data_legacy_dims():
    layer, top = _setup("num: 2 num: 3 channels: 4 height: 1 width: 5 data_filler { value: 2 }", 2)
    assert top[0].shape == (2, 4, 1, 5) and top[1].shape == (3, 4, 1, 5)
    assert (top[1].data == 2).all()


@pytest.mark.parametrize("param, ntop, match", [
    ("shape { dim: 2 } data_filler { } data_filler { }", 3, "2 data_filler.*3 tops"),
    ("shape { dim: 2 } shape { dim: 3 }", 3, "'shape' once, or once per top .3 tops.; it gives it 2"),
    ("", 1, "'shape' once.*gives it 0"),
    ("num: 2 channels: 3 height: 1", 1, "'width' once.*gives it 0"),
    ("num: 2 channels: 3 height: 1 width: 1 shape { dim: 2 }", 1, "both shape and the legacy"),
    ("shape { dim: 2 } data_filler { type: 'nope' }", 1, "unknown filler type 'nope'"),
])
def test_dummy_data_errors(param, ntop, match):
    with pytest.raises(CaffeishError, match=match):
        _setup(param, ntop)
