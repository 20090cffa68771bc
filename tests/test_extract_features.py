"""`caffeish extract-features`: Caffe's tools/extract_features -- a trained net's blobs, one Datum per image."""
import os

import h5py
import lmdb
import numpy
import pytest

from caffeish import io as cio
from caffeish.data.db import open_db
from caffeish.net import TEST, Net
from caffeish.proto import caffe_pb2
from helpers import caffeish_in_process, caffeish_run as run


def cli(capsys, *args):
    """(exit code, stderr) of the CLI run in this process."""
    code, _, err = caffeish_in_process(capsys, *args)
    return code, err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = 10
BATCH = 4

NET = """\
name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }}
                      bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "fc" top: "prob" }}
"""




@pytest.fixture
def tiny(tmp_path):
    """(model, weights): a small conv net over an LMDB of 10 images 1 x 4 x 4, and trained-looking weights."""
    rng = numpy.random.default_rng(0)
    source = tmp_path / "images_lmdb"
    db = open_db(source, "lmdb", "w")
    txn = db.transaction()
    for i in range(IMAGES):
        txn.put(b"%08d" % i, cio.array_to_datum(rng.integers(0, 256, (1, 4, 4), dtype=numpy.uint8), i % 3)
                .SerializeToString())
    txn.commit()
    db.close()
    model = tmp_path / "tiny.prototxt"
    model.write_text(NET.format(source=source, batch=BATCH))
    weights = tmp_path / "tiny.caffemodel"
    with Net(str(model), TEST) as net:
        net.save(str(weights))
    return model, weights


def forward_blobs(model, weights, names, batches):
    """The named blobs of each of ``batches`` forward passes, computed here with the Python API."""
    out = {name: [] for name in names}
    with Net(str(model), str(weights), TEST) as net:
        for _ in range(batches):
            net.forward()
            for name in names:
                out[name].append(numpy.array(net.blobs[name].data))
    return {name: numpy.concatenate(arrays) for name, arrays in out.items()}


def read_lmdb(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    return records


def test_features_are_the_forward_blobs_caffe_arguments(tmp_path, tiny):
    model, weights = tiny
    fc_db, conv_db = tmp_path / "fc_features", tmp_path / "conv_features"
    proc = run("extract-features", weights, model, "fc,conv", f"{fc_db},{conv_db}", 3, "lmdb", "CPU")
    assert proc.returncode == 0, proc.stderr
    assert f"LMDB database: {fc_db} (12 records of blob fc, 3 x 1 x 1 each)" in proc.stdout
    assert f"LMDB database: {conv_db} (12 records of blob conv, 2 x 2 x 2 each)" in proc.stdout
    assert "Extracted features of 12 query images for feature blob fc" in proc.stderr
    assert "Successfully extracted the features!" in proc.stderr
    expected = forward_blobs(model, weights, ["fc", "conv"], 3)  # 12 images: the data layer wraps after 10
    assert expected["fc"].shape == (12, 3) and expected["conv"].shape == (12, 2, 2, 2)
    for path, name, shape in ((fc_db, "fc", (3, 1, 1)), (conv_db, "conv", (2, 2, 2))):
        records = read_lmdb(path)
        assert [key for key, _ in records] == [b"%010d" % i for i in range(12)]
        for i, (_, value) in enumerate(records):
            datum = caffe_pb2.Datum.FromString(value)
            assert (datum.channels, datum.height, datum.width) == shape and not datum.data and datum.label == 0
            numpy.testing.assert_allclose(numpy.asarray(datum.float_data, numpy.float32),
                                          expected[name][i].ravel(), rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv_features", "fc_features", "images_lmdb",
                                                          "tiny.caffemodel", "tiny.prototxt"]


def test_hdf5_backend_writes_data_and_label_datasets(tmp_path, tiny, capsys):
    model, weights = tiny
    out = tmp_path / "prob_h5"
    code, err = cli(capsys, "extract-features", weights, model, "prob", out, 2, "--backend", "hdf5")
    assert code == 0, err
    expected = forward_blobs(model, weights, ["prob"], 2)["prob"]
    lines = (out / "list.txt").read_text().splitlines()
    assert lines == [str(out / "data_00000.h5")]  # the final path, not the temporary one
    with h5py.File(lines[0], "r") as f:
        assert f["data"].shape == (8, 3, 1, 1) and f["data"].dtype == numpy.float32
        numpy.testing.assert_allclose(f["data"][:].reshape(8, 3), expected, rtol=1e-6, atol=1e-7)
        numpy.testing.assert_array_equal(f["label"][:], numpy.zeros(8))
    with open_db(out, "hdf5") as db:  # readable as Datums too, in the same order
        first = cio.datum_to_array(cio.parse_datum(next(iter(db))[1]))
        numpy.testing.assert_allclose(first.ravel(), expected[0], rtol=1e-6)
    # Caffe's positional db_type works the same way
    code, err = cli(capsys, "extract-features", weights, model, "prob", tmp_path / "again", 1, "hdf5")
    assert code == 0, err
    assert (tmp_path / "again" / "list.txt").exists()


def test_bad_arguments_are_clear_and_write_nothing(tmp_path, tiny, capsys):
    model, weights = tiny
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run("extract-features", weights, model, "fc,nope", f"{tmp_path / 'a'},{tmp_path / 'b'}", 1)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"unknown feature blob 'nope' in the network {model}; its blobs are: data, label, conv, fc, prob" \
        in proc.stderr
    cases = [
        (("fc,conv", tmp_path / "a", 1), "2 blob(s) (fc, conv) but 1 database(s)"),
        (("fc", tmp_path / "a", 0), "NUM_BATCHES must be a whole number of at least 1"),
        (("fc", tmp_path / "a", -2), "not '-2'"),
        (("fc", tmp_path / "a", "x"), "not 'x'"),
        (("fc", tmp_path / "a", 1, "leveldb"), "writing LevelDB is not supported"),
        (("fc", tmp_path / "a", 1, "rocksdb"), "unknown database type 'rocksdb' (known types: h5, hdf5, leveldb, lmdb)"),
        (("fc", tmp_path / "a", 1, "lmdb", "--backend", "hdf5"), "database type is given twice and differs"),
        (("fc", tmp_path / "a", 1, "lmdb", "TPU"), "CPU or GPU [DEVICE_ID], not 'TPU'"),
        (("fc,conv", f"{tmp_path / 'a'},{tmp_path / 'a'}", 1), f"database {tmp_path / 'a'} is named twice"),
        (("fc,", tmp_path / "a", 1), "has an empty name"),
    ]
    for args, message in cases:
        code, err = cli(capsys, "extract-features", weights, model, *args)
        assert code == 1 and message in err, (args, err)
    code, err = cli(capsys, "extract-features", tmp_path / "missing.caffemodel", model, "fc", tmp_path / "a", 1)
    assert code == 1 and f"the weights file {tmp_path / 'missing.caffemodel'} does not exist" in err
    code, err = cli(capsys, "extract-features", weights, model, "fc", tmp_path / "a", 1, "lmdb", "GPU", 0,
                    "--gpu", 1)
    assert code == 1 and "GPU 0 and --gpu 1 disagree" in err
    from caffeish import backend
    if not backend.gpu_available():  # Caffe's positional GPU [DEVICE_ID] asks for the GPU as --gpu does
        code, err = cli(capsys, "extract-features", weights, model, "fc", tmp_path / "a", 1, "lmdb", "GPU", 0)
        assert code == 1 and "GPU mode" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_existing_database_is_refused_and_kept(tmp_path, tiny, capsys):
    model, weights = tiny
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    code, err = cli(capsys, "extract-features", weights, model, "fc,prob", f"{tmp_path / 'new'},{tmp_path / 'old'}", 1)
    assert code == 1 and f"{tmp_path / 'old'}: already exists; remove it or pass --overwrite" in err
    assert not (tmp_path / "new").exists() and (tmp_path / "old" / "keep.txt").read_text() == "mine"
    code, err = cli(capsys, "extract-features", weights, model, "prob", tmp_path / "old", 1, "--overwrite")
    assert code == 0, err
    assert len(read_lmdb(tmp_path / "old")) == BATCH and not (tmp_path / "old" / "keep.txt").exists()


def test_a_run_failing_midway_leaves_no_database(tmp_path, tiny, capsys):
    """Record 6 is larger than the others: the second batch fails after the first was written."""
    model, weights = tiny
    env = lmdb.open(str(tmp_path / "images_lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"%08d" % 6, cio.array_to_datum(numpy.zeros((1, 5, 5), numpy.uint8), 0).SerializeToString())
    env.close()
    (tmp_path / "prob_db").mkdir()
    (tmp_path / "prob_db" / "keep.txt").write_text("mine")
    code, err = cli(capsys, "extract-features", weights, model, "fc,prob", f"{tmp_path / 'fc_db'},{tmp_path / 'prob_db'}",
                    3, "--overwrite")
    assert code == 1 and "Traceback" not in err
    assert "layer 'data'" in err and "record '00000006' holds an image of shape (1, 5, 5)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_lmdb", "prob_db", "tiny.caffemodel",
                                                          "tiny.prototxt"]
    assert (tmp_path / "prob_db" / "keep.txt").read_text() == "mine"  # the old one, untouched
