"""Several replicas in one process (``caffeish.parallel.MultiDeviceSolver``): N replicas == one solver with iter_size N.

The CPU tests run the same trainer as ``caffeish train --gpu 0,1`` with CPU replicas and the host reducer; the GPU
test runs it on two GPUs with NCCL.  Data order (see caffeish.parallel.replicas): one solver with batch 4 and
iter_size 2 reads records 0-3 and 4-7 in iteration 0; replica 0 of 2 reads records 0, 2, 4, 6 and replica 1
records 1, 3, 5, 7.  The iteration sums the gradients of the same eight records and divides by 2 either way.
"""
import os
import subprocess
import sys

import h5py
import lmdb
import numpy
import pytest

import caffeish
from caffeish import backend
from caffeish import io as cio
from caffeish.parallel import MultiDeviceSolver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDS = 20  # not a multiple of 8: epochs end inside iterations
NET = """
name: "small"
layer {{ name: "data" {source} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


def images():
    rng = numpy.random.default_rng(3)
    return rng.integers(0, 256, size=(RECORDS, 1, 10, 10)).astype(numpy.uint8), numpy.arange(RECORDS) % 3


def lmdb_source(tmp_path):
    data, labels = images()
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(RECORDS):
            txn.put(f"{i:08d}".encode(), cio.array_to_datum(data[i], int(labels[i])).SerializeToString())
    env.close()
    return ('type: "Data" top: "data" top: "label" transform_param { scale: 0.00390625 } '
            f'data_param {{ source: "{tmp_path / "db"}" batch_size: 4 backend: LMDB }}')


def hdf5_source(tmp_path):
    data, labels = images()
    names = []
    for k, rows in enumerate((slice(0, 13), slice(13, RECORDS))):
        with h5py.File(tmp_path / f"part{k}.h5", "w") as f:
            f["data"] = data[rows].astype(numpy.float32) / 255
            f["label"] = labels[rows].astype(numpy.float32)
        names.append(str(tmp_path / f"part{k}.h5"))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    return ('type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 4 shuffle: true }}')


SOURCES = {"lmdb": lmdb_source, "hdf5": hdf5_source}


def write_solver(tmp_path, source, name="solver.prototxt", **fields):
    if not (tmp_path / "net.prototxt").exists():
        (tmp_path / "net.prototxt").write_text(NET.format(source=SOURCES[source](tmp_path)))
    base = dict(net='"net.prototxt"', base_lr=0.05, momentum=0.9, weight_decay=0.0005, lr_policy='"step"',
                gamma=0.5, stepsize=2, max_iter=5, display=1, random_seed=11,
                snapshot_prefix=f'"{tmp_path / "snap"}"')
    base.update(fields)
    path = tmp_path / name
    path.write_text("\n".join(f"{k}: {v}" for k, v in base.items()) + "\n")
    return str(path)


def weights(net):
    return [backend.to_cpu(b.data).copy() for b in net.learnable_params]


def single(solver_path, iters):
    s = caffeish.get_solver(solver_path)
    try:
        s.step(iters)
        return weights(s.net), s
    finally:
        s.net.close()


def assert_close(a, b, rtol=1e-4, atol=1e-6):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        numpy.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"parameter {i}")


pytestmark = pytest.mark.usefixtures("restore_cpu_mode")  # the tests switch to the GPU


@pytest.mark.parametrize("source", ["lmdb", "hdf5"])
@pytest.mark.parametrize("replicas,iter_size", [(2, 1), (3, 1), (2, 2)])
def test_cpu_replicas_equal_one_solver_with_iter_size(tmp_path, source, replicas, iter_size):
    path = write_solver(tmp_path, source, iter_size=iter_size)
    reference = write_solver(tmp_path, source, "reference.prototxt", iter_size=replicas * iter_size)
    expected, _ = single(reference, 5)
    with MultiDeviceSolver(path, ["cpu"] * replicas) as md:
        before = weights(md.net)
        md.step(5)
        assert md.iter == 5
        assert md.same_weights()
        got = weights(md.net)
    assert any(not numpy.allclose(b, g) for b, g in zip(before, got)), "the weights did not move"
    assert_close(got, expected)


def test_threads_give_what_one_thread_gives(tmp_path):
    path = write_solver(tmp_path, "lmdb")
    with MultiDeviceSolver(path, ["cpu", "cpu"]) as md:
        assert not md.threads
        md.step(4)
        sequential = weights(md.net)
    with MultiDeviceSolver(path, ["cpu", "cpu"], threads=True) as md:
        md.step(4)
        assert md.same_weights()
        threaded = weights(md.net)
    assert_close(threaded, sequential, rtol=1e-6, atol=1e-7)


def test_replicas_read_disjoint_shards(tmp_path):
    path = write_solver(tmp_path, "hdf5")
    with MultiDeviceSolver(path, ["cpu", "cpu"]) as md:
        md.step(1)
        labels = [backend.to_cpu(r.net.blobs["label"].data).copy() for r in md.replicas]
        data = [backend.to_cpu(r.net.blobs["data"].data).copy() for r in md.replicas]
        assert [r.net.layers[0].shard for r in md.replicas] == [(0, 2), (1, 2)]
    assert not numpy.array_equal(data[0], data[1])
    assert all(len(x) == 4 for x in labels)


@pytest.mark.parametrize("source", ["lmdb", "hdf5"])
def test_snapshot_of_replicas_resumes(tmp_path, source):
    path = write_solver(tmp_path, source, max_iter=6, snapshot=3)
    with MultiDeviceSolver(path, ["cpu", "cpu"]) as md:
        md.solve()
        straight = weights(md.net)
    state = tmp_path / "snap_iter_3.solverstate"
    assert state.exists() and (tmp_path / "snap_iter_6.caffemodel").exists()
    with MultiDeviceSolver(path, ["cpu", "cpu"]) as md:  # the same replicas pick up where the snapshot stood
        md.restore(str(state))
        assert md.iter == 3 and all(r.iter == 3 for r in md.replicas) and md.same_weights()
        md.step(3)
        resumed = weights(md.net)
    assert_close(resumed, straight, rtol=1e-6, atol=1e-7)
    reference = write_solver(tmp_path, source, "reference.prototxt", max_iter=6, iter_size=2)
    s = caffeish.get_solver(reference)  # and so does one solver with iter_size 2
    try:
        s.restore(str(state))
        s.step(3)
        assert_close(weights(s.net), straight)
    finally:
        s.net.close()


def test_bad_device_lists(tmp_path):
    path = write_solver(tmp_path, "lmdb")
    with pytest.raises(caffeish.CaffeishError, match="mix CPU and GPU"):
        MultiDeviceSolver(path, ["cpu", 0])
    with pytest.raises(caffeish.CaffeishError, match="neither a GPU id nor 'cpu'"):
        MultiDeviceSolver(path, ["cpu", "tpu"])
    with pytest.raises(caffeish.CaffeishError, match="needs GPU replicas"):
        MultiDeviceSolver(path, ["cpu", "cpu"], reducer="nccl")


def gpu_count():
    return backend.cupy.cuda.runtime.getDeviceCount() if backend.gpu_available() else 0


@pytest.mark.skipif(gpu_count() >= 2, reason="this machine has 2 GPUs: --gpu 0,1 trains there")
def test_cli_gpus_without_enough_devices_is_one_clear_paragraph(tmp_path):
    path = write_solver(tmp_path, "lmdb")
    proc = subprocess.run([sys.executable, "-m", "caffeish", "train", "--solver", path, "--gpu", "0,1"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("caffeish: error:")]
    assert len(errors) == 1, proc.stderr
    assert "--gpu 0,1" in errors[0] and "one replica per GPU" in errors[0]
    if gpu_count() == 0:
        assert "sees none on this machine" in errors[0] and "leave out --gpu" in errors[0]
    else:
        assert "GPU(s) 1 do not exist" in errors[0]
    assert not list(tmp_path.glob("snap_iter_*"))


@pytest.mark.skipif(gpu_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("reducer", ["nccl", "host"])
def test_gpu_replicas_equal_one_gpu_with_iter_size(tmp_path, reducer):
    from caffeish.parallel.local_reducers import nccl_available
    if reducer == "nccl" and not nccl_available():
        pytest.skip("CuPy's NCCL binding (cupy.cuda.nccl) is not available")
    path = write_solver(tmp_path, "lmdb", solver_mode="GPU")
    reference = write_solver(tmp_path, "lmdb", "reference.prototxt", iter_size=2, solver_mode="GPU")
    caffeish.set_mode_gpu()
    caffeish.set_device(0)
    expected, _ = single(reference, 5)
    with MultiDeviceSolver(path, [0, 1], reducer=reducer) as md:
        assert md.reducer.name == reducer.upper() if reducer == "nccl" else md.reducer.name == "host"
        assert md.replicas[1].net.learnable_params[0].data.device.id == 1
        md.step(5)
        assert md.same_weights()
        got = weights(md.net)
    assert_close(got, expected)


@pytest.mark.skipif(gpu_count() < 2, reason="needs 2 CUDA devices")
def test_gpu_cli_trains_on_two_gpus(tmp_path):
    path = write_solver(tmp_path, "lmdb", max_iter=4, snapshot=4)
    proc = subprocess.run([sys.executable, "-m", "caffeish", "train", "--solver", path, "--gpu", "0,1"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Data-parallel training in this process on GPUs 0, 1" in proc.stderr
    assert (tmp_path / "snap_iter_4.caffemodel").exists()
