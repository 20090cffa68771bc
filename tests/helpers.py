"""Small builders shared by the tests."""
import logging
import os
import subprocess
import sys

import numpy

from caffeish import Blob, caffe_pb2, im2col
from caffeish.layer import create_layer
from caffeish.prototxt import parse_text


def layer_param(text):
    """A LayerParameter from prototxt text (``type: "ReLU" relu_param {...}``)."""
    return parse_text(text, caffe_pb2.LayerParameter())


def make_layer(text, dtype=numpy.float64, phase=caffe_pb2.TRAIN):
    param = layer_param(text)
    if not param.HasField("phase"):
        param.phase = phase
    if not param.name:
        param.name = param.type.lower()
    return create_layer(param, dtype=dtype)


def blob(array_or_shape, dtype=numpy.float64, name="", rng=None, low=-1.0, high=1.0):
    """A Blob holding ``array`` or uniform random values of ``shape``."""
    if isinstance(array_or_shape, tuple):
        rng = rng or numpy.random.default_rng(0)
        array = rng.uniform(low, high, size=array_or_shape)
    else:
        array = numpy.asarray(array_or_shape)
    b = Blob(array.shape, dtype=dtype, name=name)
    b.data[...] = array
    return b


def empty(n=1, dtype=numpy.float64):
    return [Blob(dtype=dtype, name=f"top{i}") for i in range(n)]


def random_geometry(rng, nd, unit_last_stride=False):
    """(spatial, kernel, stride, pad, dilation) with a non-empty output."""
    while True:
        spatial = tuple(int(v) for v in rng.integers(1, 10, size=nd))
        kernel = tuple(int(v) for v in rng.integers(1, 5, size=nd))
        stride = tuple(int(v) for v in rng.integers(1, 4, size=nd))
        if unit_last_stride:
            stride = stride[:-1] + (1,)
        pad = tuple(int(v) for v in rng.integers(0, 3, size=nd))
        dilation = tuple(int(v) for v in rng.integers(1, 3, size=nd))
        out = im2col.conv_output_shape(spatial, kernel, stride, pad, dilation)
        if all(o > 0 for o in out):
            return spatial, kernel, stride, pad, dilation


# -- the command line, as users run it ------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def caffeish_run(*args, check=False, pythonpath=ROOT, timeout=120, cwd=ROOT):
    """``python -m caffeish ARGS`` in a subprocess, from the repository root unless ``cwd`` says otherwise;
    with ``check``, a non-zero exit fails the test with the end of stderr."""
    proc = subprocess.run([sys.executable, "-m", "caffeish", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": pythonpath}, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def caffeish_in_process(capsys, *args):
    """The CLI in this process (no interpreter start-up: for many quick cases); returns (exit code, stdout,
    stderr).  The caffeish logger is put back as it was."""
    from caffeish.cli import main
    logger = logging.getLogger("caffeish")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers = []
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    finally:
        logger.handlers, logger.propagate, logger.level = saved
    out = capsys.readouterr()
    return code, out.out, out.err
