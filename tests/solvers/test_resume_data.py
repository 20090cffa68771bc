"""Exact resume with real data readers: shuffled HDF5 rows and randomly cropped, mirrored LMDB images."""
import h5py
import lmdb
import numpy
import pytest

import caffeish
from caffeish import caffe_pb2
from caffeish import io as cio
from caffeish.prototxt import parse_text


def hdf5_source(tmp_path):
    rng = numpy.random.default_rng(0)
    paths = []
    for k in range(2):  # two files, so the shuffle of files and of rows both matter
        path = tmp_path / f"part{k}.h5"
        with h5py.File(path, "w") as f:
            f["data"] = rng.standard_normal((11, 6)).astype(numpy.float32)
            f["label"] = rng.standard_normal((11, 2)).astype(numpy.float32)
        paths.append(str(path))
    (tmp_path / "list.txt").write_text("\n".join(paths) + "\n")
    return f"""
    layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
            hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 4 shuffle: true }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "y"
            inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
    layer {{ name: "drop" type: "Dropout" bottom: "y" top: "y" dropout_param {{ dropout_ratio: 0.3 }} }}
    layer {{ name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "label" top: "l" }}
    """


def lmdb_source(tmp_path):
    rng = numpy.random.default_rng(1)
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(13):
            image = rng.integers(0, 256, size=(3, 8, 8)).astype(numpy.uint8)
            txn.put(f"{i:08d}".encode(), cio.array_to_datum(image, i % 3).SerializeToString())
    env.close()
    return f"""
    layer {{ name: "d" type: "Data" top: "data" top: "label"
            transform_param {{ crop_size: 6 mirror: true scale: 0.0039 mean_value: 120 }}
            data_param {{ source: "{tmp_path / 'db'}" batch_size: 5 backend: LMDB }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "c"
            convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "c" top: "y"
            inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "l" }}
    """


@pytest.mark.parametrize("make_net", [hdf5_source, lmdb_source], ids=["HDF5Data-shuffle", "Data-crop-mirror"])
def test_resume_with_data_readers_is_bitwise_exact(tmp_path, make_net):
    net = make_net(tmp_path)
    prefix = tmp_path / "snap"

    def solver(seed):
        text = (f'base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 9 snapshot: 4 random_seed: {seed} '
                f'snapshot_prefix: "{prefix}" snapshot_after_train: false')
        param = parse_text(text, caffe_pb2.SolverParameter())
        param.net_param.CopyFrom(parse_text(net, caffe_pb2.NetParameter()))
        return caffeish.get_solver(param)

    straight = solver(5)
    straight.solve()
    resumed = solver(77)
    resumed.solve(f"{prefix}_iter_4.solverstate")
    try:
        for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
            numpy.testing.assert_array_equal(a.data, b.data)
        # And the readers stand at the same place: the next batches are the same.
        straight.net.forward_prefilled()
        resumed.net.forward_prefilled()
        numpy.testing.assert_array_equal(straight.net.blobs["data"].data, resumed.net.blobs["data"].data)
    finally:
        straight.net.close()
        resumed.net.close()
