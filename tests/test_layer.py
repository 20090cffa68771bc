"""Layer.init_params: the parameter blobs a layer declares, created and filled or checked."""
import numpy
import pytest

import caffeish
from caffeish import Blob, CaffeishError, Net, caffe_pb2
from caffeish.fillers import fill
from caffeish.layer import ParamBlob
from caffeish.prototxt import parse_text
from helpers import blob, empty, make_layer

GAUSS = caffe_pb2.FillerParameter(type="gaussian", std=0.5)
UNIFORM = caffe_pb2.FillerParameter(type="uniform", min=-1, max=1)


def ip(extra="", dtype=numpy.float64):
    return make_layer(f'name: "fc" type: "InnerProduct" inner_product_param {{ num_output: 2 }} {extra}',
                      dtype=dtype)


def specs():
    return [ParamBlob("weights", (2, 3), GAUSS), ParamBlob("stat", (4,), None), ParamBlob("bias", (2,), UNIFORM)]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_init_params_creates_and_fills_in_order(dtype):
    caffeish.set_random_seed(5)
    expected = [Blob((2, 3), dtype=dtype), Blob((2,), dtype=dtype)]
    fill(expected[0], GAUSS)
    fill(expected[1], UNIFORM)

    layer = ip(dtype=dtype)
    caffeish.set_random_seed(5)
    blobs = layer.init_params(specs())
    assert blobs is layer.blobs
    assert [b.name for b in blobs] == ["fc[0]", "fc[1]", "fc[2]"]
    assert [b.shape for b in blobs] == [(2, 3), (4,), (2,)]
    assert all(b.dtype == numpy.dtype(dtype) for b in blobs)
    numpy.testing.assert_array_equal(blobs[0].data, expected[0].data)
    assert not blobs[1].data.any()                  # no filler: zeros, and nothing drawn for it
    numpy.testing.assert_array_equal(blobs[2].data, expected[1].data)
    assert layer.param_propagate_down == [True, True, True]


def test_init_params_unlearned_blobs_and_shapes_as_any_integers():
    layer = ip()
    layer.init_params([ParamBlob("mean", [numpy.int64(3)], None), ParamBlob("factor", (numpy.int32(1),), None)],
                      learned=False)
    assert [b.shape for b in layer.blobs] == [(3,), (1,)]
    assert layer.param_propagate_down == [False, False]


def test_init_params_keeps_given_blobs_of_the_declared_shapes():
    layer = ip('blobs { shape { dim: 2 dim: 3 } data: [1, 2, 3, 4, 5, 6] } blobs { shape { dim: 4 } } '
               'blobs { shape { dim: 2 } data: [7, 8] }')
    given = list(layer.blobs)
    caffeish.set_random_seed(5)
    layer.init_params(specs())
    assert layer.blobs == given                     # the same Blob objects, their values untouched
    numpy.testing.assert_array_equal(layer.blobs[0].data, [[1, 2, 3], [4, 5, 6]])
    numpy.testing.assert_array_equal(layer.blobs[2].data, [7, 8])
    assert layer.param_propagate_down == [True, True, True]
    draw = caffeish.backend.rng().uniform()         # the fillers drew nothing
    caffeish.set_random_seed(5)
    assert caffeish.backend.rng().uniform() == draw


def test_init_params_count_error_names_the_declared_and_given_blobs():
    layer = ip('blobs { shape { dim: 2 dim: 3 } }')
    with pytest.raises(CaffeishError) as info:
        layer.init_params(specs(), "with num_output 2")
    assert str(info.value) == ("layer 'fc' (type InnerProduct): InnerProduct with num_output 2 needs 3 parameter "
                               "blobs (weights (2, 3), stat (4,), bias (2,)), but the layer has 1, of shapes "
                               "[(2, 3)]")
    layer = ip('blobs { shape { dim: 2 dim: 3 } } blobs { shape { dim: 2 } }')
    with pytest.raises(CaffeishError) as info:
        layer.init_params(specs()[:1])
    assert str(info.value) == ("layer 'fc' (type InnerProduct): InnerProduct needs 1 parameter blob "
                               "(weights (2, 3)), but the layer has 2, of shapes [(2, 3), (2,)]")


def test_init_params_shape_error_names_the_first_wrong_blob_and_both_shapes():
    layer = ip('blobs { shape { dim: 2 dim: 3 } } blobs { shape { dim: 4 dim: 1 } } blobs { shape { dim: 3 } }')
    with pytest.raises(CaffeishError) as info:
        layer.init_params(specs(), "with num_output 2")
    assert str(info.value) == ("layer 'fc' (type InnerProduct): InnerProduct with num_output 2 needs parameter "
                               "blob 1 (stat) of shape (4,), but it has shape (4, 1)")
    assert info.value.layer == "fc" and info.value.layer_type == "InnerProduct"


# -- through real layers' setup and a net ------------------------------------------------------------------------

def test_inner_product_setup_checks_given_blobs():
    layer = ip('inner_product_param { transpose: true } blobs { shape { dim: 2 dim: 3 } } blobs { shape { dim: 2 } }')
    with pytest.raises(CaffeishError, match=r"InnerProduct with num_output 2, K 3, transpose true and bias_term "
                                            r"true needs parameter blob 0 \(weights\) of shape \(3, 2\), but it has "
                                            r"shape \(2, 3\)"):
        layer.setup([blob((4, 3))], empty())


def test_lstm_setup_names_caffes_blob_in_the_error():
    layer = make_layer('name: "lstm" type: "LSTM" recurrent_param { num_output: 2 } '
                       'blobs { shape { dim: 8 dim: 3 } } blobs { shape { dim: 8 } } blobs { shape { dim: 8 dim: 3 } }')
    with pytest.raises(CaffeishError, match=r"LSTM with num_output 2, input size 3 needs parameter blob 2 \(W_hc\) "
                                            r"of shape \(8, 2\), but it has shape \(8, 3\)"):
        layer.setup([blob((4, 1, 3)), blob(numpy.ones((4, 1)))], empty())


def test_a_net_reports_the_error_once_attributed_to_the_layer():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 5 dim: 3 } } }
    layer { name: "emb" type: "Embed" bottom: "x" top: "y"
            embed_param { num_output: 2 input_dim: 3 } blobs { shape { dim: 3 dim: 2 } } }
    """
    with pytest.raises(CaffeishError) as info:
        Net(parse_text(text, caffe_pb2.NetParameter()), caffeish.TEST)
    assert str(info.value) == ("layer 'emb' (type Embed): Embed with input_dim 3, num_output 2 and bias_term true "
                               "needs 2 parameter blobs (weights (3, 2), bias (2,)), but the layer has 1, of shapes "
                               "[(3, 2)]")


# -- forward / backward dispatch by array type ------------------------------------------------------------------
class _Twin(caffeish.layer.Layer):
    """Records which per-device method ran."""
    def __init__(self, param, dtype=numpy.float64, gpu_methods=True):
        super().__init__(param, dtype=dtype)
        self.calls, self.gpu_methods = [], gpu_methods

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        self.calls.append("forward_cpu")

    def backward_cpu(self, top, propagate_down, bottom):
        self.calls.append("backward_cpu")

    def forward_gpu(self, bottom, top):
        if not self.gpu_methods:
            return super().forward_gpu(bottom, top)
        self.calls.append("forward_gpu")

    def backward_gpu(self, top, propagate_down, bottom):
        if not self.gpu_methods:
            return super().backward_gpu(top, propagate_down, bottom)
        self.calls.append("backward_gpu")


class _NotNumpy:
    """Stands for CuPy where there is none: ``get_array_module`` answers it for every array."""


@pytest.mark.parametrize("gpu_methods", [True, False])
def test_forward_and_backward_pick_the_device_method_by_array_type(monkeypatch, gpu_methods):
    param = caffe_pb2.LayerParameter(name="twin", type="Twin")
    layer = _Twin(param, gpu_methods=gpu_methods)
    x, top = blob((2, 3)), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    layer.Backward(top, [True], [x])
    assert layer.calls == ["forward_cpu", "backward_cpu"]
    monkeypatch.setattr(caffeish.layer, "get_array_module", lambda array: _NotNumpy)
    layer.calls.clear()
    layer.Forward([x], top)
    layer.Backward(top, [True], [x])
    # without GPU methods of its own a layer runs its CPU code on the GPU's arrays (Caffe's fallback)
    assert layer.calls == (["forward_gpu", "backward_gpu"] if gpu_methods else ["forward_cpu", "backward_cpu"])


def test_a_layer_without_forward_says_which_methods_are_missing():
    class Empty(caffeish.layer.Layer):
        def reshape(self, bottom, top):
            top[0].reshape(bottom[0].shape)
    layer = Empty(caffe_pb2.LayerParameter(name="e", type="Empty"))
    x, top = blob((2,)), empty()
    layer.setup([x], top)
    with pytest.raises(NotImplementedError, match="Empty overrides neither forward nor forward_cpu"):
        layer.Forward([x], top)
