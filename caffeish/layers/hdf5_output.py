"""HDF5Output: writes its two bottoms to an HDF5 file (Caffe's HDF5OutputLayer).

``hdf5_output_param.file_name``: the file, created (truncated) at setup as Caffe does.  Each forward
appends bottom 0 to dataset ``data`` and bottom 1 to dataset ``label`` (resizable along the first
axis, so a run of many batches keeps every row; Caffe itself can write only one batch) and flushes
the file.  Rows keep the bottoms' own shapes; values are stored in the net's float type.  No tops,
no backward.
"""
import os

import h5py
import numpy

from .. import backend
from ..errors import CaffeishError
from ..layer import Layer, register_layer

DATASETS = ("data", "label")


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
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
        try:
            self.file = h5py.File(self.file_name, "w")
        except OSError as e:
            raise CaffeishError(f"cannot create the HDF5 file ({e})", path=self.file_name) from None

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

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self):
        """Close the file (it is complete and readable before this too: every forward flushes)."""
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
