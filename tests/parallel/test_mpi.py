"""`mpiexec -n 2 caffeish train`: data-parallel training equals one process with iter_size 2; failures end the job.

Each test starts real MPI jobs (``mpiexec``, found on PATH or beside the Python interpreter) on the CPU; the
module is skipped when mpi4py or mpiexec is missing (``.ci/install_mpi.sh`` installs both).

Data order (see caffeish.parallel.replicas): one process with batch 3 and iter_size 2 reads rows 0-2 and 3-5
in iteration 0; rank 0 of 2 reads rows 0, 2, 4 and rank 1 rows 1, 3, 5.  The iteration sums the gradients
of the same six rows and divides by 2 either way, so the weights agree to float rounding.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy
import pytest

import caffeish

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                       reason="mpi4py is not installed (.ci/install_mpi.sh: pip install mpi4py mpich)"),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside python (.ci/install_mpi.sh)"),
]
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1"}
for _name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):  # not a rank ourselves
    ENV.pop(_name, None)

NET = """
layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{list}" batch_size: 3 shuffle: true }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "h"
        inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
{extra}
layer {{ name: "ip2" type: "InnerProduct" bottom: "{ip2_bottom}" top: "y"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "label" top: "l" }}
"""

FAULTY = '''
import os, signal, time
from mpi4py import MPI
import caffeish

class Faulty(caffeish.Layer):
    """Passes its bottom through; on one rank, at one forward, raises, kills its process or hangs."""
    def setup(self, bottom, top):
        mode, rank, at = self.param_str.split()
        self.mode, self.rank, self.at, self.calls = mode, int(rank), int(at), 0
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        self.calls += 1
        if MPI.COMM_WORLD.Get_rank() == self.rank and self.calls == self.at:
            if self.mode == "raise":
                raise ValueError("a deliberate failure")
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(300)
        top[0].data[...] = bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


def mpiexec_args(n):
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    extra = []
    if "Open MPI" in version or "OpenRTE" in version:  # more ranks than cores; root in containers
        extra = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [MPIEXEC, "-n", str(n), *extra]


def mpi_train(n, *args, timeout=60, check=True):
    start = time.monotonic()
    proc = subprocess.run([*mpiexec_args(n), sys.executable, "-m", "caffeish", "train", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    proc.seconds = time.monotonic() - start
    return proc


def write_data(folder):
    """Two files (13 and 10 rows), each row distinct: a linear map to learn."""
    rng = numpy.random.default_rng(0)
    teacher = rng.standard_normal((5, 2))
    names = []
    for k, rows in enumerate((13, 10)):
        x = rng.standard_normal((rows, 5)).astype(numpy.float32)
        with h5py.File(folder / f"part{k}.h5", "w") as f:
            f["data"] = x
            f["label"] = (x @ teacher).astype(numpy.float32)
        names.append(str(folder / f"part{k}.h5"))
    (folder / "list.txt").write_text("\n".join(names) + "\n")


def write_solver(folder, name, iter_size=1, faulty=None, **fields):
    extra, bottom = "", "h"
    if faulty:
        (folder / "faulty.py").write_text(FAULTY)
        extra = ('layer { name: "f" type: "Python" bottom: "h" top: "hf" '
                 f'python_param {{ module: "faulty" layer: "Faulty" param_str: "{faulty}" }} }}')
        bottom = "hf"
    (folder / f"{name}_net.prototxt").write_text(NET.format(list=folder / "list.txt", extra=extra, ip2_bottom=bottom))
    base = dict(net=f'"{name}_net.prototxt"', base_lr=0.02, momentum=0.9, lr_policy='"fixed"', max_iter=8,
                snapshot=4, display=2, random_seed=3, iter_size=iter_size, solver_mode="CPU",
                snapshot_prefix=f'"{folder / name}"')
    base.update(fields)
    path = folder / f"{name}.prototxt"
    path.write_text("\n".join(f"{k}: {v}" for k, v in base.items()) + "\n")
    return str(path)


def weights(folder, name, model):
    net = caffeish.Net(str(folder / f"{name}_net.prototxt"), str(model), caffeish.TEST)
    out = [b.data.copy() for blobs in net.params.values() for b in blobs]
    net.close()
    return out


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        numpy.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def train_here(solver_path, snapshot=None):
    """One process, in this process (quicker than a subprocess)."""
    s = caffeish.get_solver(solver_path)
    try:
        s.solve(snapshot)
    finally:
        s.net.close()
        for net in s.test_nets:
            net.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-rank run and a one-process iter_size 2 run of the same 8 iterations, snapshots at 4 and 8."""
    folder = tmp_path_factory.mktemp("mpi")
    write_data(folder)
    two = write_solver(folder, "two", iter_size=1, test_iter=1, test_interval=4)
    one = write_solver(folder, "one", iter_size=2, test_iter=1, test_interval=4)
    log = mpi_train(2, "--solver", two).stderr
    train_here(one)
    return folder, log


def test_two_ranks_end_with_the_weights_of_one_process_with_iter_size_2(runs):
    folder, _ = runs
    for it in (4, 8):
        assert_same_weights(weights(folder, "two", folder / f"two_iter_{it}.caffemodel"),
                            weights(folder, "one", folder / f"one_iter_{it}.caffemodel"))


def test_rank_0_alone_logs_tests_and_snapshots(runs):
    folder, log = runs
    assert "Effective batch: 2 ranks x batch_size 3 x iter_size 1 = 6 (as one process with iter_size 2)" in log
    assert "TRAIN data layer d (HDF5Data) is sharded: rank r reads records r, r+2, r+4" in log
    assert "Rank 0 alone logs, runs the test nets and writes the snapshots; rank 1 only trains" in log
    assert log.count("Solver scaffolding done.") == 1 and "[rank 1/2]" not in log
    assert log.count("Iteration 4, Testing net (#0)") == 1
    assert log.count("Snapshotting solver state") == 2
    assert "The weights differ between ranks" not in log


def test_resume_with_another_number_of_ranks(runs, tmp_path):
    folder, _ = runs
    expected = weights(folder, "one", folder / "one_iter_8.caffemodel")
    # The 2-rank snapshot resumed by one process with iter_size 2: its readers restart at the global position.
    again = write_solver(folder, "again", iter_size=2, snapshot_prefix=f'"{tmp_path / "again"}"')
    train_here(again, str(folder / "two_iter_4.solverstate"))
    assert_same_weights(weights(folder, "again", tmp_path / "again_iter_8.caffemodel"), expected)
    # And the one-process snapshot resumed by 2 ranks.
    mpi_again = write_solver(folder, "mpi_again", snapshot_prefix=f'"{tmp_path / "mpi_again"}"')
    log = mpi_train(2, "--solver", mpi_again, "--snapshot", str(folder / "one_iter_4.solverstate")).stderr
    assert "Resuming from" in log
    assert_same_weights(weights(folder, "mpi_again", tmp_path / "mpi_again_iter_8.caffemodel"), expected)


def test_a_rank_that_raises_ends_the_job_with_rank_0_naming_it(tmp_path):
    write_data(tmp_path)
    solver = write_solver(tmp_path, "f", faulty="raise 1 3", max_iter=50)
    proc = mpi_train(2, "--solver", solver, check=False)
    assert proc.returncode != 0 and proc.seconds < 30
    assert "rank 1 of 2 failed: ValueError: a deliberate failure. Ending the job (MPI_Abort)." in proc.stderr


def test_an_error_on_rank_0_alone_ends_the_job(tmp_path):
    write_data(tmp_path)
    solver = write_solver(tmp_path, "s")
    proc = mpi_train(2, "--solver", solver, "--snapshot", str(tmp_path / "missing.solverstate"), check=False)
    assert proc.returncode != 0 and proc.seconds < 30
    assert "rank 0 of 2 failed: the solver state" in proc.stderr and "does not exist" in proc.stderr


def test_a_killed_rank_ends_the_job(tmp_path):
    write_data(tmp_path)
    solver = write_solver(tmp_path, "k", faulty="kill 1 3", max_iter=50)
    proc = mpi_train(2, "--solver", solver, check=False)
    assert proc.returncode != 0 and proc.seconds < 30  # the launcher ends the job when a process dies


def test_a_hung_rank_ends_the_job_after_the_timeout(tmp_path):
    write_data(tmp_path)
    solver = write_solver(tmp_path, "h", faulty="hang 1 3", max_iter=50)
    proc = mpi_train(2, "--solver", solver, "--mpi-timeout", "2", check=False)
    assert proc.returncode != 0 and proc.seconds < 30
    assert "the gradient all-reduce did not complete within 2 s (--mpi-timeout)" in proc.stderr


def test_ctrl_c_stops_every_rank_at_the_same_iteration(tmp_path):
    write_data(tmp_path)
    solver = write_solver(tmp_path, "c", max_iter=10 ** 7, display=1000, snapshot=0)
    proc = subprocess.Popen([*mpiexec_args(2), sys.executable, "-m", "caffeish", "train", "--solver", solver],
                            cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if "Iteration 1000 (" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)  # mpiexec passes it to every rank
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Optimization stopped early." in rest and "Snapshotting solver state" in rest
