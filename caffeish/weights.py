"""Trained weights on disk: binary .caffemodel (NetParameter) and Caffe's HDF5 layout.

HDF5 weights live under ``data/<layer name>/<blob index>`` (and ``diff/...``);
parameters shared by name are saved once, by their owner.  Files are written
to a temporary name, fsynced and renamed.
"""
import io
import logging
import os

import numpy

from . import backend
from .atomic import atomic_path
from .errors import CaffeishError

log = logging.getLogger("caffeish")


def h5_image(fill):
    """The bytes of an HDF5 file made by ``fill(h5py_file)``, built in memory.

    libhdf5 crashes the process (SIGSEGV) after a failed write to disk -- a full disk, a file-size limit --
    so HDF5 files are built in memory and written with Python's file I/O, where that is an OSError.
    """
    import h5py
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        fill(f)
    return image.getbuffer()


def atomic_h5(path, fill):
    """Write an HDF5 file with ``fill(h5py_file)``, atomically."""
    data = h5_image(fill)
    with atomic_path(path, suffix=".h5") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def save_net_hdf5(net, path, write_diff=False):
    def fill(f):
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        owners = iter(record.owner for record in net.param_records)
        for name, layer in zip(net.layer_names, net.layers):
            group = data.create_group(name)
            dgroup = diff.create_group(name) if diff is not None else None
            for j, blob in enumerate(layer.blobs):
                if next(owners) != -1:
                    continue  # shared parameters are saved once, by their owner
                group.create_dataset(str(j), data=backend.to_cpu(blob.data))
                if dgroup is not None:
                    dgroup.create_dataset(str(j), data=backend.to_cpu(blob.diff))
    atomic_h5(path, fill)


def load_net_hdf5(net, path):
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CaffeishError(f"cannot read the HDF5 weights file {path}: {e}") from None
    with f:
        try:
            _copy_hdf5(net, f, path)
        except H5_ERRORS as e:  # h5py's words for a damaged file (bad heap, unknown message type...)
            raise CaffeishError(f"the HDF5 weights file {path} is damaged or not Caffe's layout "
                                f"({type(e).__name__}: {e})") from None


#: What h5py raises on a damaged or unexpected file.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError)


def _copy_hdf5(net, f, path):
    import h5py
    if "data" not in f:
        raise CaffeishError(f"{path} holds no 'data' group: it is not a Caffe HDF5 weights file")
    data = f["data"]
    for name, layer in zip(net.layer_names, net.layers):
        if name not in data:
            if layer.blobs:
                log.info("Layer %s is not in %s: its parameters keep their fillers", name, path)
            continue
        group = data[name]
        for j, blob in enumerate(layer.blobs):
            if str(j) not in group:
                continue  # a shared parameter, saved by its owner
            dataset = group[str(j)]
            if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiub":
                raise CaffeishError(f"{path}: data/{name}/{j} is not an array of numbers", layer=name)
            values = numpy.asarray(dataset)
            if values.size != blob.count:
                raise CaffeishError(f"cannot copy param {j} weights from layer '{name}'; shape mismatch: the "
                                    f"file has {values.shape}, the net has {blob.shape}. To learn this layer "
                                    "from scratch instead, rename it.", layer=name)
            blob.data[...] = backend.to_current(values.reshape(blob.shape), blob.dtype)


def load_weights(net, path):
    """Copy trained weights by layer name from a .caffemodel or .caffemodel.h5 file."""
    if not os.path.exists(path):
        raise CaffeishError(f"the weights file {path} does not exist")
    net.copy_from(path)
