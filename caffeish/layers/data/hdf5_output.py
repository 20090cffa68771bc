"""The HDF5Output layer (Caffe's HDF5OutputLayer): its two bottoms appended, batch after batch, to the
datasets ``data`` and ``label`` of an HDF5 file.
"""
import io
import os
import time

import h5py
import numpy

from ... import backend
from ...atomic import atomic_path
from ...errors import CaffeishError
from ...layer import Layer, register_layer

#: Below this size the file is written after every forward.
SMALL_BYTES = 1 << 20
DATASETS = ("data", "label")


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """HDF5Output: writes its two bottoms to an HDF5 file (Caffe's HDF5OutputLayer).

    ``hdf5_output_param.file_name``: the file, created (truncated) at setup as Caffe does.  Each forward
    appends bottom 0 to dataset ``data`` and bottom 1 to dataset ``label`` (resizable along the first
    axis, so a run of many batches keeps every row; Caffe itself can write only one batch).  Rows keep the
    bottoms' own shapes; values are stored in the net's float type.  No tops, no backward.

    The file is built in memory and written whole, atomically, with Python's file I/O: libhdf5 crashes
    the process after a failed write to disk (a full disk, a file-size limit), where Python raises an
    error that names the file.  It is written after every forward while it is small (``SMALL_BYTES``),
    then whenever it has grown by half or the time since the last write is ten times what that write
    took -- so the writes cost a bounded share of the run -- and at ``close``.  An interrupted run leaves
    the last complete file.  The rows are held in memory until then.
    """
    exact_num_bottom = 2
    exact_num_top = 0
    has_backward = False

    def __init__(self, param, dtype=numpy.float32):
        super().__init__(param, dtype)
        self.file = None

    def layer_setup(self, bottom, top):
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise CaffeishError("hdf5_output_param.file_name is not set (the HDF5 file to write)")
        self.close()
        folder = os.path.dirname(os.path.abspath(self.file_name))
        if not os.path.isdir(folder):
            raise CaffeishError(f"cannot create the HDF5 file: the folder {folder} does not exist",
                                path=self.file_name)
        self.image = io.BytesIO()
        self.file = h5py.File(self.image, "w")
        self.written = {"bytes": 0, "at": 0.0, "took": 0.0}
        self._write()  # created (truncated) now, as Caffe does

    def reshape(self, bottom, top):
        if bottom[0].num_axes == 0 or bottom[1].num_axes == 0 or bottom[0].shape[0] != bottom[1].shape[0]:
            raise CaffeishError(f"the data bottom {bottom[0].shape} and the label bottom {bottom[1].shape} must "
                                "have the same number of rows (first axis)")

    def forward(self, bottom, top):
        if self.file is None:
            raise CaffeishError("the HDF5 file is closed", path=self.file_name)
        for name, blob in zip(DATASETS, bottom):
            values = backend.to_cpu(blob.data).astype(self.dtype, copy=False)
            if name not in self.file:
                self.file.create_dataset(name, data=values, maxshape=(None,) + values.shape[1:],
                                         chunks=True)
                continue
            ds = self.file[name]
            if ds.shape[1:] != values.shape[1:]:
                raise CaffeishError(f"bottom '{blob.name}' has rows of shape {values.shape[1:]}, but the rows "
                                    f"already written to dataset '{name}' have {ds.shape[1:]}", path=self.file_name)
            n = ds.shape[0]
            ds.resize(n + values.shape[0], axis=0)
            ds[n:] = values
        self.file.flush()
        self.dirty = True
        size, w = self._size(), self.written
        if size < SMALL_BYTES or size >= 1.5 * w["bytes"] or time.monotonic() - w["at"] >= 10 * w["took"]:
            self._write()

    def _size(self):
        with self.image.getbuffer() as view:  # released at once: the BytesIO cannot grow while exported
            return view.nbytes

    def _write(self):
        """The in-memory file, flushed, onto ``file_name`` (atomically)."""
        self.file.flush()
        started = time.monotonic()
        try:
            with self.image.getbuffer() as data, atomic_path(self.file_name, suffix=".h5") as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
        except OSError as e:
            raise CaffeishError(f"cannot write the HDF5 output ({e.strerror or e}); the last complete file is kept",
                                path=self.file_name) from None
        self.dirty = False
        self.written.update(bytes=self._size(), at=time.monotonic(), took=time.monotonic() - started)

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self):
        """Write the file a last time (if it changed since) and close it."""
        if self.file is None:
            return
        try:
            if self.dirty:
                self._write()
        finally:
            self.file.close()
            self.file = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
