"""Shared pytest fixtures (and the fuzz-count report).

The fixtures import caffeish (and h5py, PIL) only when a test asks for them, so a module that needs none of
them collects without them.
"""
import functools
import gc
import os
import sys

import numpy
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


@pytest.fixture
def saved_net(tmp_path):
    """Writes a net and the weights it starts with.

    ``saved_net(text, weights, seed=None, model="deploy.prototxt")`` writes ``text`` to tmp_path/``model``,
    builds the net in the TEST phase (right after ``set_random_seed(seed)`` when a seed is given, so its
    fillers repeat) and saves its weights to tmp_path/``weights``.  Returns ``(model path, weights path)``
    as strings.
    """
    import caffeish

    def write(text, weights, seed=None, model="deploy.prototxt"):
        model_path, weights_path = tmp_path / model, tmp_path / weights
        model_path.write_text(text)
        if seed is not None:
            caffeish.set_random_seed(seed)
        with caffeish.Net(str(model_path), caffeish.TEST) as net:
            net.save(str(weights_path))
        return str(model_path), str(weights_path)
    return write


@pytest.fixture
def random_pngs(tmp_path):
    """Writes PNGs of uniform random pixels.

    ``random_pngs({"a.png": (20, 24, 3), "g.png": (28, 28)}, seed=0)`` draws each image in turn from one
    generator seeded with ``seed`` (an (h, w, 3) shape is RGB, (h, w) grey) and saves it under tmp_path.
    Returns the paths as strings, in the same order.
    """
    from PIL import Image

    def write(shapes, seed):
        rng = numpy.random.default_rng(seed)
        paths = []
        for name, shape in shapes.items():
            path = tmp_path / name
            Image.fromarray((rng.random(shape) * 255).astype(numpy.uint8)).save(path)
            paths.append(str(path))
        return paths
    return write
