"""Reliability: resource guards, damaged files, faults during writes (a full disk, kill -9), prefetch errors.

The kill -9 tests inject the kill at an exact point (between the .caffemodel and the .solverstate, inside
an atomic write, between the renames of ``convert --overwrite``) by running the real code in a
subprocess whose Python hook sends SIGKILL to itself; bench/faults.py kills at random times instead.
"""
import errno
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy
import pytest

import caffeish
from caffeish import CaffeishError, caffe_pb2
from caffeish.blob import Blob, memory_limit
from caffeish.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
ENV.pop("CAFFEISH_MEMORY_LIMIT", None)

# A student InnerProduct learns a teacher's weights from random inputs (no data files); its snapshots
# are a few KB, so RLIMIT_FSIZE can make them fail.
NET = """
name: "student"
layer { name: "x" type: "DummyData" top: "x"
        dummy_data_param { shape { dim: 8 dim: 40 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "teacher" type: "InnerProduct" bottom: "x" top: "target" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 30 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "student" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 30 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""


def write_solver(tmp_path, **fields):
    (tmp_path / "net.prototxt").write_text(NET)
    base = dict(net='"net.prototxt"', base_lr=0.01, lr_policy='"fixed"', momentum=0.9, max_iter=20, display=0,
                snapshot=5, random_seed=3, solver_mode="CPU", snapshot_after_train="false",
                snapshot_prefix=f'"{tmp_path / "snap"}"')
    base.update(fields)
    path = tmp_path / "solver.prototxt"
    path.write_text("\n".join(f"{k}: {v}" for k, v in base.items()) + "\n")
    return str(path)


def caffeish_cli(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "caffeish", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout, **kw)


def run_python(code, timeout=120, **kw):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout, **kw)


def iterations(directory, ext):
    return sorted(int(f.split("_iter_")[1].split(".")[0]) for f in os.listdir(directory) if f.endswith(ext))


# -- resource guards ---------------------------------------------------------------------------------------------
def test_a_blob_larger_than_memory_is_refused_before_allocating():
    blob = Blob(name="big")
    with pytest.raises(CaffeishError) as err:
        blob.reshape(1000000000, 4096)
    msg = str(err.value)
    assert "blob 'big' of shape (1000000000, 4096) would need 14.9 TiB" in msg and "the machine's memory" in msg
    assert blob.shape == () and blob._data_buf is None


def test_memory_limit_override(monkeypatch):
    for raw, expected in [("2048", 2048), ("512M", 512 << 20), ("1.5G", 3 << 29), ("8gb", 8 << 30), ("1T", 1 << 40)]:
        monkeypatch.setenv("CAFFEISH_MEMORY_LIMIT", raw)
        assert memory_limit()[0] == expected
    monkeypatch.setenv("CAFFEISH_MEMORY_LIMIT", "10M")
    with pytest.raises(CaffeishError, match=r"16.0 MiB .* more than CAFFEISH_MEMORY_LIMIT=10M \(10.0 MiB\)"):
        Blob((4, 1024, 1024))
    Blob((2, 1024, 1024))  # 8 MiB fits
    monkeypatch.setenv("CAFFEISH_MEMORY_LIMIT", "a lot")
    with pytest.raises(CaffeishError, match="is not a size in bytes"):
        Blob((4, 1024, 1024))


def test_typo_in_num_output_names_the_layer_and_the_size():
    text = """layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 64 dim: 100 } } }
              layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1000000000 } }"""
    with pytest.raises(CaffeishError) as err:
        Net(text, phase=caffe_pb2.TEST)
    assert "layer 'fc' (type InnerProduct)" in str(err.value) and "372.5 GiB" in str(err.value)


def test_the_whole_net_is_checked_with_gradients_when_it_learns(monkeypatch):
    text = """name: "three"
              layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 1024 dim: 1536 } } }
              layer { name: "a" type: "ReLU" bottom: "x" top: "y" }
              layer { name: "b" type: "Sigmoid" bottom: "y" top: "z" }"""
    monkeypatch.setenv("CAFFEISH_MEMORY_LIMIT", "30M")
    Net(text, phase=caffe_pb2.TEST).close()  # 18 MiB of data fits
    with pytest.raises(CaffeishError) as err:
        Net("force_backward: true\n" + text, phase=caffe_pb2.TRAIN)  # with the diffs: 36 MiB
    msg = str(err.value)
    assert "net 'three' would need 36.0 MiB for its blobs (data and gradients)" in msg
    assert "the largest blobs: 'x' (1, 1, 1024, 1536) 6.0 MiB" in msg


def _hdf5_files(rows=37, files=2):
    """File k: rows of 3 counting up from 1000 k, labels 1000 k onwards."""
    return {f"f{k}.h5": {"data": numpy.arange(k * 1000, k * 1000 + rows * 3, dtype=numpy.float32).reshape(rows, 3),
                         "label": numpy.arange(rows, dtype=numpy.float32) + 1000 * k} for k in range(files)}


@pytest.mark.parametrize("shuffle", ["false", "true"])
def test_hdf5_files_too_large_for_memory_are_streamed(hdf5_source, monkeypatch, shuffle):
    from caffeish.layers.data import hdf5_data
    source = hdf5_source(_hdf5_files())
    text = f"""layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
                        hdf5_data_param {{ source: "{source}" batch_size: 10 shuffle: {shuffle} }} }}"""

    opened = []
    real_open = hdf5_data._RowsOnDisk.open.__func__
    monkeypatch.setattr(hdf5_data._RowsOnDisk, "open",
                        classmethod(lambda cls, *a: opened.append(a[0]) or real_open(cls, *a)))

    def batches():
        caffeish.set_random_seed(5)
        del opened[:]
        with Net(text, phase=caffe_pb2.TRAIN) as net:
            out = []
            for _ in range(12):  # more than an epoch: wraps around, reloads files
                net.forward()
                out.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
        return out, bool(opened)

    whole, streamed = batches()
    assert not streamed
    monkeypatch.setenv("CAFFEISH_MEMORY_LIMIT", "1600")  # a file's 37 rows take 592 bytes: more than a quarter
    rows, streamed = batches()
    assert streamed
    for (a, b), (c, d) in zip(whole, rows):
        numpy.testing.assert_array_equal(a, c)
        numpy.testing.assert_array_equal(b, d)


def test_compute_mean_reads_a_database_in_pieces(hdf5_source):
    from caffeish.cli.compute_mean import compute_mean
    from caffeish.data.db import open_db
    source = hdf5_source(_hdf5_files(rows=600, files=1))
    with open_db(str(source), "hdf5", "r", batch_rows=64) as db:
        seen = [len(data) for data, _ in db.iter_batches()]
        mean, count = compute_mean(db)
    assert max(seen) == 64 and count == 600


# -- damaged databases -----------------------------------------------------------------------------------------
def _lmdb(path, n=200):
    from caffeish import io as cio
    from caffeish.data.db import open_db
    db = open_db(str(path), "lmdb", "w")
    txn = db.transaction()
    for i in range(n):
        txn.put(b"%08d" % i, cio.array_to_datum(numpy.full((3, 8, 8), i % 256, numpy.uint8), i % 10)
                .SerializeToString())
    txn.commit()
    db.close()
    return path


def test_damaged_lmdb_pages_are_refused_not_fatal(tmp_path):
    """liblmdb aborts the process on a leaf page with bad flags; the page check refuses it first."""
    db = _lmdb(tmp_path / "db")
    data = bytearray((db / "data.mdb").read_bytes())
    data[5 * 4096 + 10] = 0  # the flags of a leaf page
    (db / "data.mdb").write_bytes(data)
    proc = caffeish_cli("compute-mean", str(db))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "is a damaged LMDB: main DB: page 5 has mixed or invalid page flags" in proc.stderr


def test_truncated_lmdb_is_refused_not_fatal(tmp_path):
    """Reading past the end of a cut-short data.mdb would kill the process with SIGBUS."""
    db = _lmdb(tmp_path / "db")
    with open(db / "data.mdb", "r+b") as f:
        f.truncate(os.path.getsize(db / "data.mdb") // 2)
    proc = caffeish_cli("compute-mean", str(db))
    assert proc.returncode == 1 and "is a truncated LMDB" in proc.stderr and "Traceback" not in proc.stderr


# -- a full disk while writing a snapshot --------------------------------------------------------------------------
def _solver(tmp_path, **fields):
    from caffeish.solvers import get_solver
    return get_solver(write_solver(tmp_path, **fields))


def _fail_writes(monkeypatch, ending):
    """Make atomic writes of files whose name ends with ``ending`` fail as a full disk does."""
    from caffeish import prototxt
    real = prototxt.atomic_write_bytes

    def write(path, data):
        if str(path).endswith(ending):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)
    monkeypatch.setattr(prototxt, "atomic_write_bytes", write)


@pytest.mark.parametrize("failing", [".caffemodel", ".solverstate"])
def test_full_disk_stops_training_and_keeps_the_previous_snapshot(tmp_path, monkeypatch, failing):
    solver = _solver(tmp_path)
    solver.step(5)  # snapshot 5 written
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if "_iter_" in f}
    _fail_writes(monkeypatch, failing)
    with pytest.raises(CaffeishError) as err:
        solver.step(5)
    msg = str(err.value)
    assert f"snap_iter_10{failing}: cannot write the snapshot at iteration 10: No space left on device" in msg
    assert "the previous snapshot (" in msg and "snap_iter_5.solverstate) is kept" in msg
    assert "--on-snapshot-error continue" in msg and "--snapshot" in msg
    after = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if "_iter_" in f}
    assert after == before  # no half pair (the orphan model is removed), the old pair untouched
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    monkeypatch.undo()
    fresh = _solver(tmp_path)
    fresh.restore(str(tmp_path / "snap_iter_5.solverstate"))
    assert fresh.iter == 5
    fresh.step(2)


def test_full_disk_with_continue_trains_on(tmp_path, monkeypatch):
    solver = _solver(tmp_path)
    solver.on_snapshot_error = "continue"
    solver.step(5)
    _fail_writes(monkeypatch, ".solverstate")
    records = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    logging.getLogger("caffeish").addHandler(handler)
    try:
        solver.step(10)
    finally:
        logging.getLogger("caffeish").removeHandler(handler)
    assert solver.iter == 15
    failures = [r.getMessage() for r in records if "Snapshot at iteration" in r.getMessage()]
    assert len(failures) == 2 and "No space left on device" in failures[0] and "Training goes on" in failures[0]
    assert iterations(tmp_path, ".solverstate") == [5] and iterations(tmp_path, ".caffemodel") == [5]


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_cli_on_snapshot_error_stop_and_continue_with_a_file_size_limit(tmp_path, fmt):
    # first a clean run to iteration 10 (snapshots 5 and 10), then resume it under a 2 KB file-size limit
    solver = write_solver(tmp_path, snapshot_format=fmt, max_iter=10)
    assert caffeish_cli("train", "-solver", solver).returncode == 0
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = str(tmp_path / f"snap_iter_10{ext}")
    kept = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if "_iter_" in f}
    solver = write_solver(tmp_path, snapshot_format=fmt, max_iter=20)
    stop = caffeish_cli("train", "-solver", solver, "-snapshot", state, preexec_fn=_limit_file_size(2048))
    assert stop.returncode == 1 and "Traceback" not in stop.stderr, stop.stderr[-2000:]
    assert "cannot write the snapshot at iteration 15: File too large" in stop.stderr
    assert f"the previous snapshot ({state}) is kept" in stop.stderr
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if "_iter_" in f} == kept
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    go_on = caffeish_cli("train", "-solver", solver, "-snapshot", state, "--on-snapshot-error", "continue",
                         preexec_fn=_limit_file_size(2048))
    assert go_on.returncode == 0, go_on.stderr[-2000:]
    assert go_on.stderr.count("Training goes on (--on-snapshot-error continue)") == 2  # iterations 15 and 20
    assert "Optimization Done." in go_on.stderr
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if "_iter_" in f} == kept
    resumed = caffeish_cli("train", "-solver", solver, "-snapshot", state)  # the kept snapshot still resumes
    assert resumed.returncode == 0 and iterations(tmp_path, ext)[-1] == 20


# -- kill -9 at the worst moments ------------------------------------------------------------------------------------
KILL_TRAIN = """
import os, signal, sys
from caffeish.cli import main
{hook}
sys.exit(main(["train", "-solver", {solver!r}]))
"""


def _train_killed(solver, hook):
    proc = run_python(KILL_TRAIN.format(solver=solver, hook=textwrap.dedent(hook)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _resume_latest(tmp_path, solver):
    """Resume from the newest .solverstate; returns its iteration."""
    latest = iterations(tmp_path, ".solverstate")[-1]
    proc = caffeish_cli("train", "-solver", solver, "-snapshot", str(tmp_path / f"snap_iter_{latest}.solverstate"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "Optimization Done." in proc.stderr
    return latest


def test_kill_between_the_caffemodel_and_the_solverstate(tmp_path):
    solver = write_solver(tmp_path)
    _train_killed(solver, """
        from caffeish.solvers import snapshot
        real = snapshot.save_solver_state
        def save(solver, model, state, hdf5=False):
            if solver.iter == 15:
                os.kill(os.getpid(), signal.SIGKILL)  # the model of iteration 15 is written, its state is not
            real(solver, model, state, hdf5)
        snapshot.save_solver_state = save
    """)
    assert iterations(tmp_path, ".caffemodel") == [5, 10, 15] and iterations(tmp_path, ".solverstate") == [5, 10]
    state = caffe_pb2.SolverState()
    state.ParseFromString((tmp_path / "snap_iter_10.solverstate").read_bytes())
    assert state.learned_net.endswith("snap_iter_10.caffemodel")  # still names its own model
    assert _resume_latest(tmp_path, solver) == 10
    assert iterations(tmp_path, ".solverstate") == [5, 10, 15, 20]


def test_kill_inside_an_atomic_write_leaves_the_old_file_and_no_litter(tmp_path):
    solver = write_solver(tmp_path)
    _train_killed(solver, """
        from caffeish import atomic
        real = atomic.os.replace
        def replace(src, dst):
            if dst.endswith("_iter_15.solverstate"):
                os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is complete, not yet renamed
            real(src, dst)
        atomic.os.replace = replace
    """)
    litter = [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    assert len(litter) == 1 and iterations(tmp_path, ".solverstate") == [5, 10]
    assert _resume_latest(tmp_path, solver) == 10
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # the next write removed it


def test_kill_at_random_moments_always_leaves_a_resumable_snapshot(tmp_path):
    solver = write_solver(tmp_path, max_iter=100000, snapshot=2)
    for trial, delay in enumerate((0.3, 0.7)):
        proc = subprocess.Popen([sys.executable, "-m", "caffeish", "train", "-solver", solver], cwd=ROOT, env=ENV,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and len(iterations(tmp_path, ".solverstate")) <= trial:
            time.sleep(0.02)
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=30)
        latest = iterations(tmp_path, ".solverstate")[-1]
        with Net(str(tmp_path / "net.prototxt"), phase=caffe_pb2.TEST) as net:
            net.copy_from(str(tmp_path / f"snap_iter_{latest}.caffemodel"))
    resume = write_solver(tmp_path, max_iter=latest + 4, snapshot=2)
    assert _resume_latest(tmp_path, resume) == latest


KILL_CONVERT = """
import os, signal, sys
from caffeish.cli import main
{hook}
sys.exit(main(["convert", "npz", {npz!r}, {db!r}] + {extra!r}))
"""


def _convert_killed(npz, db, hook, extra=()):
    proc = run_python(KILL_CONVERT.format(npz=npz, db=db, extra=list(extra), hook=textwrap.dedent(hook)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _npz(tmp_path, n=50, value=0):
    path = tmp_path / f"arrays{value}.npz"
    numpy.savez(path, data=numpy.full((n, 1, 4, 4), value, numpy.uint8), label=numpy.arange(n) % 3)
    return str(path)


def test_kill_during_convert_leaves_no_database_and_a_rerun_works(tmp_path):
    db = str(tmp_path / "db")
    _convert_killed(_npz(tmp_path), db, """
        from caffeish.data import lmdb_backend
        real = lmdb_backend.LMDB._write
        def write(self, items):
            real(self, items)
            os.kill(os.getpid(), signal.SIGKILL)  # half the records committed
        lmdb_backend.LMDB._write = write
    """)
    assert not os.path.exists(db) and [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    rerun = caffeish_cli("convert", "npz", _npz(tmp_path), db)
    assert rerun.returncode == 0, rerun.stderr
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # the dead build was removed
    assert "(50 records)" in rerun.stdout


def test_kill_between_the_renames_of_convert_overwrite_keeps_the_old_database(tmp_path):
    db = str(tmp_path / "db")
    assert caffeish_cli("convert", "npz", _npz(tmp_path, value=7), db).returncode == 0
    _convert_killed(_npz(tmp_path, value=9), db, extra=["--overwrite"], hook="""
        from caffeish.data import db as dbmod
        real = dbmod.os.rename
        def rename(src, dst):
            if src.endswith(".tmp"):
                os.kill(os.getpid(), signal.SIGKILL)  # the old database is aside, the new one not yet in place
            real(src, dst)
        dbmod.os.rename = rename
    """)
    assert not os.path.exists(db) and [f for f in os.listdir(tmp_path) if f.endswith(".old")]
    mean = caffeish_cli("compute-mean", db)  # reading puts the old, complete database back
    assert mean.returncode == 0, mean.stderr
    assert "Restored" in mean.stderr and "mean_value channel [0]: 7" in mean.stderr
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".old")]
    again = caffeish_cli("convert", "npz", _npz(tmp_path, value=9), db, "--overwrite")
    assert again.returncode == 0 and not [f for f in os.listdir(tmp_path) if f.endswith((".old", ".tmp"))]


# -- prefetch threads: errors arrive at once, nothing left behind -----------------------------------------------------
def test_prefetch_error_reaches_the_main_thread_at_once_and_the_process_exits(tmp_path):
    """A reader failing on its first batch: forward raises within a moment, with the reader's message; a
    process that then exits without closing anything exits at once (no thread keeps it alive)."""
    code = f"""
        import sys, time
        sys.path.insert(0, {os.path.join(ROOT, 'tests', 'layers', 'data')!r})
        from test_prefetch import make
        from caffeish import CaffeishError
        layer, top = make(True, name="flaky", fail_at=0, delay=0.3)
        t = time.time()
        try:
            layer.Forward([], top)
        except CaffeishError as e:
            print("raised after %.2f s: %s" % (time.time() - t, e))
        other, top2 = make(True, name="busy", delay=0.05)  # a healthy thread still running at exit
        other.Forward([], top2)
        raise SystemExit(3)
    """
    start = time.time()
    proc = run_python(code, timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert time.time() - start < 20
    line = proc.stdout.strip()
    assert "layer 'flaky'" in line and "reading batch 0 failed: ValueError: disk on fire" in line
    assert float(line.split("after ")[1].split(" s")[0]) < 2.0


def test_train_with_a_failing_data_layer_exits_cleanly(tmp_path):
    corpus = os.path.join(ROOT, "tests", "bad_inputs")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "caffeish", "train", "-solver", "solver_data_bad_record.prototxt"],
                          cwd=corpus, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "reading batch 0 failed" in proc.stderr and time.time() - start < 30


def test_solver_state_of_hdf5_damage_is_clear(tmp_path):
    solver = _solver(tmp_path, snapshot_format="HDF5")
    solver.step(5)
    path = tmp_path / "snap_iter_5.solverstate.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fresh = _solver(tmp_path, snapshot_format="HDF5")
    with pytest.raises(CaffeishError, match="snap_iter_5.solverstate.h5 is not a readable HDF5 solver state"):
        fresh.restore(str(path))


def test_restore_keeps_the_last_snapshot_for_messages(tmp_path):
    solver = _solver(tmp_path)
    solver.step(5)
    fresh = _solver(tmp_path)
    fresh.restore(str(tmp_path / "snap_iter_5.solverstate"))
    assert fresh.last_snapshot[1].endswith("snap_iter_5.solverstate")
    assert json.loads(caffe_pb2.SolverState.FromString(
        (tmp_path / "snap_iter_5.solverstate").read_bytes()).resume_state_json)["rng"]



# -- escapes the fuzzer found, each closed where the mistake is understood -------------------------------------------
ESCAPES = {
    # (net text, error fragment) -- each raised a raw numpy/Python exception before
    "Exp shift overflows (OverflowError)": (
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
        'layer { name: "e" type: "Exp" bottom: "x" top: "y" exp_param { shift: 1e30 } }', "overflows"),
    "SPP with 10^9 levels (a hang making Blobs)": (
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
        'layer { name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1000000000 } }',
        "pyramid_height 1000000000 is more than 32 levels"),
    "Slice of a scalar on axis 0 (IndexError)": (
        'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 } } }\n'
        'layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "loss" }\n'
        'layer { name: "s" type: "Slice" bottom: "loss" top: "a" top: "b" slice_param { axis: 0 } }',
        "axis 0 is out of range for blob 'loss'"),
    "a loss over scalars (IndexError)": (
        'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 } } }\n'
        'layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "loss" }\n'
        'layer { name: "l2" type: "EuclideanLoss" bottom: "loss" bottom: "loss" top: "loss2" }',
        "is a scalar (shape ()); a loss needs the examples on its first axis"),
    "a loss over no values (ValueError in softmax)": (
        'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 0 dim: 3 } shape { dim: 0 } } }\n'
        'layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss" }',
        "holds no values; a loss needs at least one example"),
    "ArgMax of a scalar (IndexError)": (
        'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 } } }\n'
        'layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "loss" }\n'
        'layer { name: "a" type: "ArgMax" bottom: "loss" top: "m" }', "ArgMax needs a bottom with at least one axis"),
    "Concat in place (ValueError in backward)": (
        'force_backward: true\nlayer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 } } }\n'
        'layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "a" }', "cannot run in place"),
    "Reduction in place (ValueError)": (
        'layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "r" type: "Reduction" bottom: "a" top: "a" reduction_param { axis: 1 } }', "cannot run in place"),
    "uniform filler over an infinite range (OverflowError)": (
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 '
        'weight_filler { type: "uniform" min: -1e308 max: 1e308 } } }', "is not a finite interval"),
}


@pytest.mark.parametrize("case", list(ESCAPES), ids=list(ESCAPES))
def test_fuzz_escapes_are_clear_errors_now(case):
    text, fragment = ESCAPES[case]
    with pytest.raises(CaffeishError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("^", r"\^")):
        with Net(text, phase=caffe_pb2.TRAIN) as net:
            net.forward()
            net.backward()


def test_empty_batches_run_as_no_ops():
    """Zero-sized blobs (an empty batch) pass through every layer: nothing to compute, zero gradients."""
    text = """force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 0 dim: 3 } } }
        layer { name: "m" type: "MVN" bottom: "x" top: "m" }
        layer { name: "b" type: "BatchNorm" bottom: "m" top: "b" }
        layer { name: "p" type: "PReLU" bottom: "b" top: "p" prelu_param { filler { type: "xavier" } } }
        layer { name: "t" type: "Tile" bottom: "p" top: "t" tile_param { tiles: 2 } }"""
    with Net(text, phase=caffe_pb2.TRAIN) as net:
        net.forward()
        net.backward()
        assert net.blobs["t"].count == 0 and net.blobs["t"].shape[:2] == (0, 6)


def test_solver_mistakes_found_by_fuzzing(tmp_path):
    from caffeish.solvers import get_solver
    for fields, fragment in [(dict(type='"Adam"', momentum=1.0), "Adam's momentum (beta1) must be in [0, 1)"),
                             (dict(type='"Adam"', momentum2=1.5), "momentum2 (beta2) must be in [0, 1)"),
                             (dict(test_iter=0, test_interval=5), "test_iter must be positive")]:
        with pytest.raises(CaffeishError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            get_solver(write_solver(tmp_path, **fields))
    for fields, it in [(dict(lr_policy='"poly"', power=0.5, max_iter=4), 6),
                       (dict(lr_policy='"sigmoid"', gamma=1000, stepsize=10), 0),
                       (dict(lr_policy='"exp"', gamma=1e300), 2)]:
        solver = get_solver(write_solver(tmp_path, **fields))
        solver.iter = it
        with pytest.raises(CaffeishError, match=f"gives no learning rate at iteration {it}"):
            solver.get_learning_rate()


def test_damaged_solverstate_text_fields(tmp_path):
    solver = _solver(tmp_path)
    solver.step(5)
    state = caffe_pb2.SolverState.FromString((tmp_path / "snap_iter_5.solverstate").read_bytes())
    for field, value in (("learned_net", b"\xff\xfe bad"), ("resume_state_json", b'{"rng": 1')):
        broken = caffe_pb2.SolverState()
        broken.CopyFrom(state)
        data = broken.SerializeToString()
        good = getattr(state, field).encode()
        data = data.replace(good, value + b"." * (len(good) - len(value))) if len(good) >= len(value) else data
        (tmp_path / "broken.solverstate").write_bytes(data)
        with pytest.raises(CaffeishError, match="broken.solverstate"):
            _solver(tmp_path).restore(str(tmp_path / "broken.solverstate"))


def test_api_mistakes_found_while_auditing(tmp_path):
    from caffeish import io as cio
    with pytest.raises(CaffeishError, match="not a serialized BlobProtoVector"):
        cio.blobprotovector_str_to_arraylist(b"\xff\xff\xff garbage")
    with Net("layer { name: \"in\" type: \"Input\" top: \"x\" input_param { shape { dim: 2 } } }",
             phase=caffe_pb2.TEST) as net:
        with pytest.raises(CaffeishError, match="'nope' is not a blob"):
            net.backward(nope=numpy.zeros(2))
    h5 = tmp_path / "w.caffemodel.h5"
    with h5py.File(h5, "w") as f:
        f.create_group("data").create_group("ip").create_dataset("0", data=numpy.array([b"text"]))
    with Net("layer { name: \"in\" type: \"Input\" top: \"x\" input_param { shape { dim: 2 dim: 3 } } }\n"
             "layer { name: \"ip\" type: \"InnerProduct\" bottom: \"x\" top: \"y\" "
             "inner_product_param { num_output: 1 } }", phase=caffe_pb2.TEST) as net:
        with pytest.raises(CaffeishError, match="data/ip/0 is not an array of numbers"):
            net.copy_from(str(h5))


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    """Snapshots and outputs are written through temporary files; they end with the umask's mode, not 0600."""
    from caffeish.atomic import atomic_path, current_umask
    with atomic_path(tmp_path / "f.bin") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x")
    with open(tmp_path / "plain.bin", "wb") as f:
        f.write(b"x")
    mode = os.stat(tmp_path / "f.bin").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain.bin").st_mode & 0o777 == 0o666 & ~current_umask()


def test_hdf5_output_on_a_full_disk_is_an_error_and_keeps_the_last_file(tmp_path):
    """libhdf5 used to crash (SIGSEGV) after a failed write: now a one-paragraph error, the last file intact."""
    (tmp_path / "net.prototxt").write_text("""
        layer { name: "d" type: "DummyData" top: "x" top: "y" dummy_data_param {
                shape { dim: 64 dim: 100 } shape { dim: 64 } data_filler { type: "gaussian" } } }
        layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param { file_name: "out.h5" } }
        """)
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000))
        import caffeish
        net = caffeish.Net("net.prototxt", caffeish.TEST)
        try:
            for _ in range(20):
                net.forward()
        except caffeish.CaffeishError as e:
            print(e)
            sys.exit(3)
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "out.h5, layer 'o' (type HDF5Output): cannot write the HDF5 output (File too large)" in proc.stdout
    with h5py.File(tmp_path / "out.h5", "r") as f:  # the last complete file: whole batches, data and labels alike
        rows = f["data"].shape[0]
        assert rows > 0 and rows % 64 == 0 and f["label"].shape == (rows,)
