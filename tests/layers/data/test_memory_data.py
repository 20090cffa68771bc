"""MemoryData: arrays from set_input_arrays served batch by batch, wrapping; AddDatumVector with transforms."""
import numpy
import pytest

import caffeish
from caffeish import CaffeishError, Net, caffe_pb2
from caffeish import io as cio
from gradient_check import checks_forward
from helpers import empty, make_layer


def memory_layer(batch=2, c=1, h=2, w=3, extra="", phase=caffe_pb2.TRAIN):
    layer = make_layer(f'type: "MemoryData" memory_data_param {{ batch_size: {batch} channels: {c} height: {h} '
                       f'width: {w} }} {extra}', dtype=numpy.float32, phase=phase)
    top = empty(2, dtype=numpy.float32)
    layer.setup([], top)
    return layer, top


@checks_forward("MemoryData")
def test_memory_data_serves_batches_and_wraps():
    layer, top = memory_layer()
    assert top[0].shape == (2, 1, 2, 3) and top[1].shape == (2,)
    data = numpy.arange(6 * 6, dtype=numpy.float32).reshape(6, 1, 2, 3)
    labels = numpy.arange(6, dtype=numpy.float32) * 10
    layer.set_arrays(data, labels)
    for step in range(5):
        layer.Forward([], top)
        i = (2 * step) % 6
        numpy.testing.assert_array_equal(top[0].data, data[i:i + 2])
        numpy.testing.assert_array_equal(top[1].data, labels[i:i + 2])
    assert not layer.has_backward


def test_memory_data_labels_as_n1111_and_state():
    layer, top = memory_layer()
    data = numpy.random.default_rng(0).normal(size=(4, 1, 2, 3))
    layer.set_arrays(data, numpy.arange(4).reshape(4, 1, 1, 1))
    layer.Forward([], top)
    state = layer.get_state()
    assert state == {"type": "MemoryData", "pos": 2}
    other, other_top = memory_layer()
    other.set_state(state)  # before the arrays arrive: kept for them
    other.set_arrays(data, numpy.arange(4))
    other.Forward([], other_top)
    numpy.testing.assert_array_equal(other_top[1].data, [2, 3])
    with pytest.raises(CaffeishError, match="position 3 does not fit batches of 2"):
        other.set_state({"pos": 3})


def test_memory_data_errors():
    layer, top = memory_layer()
    with pytest.raises(CaffeishError, match="no data yet: call Net.set_input_arrays"):
        layer.Forward([], top)
    with pytest.raises(CaffeishError, match=r"number of examples \(3\) must be a multiple of the batch size \(2\)"):
        layer.set_arrays(numpy.zeros((3, 1, 2, 3)), numpy.zeros(3))
    with pytest.raises(CaffeishError, match=r"data array has shape \(4, 1, 3, 2\).*takes \(N, 1, 2, 3\)"):
        layer.set_arrays(numpy.zeros((4, 1, 3, 2)), numpy.zeros(4))
    with pytest.raises(CaffeishError, match=r"labels have shape \(3,\); give one label per example, shape \(4,\)"):
        layer.set_arrays(numpy.zeros((4, 1, 2, 3)), numpy.zeros(3))
    with pytest.raises(CaffeishError, match="positive batch_size, channels, height and width"):
        memory_layer(c=0)


def test_add_datum_vector_transforms_like_caffe():
    layer, top = memory_layer(batch=2, c=3, h=2, w=2, phase=caffe_pb2.TEST,
                              extra="transform_param { crop_size: 2 mean_value: 5 scale: 2 }")
    rng = numpy.random.default_rng(1)
    ims = [rng.integers(0, 256, size=(3, 4, 4)).astype(numpy.uint8) for _ in range(4)]
    layer.add_datum_vector([cio.array_to_datum(im, i) for i, im in enumerate(ims)])
    with pytest.raises(CaffeishError, match="until the current data has been consumed"):
        layer.add_datum_vector([cio.array_to_datum(im, 0) for im in ims[:2]])
    layer.Forward([], top)
    numpy.testing.assert_allclose(top[0].data, (numpy.stack(ims[:2])[:, :, 1:3, 1:3].astype(numpy.float32) - 5) * 2)
    numpy.testing.assert_array_equal(top[1].data, [0, 1])
    layer.Forward([], top)  # everything consumed: new data may come
    layer.add_arrays(ims[:2], [7, 8])
    layer.Forward([], top)
    numpy.testing.assert_array_equal(top[1].data, [7, 8])


def test_memory_data_in_a_net_with_set_input_arrays():
    caffeish.set_random_seed(0)
    net = Net("""
        layer { name: "data" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 4 channels: 2 height: 1 width: 3 } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
        """, caffe_pb2.TRAIN)
    rng = numpy.random.default_rng(0)
    data = rng.normal(size=(8, 2, 1, 3)).astype(numpy.float32)
    labels = rng.integers(0, 3, 8).astype(numpy.float32)
    net.set_input_arrays(data, labels)
    for step in range(3):
        assert numpy.isfinite(float(net.forward()["loss"]))
        i = (4 * step) % 8
        numpy.testing.assert_array_equal(net.blobs["data"].data, data[i:i + 4])
        numpy.testing.assert_array_equal(net.blobs["label"].data, labels[i:i + 4])
