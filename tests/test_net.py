"""Net-level behaviour: filtering, splits, in-place, sharing, loss weights, propagate_down, whole-net gradients."""
import logging

import numpy
import pytest

import caffeish
from caffeish import CaffeishError, Net, caffe_pb2
from caffeish.prototxt import parse_text


def net_param(text):
    return parse_text(text, caffe_pb2.NetParameter())


MLP = """
name: "mlp"
layer { name: "in" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "tanh" type: "TanH" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "out"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }
"""


def make(text, phase=caffeish.TRAIN, **kw):
    caffeish.set_random_seed(3)
    return Net(net_param(text), phase, dtype=numpy.float64, **kw)


def fill_inputs(net, seed=0):
    rng = numpy.random.default_rng(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.uniform(-1, 1, net.blobs[name].shape)


def numeric_param_grads(net, step=1e-5):
    grads = []
    for blob in net.learnable_params:
        flat = blob.data.reshape(-1)
        g = numpy.zeros(blob.count)
        for k in range(blob.count):
            v = flat[k]
            flat[k] = v + step
            lp = net.forward_prefilled()
            flat[k] = v - step
            lm = net.forward_prefilled()
            flat[k] = v
            g[k] = (lp - lm) / (2 * step)
        grads.append(g.reshape(blob.shape))
    return grads


def test_whole_net_gradient():
    net = make(MLP)
    fill_inputs(net)
    net.clear_param_diffs()
    net.forward_prefilled()
    net.backward_from_to()
    analytic = [b.diff.copy() for b in net.learnable_params]
    for a, n in zip(analytic, numeric_param_grads(net)):
        numpy.testing.assert_allclose(a, n, rtol=1e-5, atol=1e-7)
    # Gradient with respect to the input too: x needs no backward, so force it.
    assert not net.bottom_need_backward[1][0]


def test_pycaffe_surface():
    net = make(MLP, caffeish.TEST)
    assert net.inputs == ["x", "y"]
    assert net.outputs == ["loss"]
    assert list(net.params) == ["ip1", "ip2"]
    assert net.params["ip1"][0].data.shape == (5, 3)
    assert net.top_names["tanh"] == ["h"] and net.bottom_names["ip2"] == ["h"]
    assert net.layer_dict["ip2"].type == "InnerProduct"
    assert [layer.type for layer in net.layers] == ["Input", "InnerProduct", "TanH", "InnerProduct", "EuclideanLoss"]
    x = numpy.ones((4, 3))
    out = net.forward(x=x, y=numpy.zeros((4, 2)))
    assert set(out) == {"loss"}
    h = numpy.tanh(x @ net.params["ip1"][0].data.T + net.params["ip1"][1].data)
    o = h @ net.params["ip2"][0].data.T + net.params["ip2"][1].data
    assert float(out["loss"]) == pytest.approx((o ** 2).sum() / 8)
    net.blobs["x"].data[...] = 0  # writable
    # forward(end=...) stops early and returns that layer's tops.
    assert set(net.forward(end="ip1")) == {"h"}


def test_phase_level_stage_filtering():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
    layer { name: "test_only" type: "ReLU" bottom: "x" top: "a" include { phase: TEST } }
    layer { name: "not_test" type: "TanH" bottom: "a" top: "b" exclude { phase: TEST } }
    layer { name: "deploy" type: "Sigmoid" bottom: "a" top: "c" include { stage: "deploy" } }
    layer { name: "leveled" type: "Sigmoid" bottom: "a" top: "d" include { min_level: 1 } }
    layer { name: "not_deploy" type: "Sigmoid" bottom: "a" top: "e" include { not_stage: "deploy" } }
    """
    names = lambda net: [layer.name for layer in net.layers]
    train = make(text, caffeish.TRAIN)
    assert names(train)[:3] == ["in", "train_only", "a_train_only_0_split"] or "train_only" in names(train)
    assert "test_only" not in names(train) and "not_test" in names(train)
    assert "deploy" not in names(train) and "leveled" not in names(train) and "not_deploy" in names(train)
    test = make(text, caffeish.TEST, stages=["deploy"], level=1)
    assert "test_only" in names(test) and "not_test" not in names(test)
    assert "deploy" in names(test) and "leveled" in names(test) and "not_deploy" not in names(test)
    for layer in test.layers:
        assert layer.phase == caffeish.TEST


def test_include_and_exclude_together_is_an_error():
    with pytest.raises(CaffeishError, match="either include rules or exclude rules"):
        make('layer { name: "a" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST } }')


def test_split_insertion_and_gradients_sum():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "Sigmoid" bottom: "x" top: "a" }
    layer { name: "b" type: "TanH" bottom: "x" top: "b" }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "x" top: "l" propagate_down: true propagate_down: false }
    """
    net = make(text)
    split = net.layer_dict["x_in_0_split"]
    assert split.type == "Split"
    assert net.top_names["x_in_0_split"] == [f"x_in_0_split_{k}" for k in range(3)]
    assert net.bottom_names["a"] == ["x_in_0_split_0"] and net.bottom_names["loss"][1] == "x_in_0_split_2"
    fill_inputs(net)
    net.forward_prefilled()
    net.backward_from_to()
    x = net.blobs["x"].data
    s = 1 / (1 + numpy.exp(-x)) + numpy.tanh(x)
    ds = (s - x) / 2  # dE/ds for E = sum((s - x)^2) / (2N), N = 2
    sig = 1 / (1 + numpy.exp(-x))
    # force_backward overrides propagate_down (as in Caffe), so the target branch adds -ds.
    expected = ds * (sig * (1 - sig) + 1 - numpy.tanh(x) ** 2) - ds
    numpy.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-10)


def test_in_place_layers_share_the_blob():
    net = make(MLP)
    assert net.top_vecs[2][0] is net.bottom_vecs[2][0]
    assert list(net.blobs) == ["x", "y", "h", "out", "loss"]


def test_weight_sharing_sums_gradients():
    text = """
    layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 4 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "a" top: "c" param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.7 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "c" bottom: "t" top: "l" }
    """
    net = make(text)
    wa, wb = net.params["ip_a"][0], net.params["ip_b"][0]
    assert wa.shares_data_with(wb)
    assert len(net.learnable_params) == 2
    # one record per layer blob; the second layer's point at the first's, and both at the same learnables
    assert [(r.layer_id, r.index, r.learnable, r.owner) for r in net.param_records] == \
        [(1, 0, 0, -1), (1, 1, 1, -1), (2, 0, 0, 0), (2, 1, 1, 1)]
    assert [p.name for p in net.learnables] == ["w", "b"] and net.learnable_params[0] is wa
    fill_inputs(net)
    net.clear_param_diffs()
    net.forward_prefilled()
    net.backward_from_to()
    analytic = [b.diff.copy() for b in net.learnable_params]
    for a, n in zip(analytic, numeric_param_grads(net)):
        numpy.testing.assert_allclose(a, n, rtol=1e-5, atol=1e-8)


def test_shared_multipliers_are_merged_and_must_agree():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { lr_mult: 2 }
            inner_product_param { num_output: 4 } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "a" top: "c" param { name: "w" lr_mult: 3 decay_mult: 0 }
            inner_product_param { num_output: 4 } }
    """
    net = make(text)
    assert net.params_lr == [3.0, 2.0, 1.0] and net.params_weight_decay == [0.0, 1.0, 1.0]
    assert [p.name for p in net.learnables] == ["w", "ip_a[1]", "ip_b[1]"]
    with pytest.raises(CaffeishError, match="layer 'ip_b'.*shared parameter 'w' has lr_mult 5.0 here but 3.0 where"):
        make(text.replace('param { name: "w" } param { lr_mult: 2 }', 'param { name: "w" lr_mult: 3 } '
                          'param { lr_mult: 2 }').replace('lr_mult: 3 decay_mult: 0', 'lr_mult: 5'))


def test_sharing_shape_mismatch_is_clear():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } inner_product_param { num_output: 4 } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "a" top: "c" param { name: "w" } inner_product_param { num_output: 5 } }
    """
    with pytest.raises(CaffeishError, match=r"layer 'ip_b'.*cannot share parameter 'w'"):
        make(text)


def test_loss_weight_scales_loss_and_gradient():
    base = make(MLP)
    weighted = make(MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 2.5 }'))
    for net in (base, weighted):
        fill_inputs(net)
        net.clear_param_diffs()
    l1 = base.forward_prefilled()
    base.backward_from_to()
    l2 = weighted.forward_prefilled()
    weighted.backward_from_to()
    assert l2 == pytest.approx(2.5 * l1)
    numpy.testing.assert_allclose(weighted.params["ip1"][0].diff, 2.5 * base.params["ip1"][0].diff)


def test_loss_top_consumed_elsewhere_keeps_its_weight():
    text = MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 1 }') + \
        'layer { name: "again" type: "TanH" bottom: "loss" top: "t" }'
    net = make(text)
    split = net.layer_dict["loss_loss_0_split"]
    assert split.loss_weights == [1.0, 0.0]
    fill_inputs(net)
    loss = net.forward_prefilled()
    assert loss == pytest.approx(float(net.blobs["loss"].data))


def test_propagate_down_and_need_backward():
    text = MLP.replace('layer { name: "ip2" type: "InnerProduct" bottom: "h"',
                       'layer { name: "ip2" type: "InnerProduct" propagate_down: false bottom: "h"')
    net = make(text)
    assert net.bottom_need_backward[3] == [False]
    # ip1 and tanh no longer receive gradients, so they are skipped.
    assert net.layer_need_backward[1] is False or not net.layer_need_backward[1]
    assert net.layer_need_backward[3]
    fill_inputs(net)
    net.clear_param_diffs()
    net.forward_prefilled()
    net.backward_from_to()
    assert not net.params["ip1"][0].diff.any()
    assert net.params["ip2"][0].diff.any()


def test_layers_not_under_a_loss_skip_backward_unless_forced():
    text = MLP + 'layer { name: "side" type: "InnerProduct" bottom: "x" top: "side" inner_product_param { num_output: 2 } }'
    net = make(text)
    assert not net.layer_need_backward[net._layer_index("side")]
    forced = make("force_backward: true\n" + text)
    assert forced.layer_need_backward[forced._layer_index("side")]
    assert forced.bottom_need_backward[forced._layer_index("ip1")] == [True]
    # Labels never get a gradient, even when forced.
    assert forced.bottom_need_backward[forced._layer_index("loss")] == [True, True]


def test_legacy_input_fields_become_an_input_layer():
    net = make('input: "data" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5 '
               'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }')
    assert net.blobs["data"].shape == (2, 3, 4, 5) and net.inputs == ["data"]
    net = make('input: "a" input_shape { dim: 7 } layer { name: "r" type: "ReLU" bottom: "a" top: "b" }')
    assert net.blobs["a"].shape == (7,)


def test_reshape_propagates_new_input_shape():
    net = make(MLP)
    net.blobs["x"].reshape(6, 3)
    net.blobs["y"].reshape(6, 2)
    net.reshape()
    assert net.blobs["out"].shape == (6, 2)


def test_save_and_copy_from_round_trip(tmp_path):
    net = make(MLP)
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    other = make(MLP.replace("std: 0.5", "std: 2.0"))
    other.copy_from(str(path))
    for a, b in zip(net.learnable_params, other.learnable_params):
        numpy.testing.assert_array_equal(a.data, b.data)
    again = Net(net_param(MLP), str(path), caffeish.TEST, dtype=numpy.float64)
    numpy.testing.assert_array_equal(again.params["ip2"][1].data, net.params["ip2"][1].data)


def test_copy_from_shape_mismatch_names_layer(tmp_path):
    net = make(MLP)
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    other = make(MLP.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(CaffeishError, match="layer 'ip1'.*shape mismatch"):
        other.copy_from(str(path))


def test_debug_info_logs_mean_abs(caplog):
    net = make("debug_info: true\n" + MLP)
    fill_inputs(net)
    with caplog.at_level(logging.INFO, logger="caffeish"):
        net.forward_prefilled()
        net.backward_from_to()
    text = caplog.text
    assert "[Forward] Layer ip1, top blob h data:" in text
    assert "[Forward] Layer ip1, param blob 0 data:" in text
    assert "[Backward] Layer ip2, bottom blob h diff:" in text
    assert "[Backward] Layer ip1, param blob 1 diff:" in text


@pytest.mark.parametrize("text, pattern", [
    ('layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }', r"layer 'r' \(type ReLU\).*unknown bottom blob 'nope'"),
    ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
     'layer { name: "r" type: "ReLU" bottom: "x" bottom: "x" top: "r" }', r"layer 'r'.*exactly 1 bottom"),
    ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
     'layer { name: "bad" type: "Convolutional" bottom: "x" top: "r" }', r"layer 'bad'.*unknown layer type 'Convolutional'.*Convolution"),
    ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
     'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\nlayer { name: "b" type: "ReLU" bottom: "x" top: "y" }',
     r"top blob 'y' is produced by more than one layer"),
    ('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 3 dim: 3 } } }\n'
     'layer { name: "e" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l" }', r"layer 'e' \(type EuclideanLoss\)"),
])
def test_bad_nets_name_the_layer(text, pattern):
    with pytest.raises(CaffeishError, match=pattern):
        make(text)


def test_prototxt_syntax_error_names_file_line_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  typo: "ReLU"\n}\n')
    with pytest.raises(CaffeishError) as err:
        Net(str(path), caffeish.TEST)
    assert f"{path}:4:3" in str(err.value) and "typo" in str(err.value)


def test_python_layer_is_imported_from_the_prototxt_directory(tmp_path, monkeypatch):
    (tmp_path / "double_it.py").write_text(
        "import caffeish\n"
        "class Double(caffeish.Layer):\n"
        "    def setup(self, bottom, top): self.k = float(self.param_str or 2)\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = self.k * bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = self.k * top[0].diff\n")
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "py" type: "Python" bottom: "x" top: "y"\n'
        '        python_param { module: "double_it" layer: "Double" param_str: "3" } }\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    net = Net(str(tmp_path / "net.prototxt"), caffeish.TEST)
    out = net.forward(x=numpy.ones((2, 3), dtype=numpy.float32))
    assert (out["y"] == 3).all()
