"""The HDF5Data layer (Caffe's HDF5DataLayer): rows of the datasets of a list of HDF5 files, read ahead on a
thread (``HDF5Reader``).
"""
import math

import h5py
import numpy

from ...data.hdf5_backend import read_hdf5_list
from ...blob import memory_limit
from ...errors import CaffeishError
from ...layer import register_layer
from ...weights import H5_ERRORS
from .prefetch import ROW_SHUFFLE_STREAM, SHUFFLE_STREAM, PrefetchingDataLayer, Reader, stream_rng


def inspect_hdf5(path, datasets):
    """{dataset: shape} of ``datasets`` in one file, checked: present, at least 1 axis, equal row counts."""
    try:
        with h5py.File(path, "r") as f:
            shapes = {}
            for name in datasets:
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise CaffeishError(f"the HDF5 file has no dataset '{name}' (datasets are named like the "
                                        f"layer's tops; it has: {', '.join(sorted(f.keys())) or 'none'})", path=path)
                shapes[name] = tuple(f[name].shape)
    except H5_ERRORS as e:
        raise CaffeishError(f"cannot read the HDF5 file ({e})", path=path) from None
    for name, shape in shapes.items():
        if len(shape) < 1:
            raise CaffeishError(f"dataset '{name}' is a scalar; it needs at least one axis (rows)", path=path)
    rows = {name: shape[0] for name, shape in shapes.items()}
    first = datasets[0]
    for name in datasets[1:]:
        if rows[name] != rows[first]:
            raise CaffeishError(f"dataset '{name}' has {rows[name]} rows but '{first}' has {rows[first]}; "
                                "every dataset needs one row per example", path=path)
    if rows[first] == 0:
        raise CaffeishError(f"dataset '{first}' has no rows", path=path)
    return shapes


#: A file whose rows would take more than 1/STREAM_FRACTION of the memory is streamed, never loaded whole.
STREAM_FRACTION = 4


class _RowsOnDisk:
    """One dataset of an open HDF5 file, read a batch of rows at a time (``[slice]`` or ``[index array]``)."""

    def __init__(self, handle, dataset, dtype):
        self.handle, self.dataset, self.dtype = handle, dataset, dtype
        self.shape = dataset.shape

    @classmethod
    def open(cls, path, names, dtype):
        handle = h5py.File(path, "r")
        try:
            for name in names:
                if name not in handle:
                    raise CaffeishError(f"the HDF5 file has no dataset '{name}'", path=path)
            return {name: cls(handle, handle[name], dtype) for name in names}
        except BaseException:
            handle.close()
            raise

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            return numpy.asarray(self.dataset[rows], dtype=self.dtype)
        rows = numpy.asarray(rows, dtype=numpy.int64)
        order = numpy.argsort(rows, kind="stable")   # h5py reads increasing indices only
        wanted, first = numpy.unique(rows[order], return_index=True)
        values = numpy.asarray(self.dataset[wanted], dtype=self.dtype)
        out = numpy.empty((len(rows),) + values.shape[1:], dtype=self.dtype)
        out[order] = values[numpy.searchsorted(wanted, rows[order])]
        return out


def _close_loaded(loaded):
    arrays = loaded[1]
    if arrays:
        for value in arrays.values():
            if isinstance(value, _RowsOnDisk):
                value.handle.close()
                break


class HDF5Reader(Reader):
    """Rows of the listed files; position = (epoch, file index in the epoch's order, row in the file's order)."""

    def __init__(self, files, datasets, batch_size, shuffle, dtype):
        self.files, self.datasets = files, list(datasets)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.dtype = numpy.dtype(dtype)
        self.shapes = [inspect_hdf5(path, self.datasets) for path in files]
        self.rows = [s[self.datasets[0]][0] for s in self.shapes]
        for path, shapes in zip(files[1:], self.shapes[1:]):
            for name in self.datasets:
                if shapes[name][1:] != self.shapes[0][name][1:]:
                    raise CaffeishError(f"dataset '{name}' has rows of shape {shapes[name][1:]}, but in {files[0]} "
                                        f"they are {self.shapes[0][name][1:]}; all files need one row shape",
                                        path=path)
        self.epoch = self.file = self.row = 0
        self.file_order = self.row_order = None
        self.file_order_given = self.row_order_given = False
        self._loaded = (None, None)  # (file index, {dataset: array})

    # -- orders -------------------------------------------------------------------------------------------
    def derived_file_order(self, epoch):
        n = len(self.files)
        if not self.shuffle:
            return numpy.arange(n)
        return stream_rng(self.seed, SHUFFLE_STREAM, epoch).permutation(n)

    def derived_row_order(self, epoch, file_pos, file_index):
        if not self.shuffle:
            return None
        return stream_rng(self.seed, ROW_SHUFFLE_STREAM, epoch, file_pos).permutation(self.rows[file_index])

    def top_shapes(self):
        return [(self.batch_size,) + self.shapes[0][name][1:] for name in self.datasets]

    # -- Reader ---------------------------------------------------------------------------------------
    def release(self):
        _close_loaded(self._loaded)
        self._loaded = (None, None)

    def position(self):
        out = {"epoch": self.epoch, "file": self.file, "row": self.row}
        if self.file_order_given:
            out["file_order"] = self.file_order.tolist()
        if self.row_order_given:
            out["row_order"] = self.row_order.tolist()
        return out

    def describe(self, position):
        epoch, file_pos = int(position["epoch"]), int(position["file"])
        file_order = position.get("file_order")
        if file_order is None:
            file_order = self.derived_file_order(epoch).tolist()
        row_order = position.get("row_order")
        if row_order is None:
            row_order = self.derived_row_order(epoch, file_pos, int(file_order[file_pos]))
            row_order = None if row_order is None else row_order.tolist()
        return {"epoch": epoch, "file": file_pos, "row": int(position["row"]),
                "file_order": list(file_order), "row_order": row_order}

    def check_position(self, state):
        try:
            epoch, file_pos, row = int(state["epoch"]), int(state["file"]), int(state["row"])
        except (KeyError, TypeError, ValueError):
            raise CaffeishError("the saved state has no valid 'epoch', 'file' and 'row'") from None
        n = len(self.files)
        if not 0 <= file_pos < n:
            raise CaffeishError(f"the saved state's file index {file_pos} is outside the list of {n} files")
        out = {"epoch": epoch, "file": file_pos, "row": row}
        file_order = state.get("file_order")
        if file_order is not None:
            file_order = numpy.asarray(file_order, dtype=numpy.int64)
            if file_order.shape != (n,) or not numpy.array_equal(numpy.sort(file_order), numpy.arange(n)):
                raise CaffeishError(f"the saved state's 'file_order' is not a permutation of the {n} files")
            if not numpy.array_equal(file_order, self.derived_file_order(epoch)):
                out["file_order"] = file_order.tolist()
        else:
            file_order = self.derived_file_order(epoch)
        index = int(file_order[file_pos])
        rows = self.rows[index]
        if not 0 <= row < rows:
            raise CaffeishError(f"the saved state's row {row} is outside {self.files[index]} ({rows} rows)")
        row_order = state.get("row_order")
        if row_order is not None:
            row_order = numpy.asarray(row_order, dtype=numpy.int64)
            if row_order.shape != (rows,) or not numpy.array_equal(numpy.sort(row_order), numpy.arange(rows)):
                raise CaffeishError(f"the saved state's 'row_order' is not a permutation of the {rows} rows "
                                    f"of {self.files[index]}")
            derived = self.derived_row_order(epoch, file_pos, index)
            if derived is None or not numpy.array_equal(row_order, derived):
                out["row_order"] = row_order.tolist()
        return out

    def seek(self, position):
        self.epoch, self.file, self.row = int(position["epoch"]), int(position["file"]), int(position["row"])
        given = position.get("file_order")
        self.file_order_given = given is not None
        if given is not None:
            self.file_order = numpy.asarray(given, numpy.int64)
        else:
            self.file_order = self.derived_file_order(self.epoch)
        given = position.get("row_order")
        self.row_order_given = given is not None
        if given is not None:
            self.row_order = numpy.asarray(given, numpy.int64)
        else:
            self.row_order = self.derived_row_order(self.epoch, self.file, int(self.file_order[self.file]))

    def _arrays(self, index):
        """The datasets of file ``index`` in the net's float type: loaded whole, as Caffe does, or -- when that
        would take more than ``1 / STREAM_FRACTION`` of the memory -- read row by row as batches need them."""
        if self._loaded[0] != index:
            self.release()
            path = self.files[index]
            row_bytes = sum(math.prod(self.shapes[index][n][1:]) for n in self.datasets) * self.dtype.itemsize
            limit = memory_limit()[0]
            stream = limit is not None and row_bytes * self.rows[index] > limit // STREAM_FRACTION
            try:
                if stream:
                    arrays = _RowsOnDisk.open(path, self.datasets, self.dtype)
                else:
                    with h5py.File(path, "r") as f:
                        arrays = {}
                        for name in self.datasets:
                            if name not in f:
                                raise CaffeishError(f"the HDF5 file has no dataset '{name}'", path=path)
                            arrays[name] = numpy.asarray(f[name][()], dtype=self.dtype)
            except H5_ERRORS as e:
                raise CaffeishError(f"cannot read the HDF5 file ({type(e).__name__}: {e})", path=path) from None
            for name in self.datasets:
                if arrays[name].shape != self.shapes[index][name]:
                    raise CaffeishError(f"dataset '{name}' changed shape while training (now "
                                        f"{arrays[name].shape}, was {self.shapes[index][name]})", path=path)
            self._loaded = (index, arrays)
        return self._loaded[1]

    def _next_file(self):
        self.file += 1
        if self.file == len(self.files):
            self.file = 0
            self.epoch += 1
            self.file_order, self.file_order_given = self.derived_file_order(self.epoch), False
        self.row = 0
        self.row_order = self.derived_row_order(self.epoch, self.file, int(self.file_order[self.file]))
        self.row_order_given = False

    def skip(self, n):
        n = int(n)
        while n > 0:
            step = min(n, self.rows[int(self.file_order[self.file])] - self.row)
            self.row += step
            n -= step
            if self.row == self.rows[int(self.file_order[self.file])]:
                self._next_file()

    def load_batch(self, rng):
        parts = {name: [] for name in self.datasets}
        need = self.batch_size
        stride = self.shard_size  # 1, or every stride-th row when sharded (set_shard)
        while need:
            index = int(self.file_order[self.file])
            arrays = self._arrays(index)
            take = min(need, -(-(self.rows[index] - self.row) // stride))
            if self.row_order is None:
                rows = slice(self.row, self.row + stride * (take - 1) + 1, stride)
            else:
                rows = self.row_order[self.row:self.row + stride * (take - 1) + 1:stride]
            for name in self.datasets:
                parts[name].append(arrays[name][rows])
            need -= take
            self.skip(stride * take)
        return tuple(numpy.concatenate(parts[name]) if len(parts[name]) > 1 else numpy.array(parts[name][0])
                     for name in self.datasets)


@register_layer("HDF5Data")
class HDF5DataLayer(PrefetchingDataLayer):
    """HDF5Data: rows of HDF5 datasets (Caffe's HDF5DataLayer), read ahead on a thread.

    ``hdf5_data_param``: ``source`` (a text file naming .h5 files, whitespace-separated as Caffe reads
    it; a relative name is taken from the current directory, as Caffe does, or else from the list
    file's directory), ``batch_size``, ``shuffle``.  One top per dataset, named like the top (tops
    ``data`` and ``label`` read datasets ``data`` and ``label``); top ``j`` has the shape
    ``(batch_size,) + dataset.shape[1:]``; values are converted to the net's float type.

    Rows are read in order, across file boundaries, wrapping around after the last file.  With
    ``shuffle``, as Caffe: the file order is shuffled every epoch and the rows of a file every time it
    is loaded.  No transformations (Caffe refuses a transform_param here).  In data-parallel training each rank
    reads every N-th row of that stream (``set_shard``; see ``caffeish.layers.data.prefetch``).
    """
    min_top = 1

    def make_reader(self, seed, top):
        p = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise CaffeishError("HDF5Data does not transform data; remove transform_param (preprocess the "
                                "HDF5 files instead)")
        if not p.source:
            raise CaffeishError("hdf5_data_param.source is not set (a text file listing .h5 files)")
        if p.batch_size <= 0:
            raise CaffeishError(f"hdf5_data_param.batch_size must be positive, not {p.batch_size}")
        names = list(self.param.top) or [blob.name for blob in top]
        reader = HDF5Reader(read_hdf5_list(p.source), names, int(p.batch_size), bool(p.shuffle), self.dtype)
        reader.seed = seed
        reader.seek({"epoch": 0, "file": 0, "row": 0})
        return reader, reader.top_shapes()
