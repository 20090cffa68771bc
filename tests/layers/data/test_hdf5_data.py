"""HDF5Data: several files, rows across file boundaries, shuffle (each row once per epoch), resume, errors."""
import json
import os

import numpy
import pytest

import caffeish
from caffeish import CaffeishError, Net, caffe_pb2
from gradient_check import checks_forward
from helpers import empty, make_layer


def make_files(hdf5_source, rows=(4, 3, 5), shape=(2, 3)):
    """Files whose row r of the whole sequence holds value r everywhere (label r too); list with relative names."""
    files, start = {}, 0
    for i, n in enumerate(rows):
        ids = numpy.arange(start, start + n)
        files[f"part{i}.h5"] = {"data": numpy.broadcast_to(ids.reshape((n,) + (1,) * len(shape)), (n,) + shape)
                                .astype(numpy.float64), "label": ids.astype(numpy.int32)}
        start += n
    return str(hdf5_source(files, relative=True)), start


def hdf5_layer(opened, source, batch=4, shuffle=False, tops=("data", "label"), prefetch=True, extra=""):
    text = ('name: "h5" type: "HDF5Data" ' + " ".join(f'top: "{t}"' for t in tops) +
            f' hdf5_data_param {{ source: "{source}" batch_size: {batch} shuffle: {str(shuffle).lower()} }} {extra}')
    layer = make_layer(text, dtype=numpy.float32)
    layer.prefetch = prefetch
    opened.append(layer)
    top = empty(len(tops), dtype=numpy.float32)
    layer.setup([], top)
    return layer, top


def labels_of(layer, top, n):
    out = []
    for _ in range(n):
        layer.Forward([], top)
        numpy.testing.assert_array_equal(top[0].data, numpy.broadcast_to(
            top[1].data.reshape((-1,) + (1,) * (top[0].num_axes - 1)), top[0].shape))
        out.extend(top[1].data.astype(int).tolist())
    return out


@checks_forward("HDF5Data")
def test_hdf5_rows_across_files_in_order(hdf5_source, opened, monkeypatch):
    source, total = make_files(hdf5_source)
    monkeypatch.chdir("/")  # names resolve against the list file's directory
    layer, top = hdf5_layer(opened, source, batch=5)
    assert top[0].shape == (5, 2, 3) and top[1].shape == (5,)
    assert top[0].data.dtype == numpy.float32
    got = labels_of(layer, top, 5)
    assert got == [i % total for i in range(25)]
    assert not layer.has_backward


@checks_forward("HDF5Data")
def test_hdf5_shuffle_sees_every_row_once_per_epoch(hdf5_source, opened):
    source, total = make_files(hdf5_source, rows=(4, 4, 4))
    caffeish.set_random_seed(1)
    layer, top = hdf5_layer(opened, source, batch=3, shuffle=True)
    got = labels_of(layer, top, 12)  # 3 epochs of 12 rows
    epochs = [got[i:i + 12] for i in range(0, 36, 12)]
    for e in epochs:
        assert sorted(e) == list(range(12))
    assert epochs[0] != list(range(12)) and epochs[0] != epochs[1]
    # Caffe shuffles the files and the rows within a file: each file's rows stay together.
    for e in epochs:
        assert sorted({x // 4 for x in e[:4]}) == [e[0] // 4]


def test_hdf5_single_file_reshuffles_each_pass(hdf5_source, opened):
    source = hdf5_source({"one.h5": {"data": numpy.arange(6, dtype=numpy.float32)[:, None], "label": numpy.arange(6)}},
                         "l.txt")
    caffeish.set_random_seed(2)
    layer, top = hdf5_layer(opened, source, batch=6, shuffle=True)
    a, b = labels_of(layer, top, 1), labels_of(layer, top, 1)
    assert sorted(a) == sorted(b) == list(range(6)) and a != b


def test_hdf5_prefetch_and_resume(hdf5_source, opened):
    source, total = make_files(hdf5_source, rows=(5, 2, 6))
    caffeish.set_random_seed(3)
    layer, top = hdf5_layer(opened, source, batch=4, shuffle=True)
    first = labels_of(layer, top, 3)
    state = json.loads(json.dumps(layer.get_state()))
    assert set(state) >= {"seed", "batch", "epoch", "file", "row", "file_order", "row_order"}
    rest = labels_of(layer, top, 6)
    caffeish.set_random_seed(3)
    plain, plain_top = hdf5_layer(opened, source, batch=4, shuffle=True, prefetch=False)
    assert labels_of(plain, plain_top, 9) == first + rest
    resumed, resumed_top = hdf5_layer(opened, source, batch=4, shuffle=True)
    resumed.set_state(state)
    assert labels_of(resumed, resumed_top, 6) == rest


def test_hdf5_other_dataset_names_and_shapes(hdf5_source, opened):
    source = hdf5_source({"a.h5": {"data": numpy.zeros((3, 2)), "label": numpy.zeros(3),
                                   "weights": numpy.arange(12).reshape(3, 4)}}, "l.txt", relative=True)
    layer, top = hdf5_layer(opened, source, batch=2, tops=("weights",))
    assert top[0].shape == (2, 4)
    layer.Forward([], top)
    numpy.testing.assert_array_equal(top[0].data, [[0, 1, 2, 3], [4, 5, 6, 7]])


def test_hdf5_errors(tmp_path, hdf5_source, opened):
    source, _ = make_files(hdf5_source)
    with pytest.raises(CaffeishError, match=r"part0.h5.*no dataset 'nope'"):
        hdf5_layer(opened, source, tops=("data", "nope"))
    (tmp_path / "missing.txt").write_text("part0.h5\nghost.h5\n")
    with pytest.raises(CaffeishError, match=r"missing.txt:\d+: HDF5 file 'ghost.h5' does not exist"):
        hdf5_layer(opened, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(CaffeishError, match="empty.txt: the HDF5 file list names no files"):
        hdf5_layer(opened, tmp_path / "empty.txt")
    with pytest.raises(CaffeishError, match="does not transform data"):
        hdf5_layer(opened, source, extra="transform_param { scale: 2 }")
    hdf5_source({"wide.h5": {"data": numpy.zeros((2, 2, 4)), "label": numpy.zeros(2)}}, list_name=None)
    (tmp_path / "mixed.txt").write_text("part0.h5 wide.h5")
    with pytest.raises(CaffeishError, match=r"wide.h5: dataset 'data' has rows of shape \(2, 4\)"):
        hdf5_layer(opened, tmp_path / "mixed.txt")
    uneven = hdf5_source({"uneven.h5": {"data": numpy.zeros((3, 2)), "label": numpy.zeros(2)}}, "uneven.txt",
                         relative=True)
    with pytest.raises(CaffeishError, match="dataset 'label' has 2 rows but 'data' has 3"):
        hdf5_layer(opened, uneven)
    # A file that goes away after setup: the error comes from the thread, on forward.
    layer, top = hdf5_layer(opened, source, batch=4)
    os.remove(tmp_path / "part1.h5")
    layer.Forward([], top)
    with pytest.raises(CaffeishError, match=r"layer 'h5'.*reading batch 1 failed.*part1.h5"):
        layer.Forward([], top)


def test_hdf5_data_in_a_net(hdf5_source, opened):
    rng = numpy.random.default_rng(0)
    source = hdf5_source({"t.h5": {"data": rng.normal(size=(10, 4)).astype(numpy.float32),
                                   "label": rng.integers(0, 3, 10)}}, "l.txt", relative=True)
    net = Net(f"""
        layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
                hdf5_data_param {{ source: "{source}" batch_size: 5 }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
        """, caffe_pb2.TRAIN)
    opened.append(net)
    for _ in range(3):
        assert numpy.isfinite(float(net.forward()["loss"]))
