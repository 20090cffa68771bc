"""HDF5Output: every forward appends its bottoms to datasets 'data' and 'label', flushed."""
import h5py
import numpy
import pytest

from caffeish import CaffeishError, Net, caffe_pb2
from gradient_check import checks_forward
from helpers import blob, make_layer


def output_layer(path, dtype=numpy.float32):
    return make_layer(f'type: "HDF5Output" bottom: "data" bottom: "label" '
                      f'hdf5_output_param {{ file_name: "{path}" }}', dtype=dtype)


@checks_forward("HDF5Output")
def test_hdf5_output_appends_each_forward(tmp_path):
    path = tmp_path / "out.h5"
    layer = output_layer(path)
    rng = numpy.random.default_rng(0)
    batches = [(rng.normal(size=(3, 2, 4)), rng.integers(0, 5, 3)) for _ in range(3)]
    data, label = blob(batches[0][0], dtype=numpy.float32), blob(batches[0][1], dtype=numpy.float32)
    layer.setup([data, label], [])
    for i, (d, lab) in enumerate(batches):
        data.data[...], label.data[...] = d, lab
        layer.Forward([data, label], [])
        with h5py.File(path, "r") as f:  # flushed: readable while the layer still has it open
            assert f["data"].shape == (3 * (i + 1), 2, 4) and f["label"].shape == (3 * (i + 1),)
    layer.close()
    with h5py.File(path, "r") as f:
        assert f["data"].dtype == numpy.float32
        numpy.testing.assert_allclose(f["data"][()], numpy.concatenate([d for d, _ in batches]), rtol=1e-6)
        numpy.testing.assert_array_equal(f["label"][()], numpy.concatenate([lab for _, lab in batches]))
    assert not layer.has_backward


def test_hdf5_output_truncates_at_setup(tmp_path):
    path = tmp_path / "out.h5"
    with h5py.File(path, "w") as f:
        f["old"] = numpy.zeros(2)
    layer = output_layer(path, dtype=numpy.float64)
    d, lab = blob(numpy.ones((2, 3))), blob(numpy.zeros(2))
    layer.setup([d, lab], [])
    layer.Forward([d, lab], [])
    layer.close()
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["data", "label"] and f["data"].dtype == numpy.float64


def test_hdf5_output_errors(tmp_path):
    layer = output_layer(tmp_path / "out.h5")
    d, lab = blob(numpy.ones((2, 3))), blob(numpy.zeros(3))
    with pytest.raises(CaffeishError, match="same number of rows"):
        layer.setup([d, lab], [])
    layer.close()
    with pytest.raises(CaffeishError, match="folder .* does not exist"):
        output_layer(tmp_path / "no" / "out.h5").setup([blob(numpy.ones((2, 3))), blob(numpy.zeros(2))], [])
    with pytest.raises(CaffeishError, match="file_name is not set"):
        make_layer('type: "HDF5Output"').setup([blob(numpy.ones((2, 3))), blob(numpy.zeros(2))], [])
    layer = output_layer(tmp_path / "o2.h5")
    d, lab = blob(numpy.ones((2, 3))), blob(numpy.zeros(2))
    layer.setup([d, lab], [])
    layer.Forward([d, lab], [])
    d.reshape(2, 4)
    with pytest.raises(CaffeishError, match=r"rows of shape \(4,\).*dataset 'data' have \(3,\)"):
        layer.Forward([d, lab], [])
    layer.close()


def test_hdf5_output_in_a_net(tmp_path):
    path = tmp_path / "net_out.h5"
    net = Net(f"""
        layer {{ name: "in" type: "DummyData" top: "x" top: "y"
                dummy_data_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 }}
                                    data_filler {{ type: "uniform" }} data_filler {{ type: "constant" value: 2 }} }} }}
        layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "y"
                hdf5_output_param {{ file_name: "{path}" }} }}
        """, caffe_pb2.TEST)
    net.forward()
    first = net.blobs["x"].data.copy()
    net.forward()
    net.layers[-1].close()
    with h5py.File(path, "r") as f:
        assert f["data"].shape == (8, 3)
        numpy.testing.assert_array_equal(f["data"][:4], first)
        assert (f["label"][()] == 2).all()
