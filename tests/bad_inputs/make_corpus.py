"""Write the binary files of the bad-input corpus (run from anywhere: ``python tests/bad_inputs/make_corpus.py``).

The text files (prototxt, solvers, lists) are written by hand; this script makes the binary ones, each
small and damaged in one known way.  ``cases.json`` says what each is run with and what the error says.
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import h5py  # noqa: E402
import lmdb  # noqa: E402
import numpy  # noqa: E402

from caffeish import io as cio  # noqa: E402
from caffeish.net import Net  # noqa: E402
from caffeish.proto import caffe_pb2  # noqa: E402
from caffeish.prototxt import read_net_param  # noqa: E402
from caffeish.weights import save_net_hdf5  # noqa: E402


def out(name):
    return os.path.join(HERE, name)


def write(name, data):
    with open(out(name), "wb") as f:
        f.write(data)


def lmdb_file(name, records):
    """A single-file LMDB (no directory, no lock file) holding ``records`` (key, value) in order."""
    path = out(name)
    for p in (path, path + "-lock"):
        if os.path.exists(p):
            os.unlink(p)
    env = lmdb.open(path, subdir=False, lock=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key, value)
    env.close()
    if os.path.exists(path + "-lock"):
        os.unlink(path + "-lock")


def datum(i):
    return cio.array_to_datum(numpy.full((1, 4, 4), i, numpy.uint8), label=i % 2).SerializeToString()


def main():
    numpy.random.seed(0)
    rng = numpy.random.default_rng(0)
    write("img_ok.png", cio.encode_image(numpy.arange(48, dtype=numpy.uint8).reshape(3, 4, 4), "png"))
    write("mean_garbage.binaryproto", b"\x0a\xff\xff\xff\xff\x0f garbage, not a BlobProto")

    net = Net(out("net_ok.prototxt"), phase=caffe_pb2.TRAIN)
    good = net.to_proto().SerializeToString()
    write("weights_garbage.caffemodel", bytes(rng.integers(0, 256, 200, dtype=numpy.uint8)))
    write("weights_truncated.caffemodel", good[: len(good) // 2])
    with open(out("net_ok.prototxt"), "rb") as f:
        write("weights_text.caffemodel", f.read())
    other = read_net_param(out("net_ok.prototxt"))
    other.layer[2].inner_product_param.num_output = 5
    write("weights_wrong_shape.caffemodel", Net(other, phase=caffe_pb2.TRAIN).to_proto().SerializeToString())
    tmp = tempfile.mkdtemp()
    try:
        h5 = os.path.join(tmp, "w.caffemodel.h5")
        save_net_hdf5(net, h5)
        with open(h5, "rb") as f:
            data = f.read()
        write("weights_damaged.caffemodel.h5", data[: len(data) * 2 // 3])
    finally:
        shutil.rmtree(tmp)

    # solver states: garbage bytes; one of a net with fewer parameters; one whose resume state is damaged
    write("state_garbage.solverstate", b"\x08\x05\x12\xff\xff\xff\x7f not a SolverState")
    state = caffe_pb2.SolverState(iter=4, learned_net="", resume_state_json='{"rng": {"state": [1, 2')
    for blob in net.learnable_params:
        blob.to_proto(state.history.add())
    write("state_bad_json.solverstate", state.SerializeToString())
    fewer = caffe_pb2.SolverState(iter=4, learned_net="")
    fewer.history.add().shape.dim.extend([3])
    write("state_other_net.solverstate", fewer.SerializeToString())
    net.close()

    # databases: values that are not Datums; a good first record then garbage; a truncated file
    lmdb_file("db_not_datum.mdb", [(b"%08d" % i, b"hello, not a Datum %d" % i) for i in range(3)])
    lmdb_file("db_bad_second_record.mdb", [(b"00000000", datum(0)), (b"00000001", b"\xff\xff\xff garbage"),
                                           (b"00000002", datum(2))])
    lmdb_file("db_truncated.mdb", [(b"%08d" % i, datum(i) * 40) for i in range(8)])
    with open(out("db_truncated.mdb"), "r+b") as f:
        f.truncate(os.path.getsize(out("db_truncated.mdb")) // 2)
    with h5py.File(out("h5_no_label.h5"), "w") as f:
        f["data"] = numpy.zeros((4, 1, 2, 2), numpy.float32)
    print(json.dumps(sorted(os.listdir(HERE))))


if __name__ == "__main__":
    main()
