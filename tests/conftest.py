"""Shared pytest fixtures (and the fuzz-count report).

The fixtures import caffeish (and h5py) only when a test asks for them, so a module that needs none of them
collects without them.
"""
import functools
import gc
import os
import sys

import pytest

# Tests import their shared helpers (gradient_check, helpers) as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))


def pytest_terminal_summary(terminalreporter, config):
    """The number of fuzz cases run (tests/test_fuzz.py), by kind and outcome."""
    counts = getattr(config, "caffeish_fuzz_counts", None)
    if counts:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        terminalreporter.write_line(f"fuzz cases run: {sum(counts.values())} ({detail})")


@pytest.fixture
def opened():
    """A list for the layers and nets a test makes: at the end of the test each is closed (a net layer by
    layer) and no prefetch thread may be left running."""
    from caffeish.layers.data.prefetch import live_prefetch_threads
    made = []
    yield made
    for obj in made:
        for layer in getattr(obj, "layers", [obj]):
            if hasattr(layer, "close"):
                layer.close()
    made.clear()
    gc.collect()
    assert not live_prefetch_threads()


@pytest.fixture
def restore_cpu_mode():
    """Puts the backend back in CPU mode when the test ends (for tests that switch to the GPU)."""
    from caffeish import backend
    yield
    backend.set_mode_cpu()


@pytest.fixture
def cli(capsys):
    """The caffeish command line run in this process (no interpreter start-up: for many quick cases).

    ``cli(*args)`` returns ``(exit code, stdout, stderr)`` of that run alone (``helpers.caffeish_in_process``
    with this test's capsys); the caffeish logger is put back as it was after each run.
    """
    from helpers import caffeish_in_process
    return functools.partial(caffeish_in_process, capsys)


@pytest.fixture
def hdf5_source(tmp_path):
    """Writes HDF5 files and the list of them that an HDF5Data layer's ``source`` names.

    ``hdf5_source({"a.h5": {"data": x, "label": y}, ...}, list_name="list.txt", relative=False)`` writes each
    file under tmp_path with its datasets, in order, then the list: one file a line, by absolute path (or
    by bare name with ``relative``, for the layer to resolve against the list's folder).  Returns the list's
    path; with ``list_name=None`` only the files are written (and None is returned).
    """
    import h5py

    def write(files, list_name="list.txt", relative=False):
        for name, datasets in files.items():
            with h5py.File(tmp_path / name, "w") as f:
                for key, value in datasets.items():
                    f[key] = value
        if list_name is None:
            return None
        listing = tmp_path / list_name
        listing.write_text("".join(f"{name if relative else tmp_path / name}\n" for name in files))
        return listing
    return write
