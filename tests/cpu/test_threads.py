"""The image-parallel machinery: chunks dealt to threads, the BLAS single-threaded meanwhile, OpenBLAS's idle spin."""
import os
import pathlib
import subprocess
import sys
import threading
import textwrap

import numpy
import pytest

from caffeish.cpu import set_num_threads
from caffeish.cpu import threads as cpu_threads

threadpoolctl = pytest.importorskip("threadpoolctl")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def blas_threads():
    # numpy's BLAS, as caffeish.cpu.threads found it; other libraries loaded later (OpenCV bundles its own OpenBLAS) do
    # not run numpy's products.
    return [c.get_num_threads() for c in cpu_threads._controllers()]


@pytest.mark.parametrize("num, step, threads", [(1, 1, 2), (7, 1, 3), (7, 3, 2), (100, 8, 4), (5, 10, 2)])
def test_chunks_cover_every_image_once_in_runs_per_part(num, step, threads):
    set_num_threads(threads)
    try:
        seen, names, lock = [], {}, threading.Lock()
        inside = []

        def fn(start, stop, part):
            with lock:
                seen.append((start, stop, part))
                names.setdefault(part, set()).add(threading.current_thread().name)
                inside.append(blas_threads())
        parts = cpu_threads.for_image_chunks(num, step, fn)
        planned = cpu_threads.num_parts(num, step)
    finally:
        set_num_threads(None)
    assert parts == planned == min(threads, -(-num // step))
    covered = sorted(i for start, stop, _ in seen for i in range(start, stop))
    assert covered == list(range(num))
    assert all(0 < stop - start <= step for start, stop, _ in seen)
    for p in range(parts):  # each part is one contiguous run, in order
        runs = sorted((start, stop) for start, stop, q in seen if q == p)
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    assert all(counts == [1] * len(counts) for counts in inside)  # the BLAS ran single-threaded


def test_single_threaded_blas_restores_the_count():
    before = blas_threads()
    with cpu_threads.single_threaded_blas():
        assert all(n == 1 for n in blas_threads())
        with cpu_threads.single_threaded_blas():
            assert all(n == 1 for n in blas_threads())
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before


def test_worker_errors_reach_the_caller_and_the_count_is_restored():
    before = blas_threads()

    def fn(start, stop, part):
        if start == 3:
            raise ValueError("image 3")
    set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="image 3"):
            cpu_threads.for_image_chunks(6, 1, fn)
    finally:
        set_num_threads(None)
    assert blas_threads() == before


def test_available_only_for_numpy_batches(monkeypatch):
    assert cpu_threads.available(numpy, 2)
    assert not cpu_threads.available(numpy, 1)
    monkeypatch.setattr(cpu_threads, "ENABLED", False)
    assert not cpu_threads.available(numpy, 8)


def test_openblas_loaded_before_caffeish_gets_the_short_idle_spin(tmp_path):
    """numpy (and so OpenBLAS) imported first: building a Net applies OPENBLAS_THREAD_TIMEOUT all the same."""
    script = textwrap.dedent("""
        import numpy
        from threadpoolctl import ThreadpoolController
        libs = [c for c in ThreadpoolController().select(user_api="blas").lib_controllers
                if c.internal_api == "openblas" and hasattr(c.dynlib, "openblas_thread_timeout")]
        if not libs:
            print("no-openblas")
            raise SystemExit(0)
        before = libs[0].dynlib.openblas_thread_timeout()
        import caffeish
        caffeish.Net('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }',
                     caffeish.TEST)
        a = numpy.ones((300, 300))
        print(before, libs[0].dynlib.openblas_thread_timeout(), float((a @ a)[0, 0]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                         cwd=str(tmp_path)).stdout.split()
    if out == ["no-openblas"]:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    assert out == ["0", "12", "300.0"]
