"""The HDF5 database backend (registered as ``hdf5``, alias ``h5``): ``data``/``label`` datasets in ``.h5``
files named by a list file, read as Datums and written from arrays."""
import io
import os

import h5py
import numpy

from ..errors import CaffeishError
from ..proto import caffe_pb2
from ..weights import H5_ERRORS
from .db import COMMIT_EVERY, NO, SURE, DatabaseBackend, RecordDB, _key_bytes, looks_like_hint, register_backend

LIST_NAME = "list.txt"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")

#: The most row bytes one .h5 file of a converted database holds (each is built in memory, then written).
MAX_FILE_BYTES = 1 << 30


@register_backend
class HDF5Backend(DatabaseBackend):
    """Arrays rather than records: a directory of ``.h5`` files with ``list.txt``, a list file, or one ``.h5``."""
    name = "hdf5"
    aliases = ("h5",)
    title = "HDF5"
    noun = "an HDF5 database"
    write_options = frozenset({"rows_per_file", "batch_size"})
    encoded_images = False
    one_shape = True
    float_labels = True
    source_title = "HDF5 list (an HDF5Data layer's source)"

    @classmethod
    def recognise(cls, path):
        if os.path.isdir(path):
            return SURE if os.path.isfile(os.path.join(path, LIST_NAME)) else NO
        if os.path.isfile(path) and (path.lower().endswith(HDF5_SUFFIXES + (".txt",)) or h5py.is_hdf5(path)):
            return SURE
        return NO

    @classmethod
    def open_reader(cls, path, **options):
        return HDF5DB(path, **options)

    @classmethod
    def open_writer(cls, path, *, final=None, **options):
        if final is not None:
            options.setdefault("list_prefix", final)
        return HDF5Writer(path, **options)


# -- HDF5 ------------------------------------------------------------------------------------------------------
def _row_datum(row, label):
    """A Datum from one HDF5 row (C,H,W / H,W / D) and its label."""
    row = numpy.asarray(row)
    if row.ndim == 3:
        c, h, w = row.shape
    elif row.ndim == 2:
        (h, w), c = row.shape, 1
    elif row.ndim <= 1:
        c, h, w = row.size, 1, 1
    else:
        raise CaffeishError(f"an HDF5 row of shape {row.shape} does not fit a Datum (at most 3 axes)")
    datum = caffe_pb2.Datum(channels=c, height=h, width=w)
    if row.dtype == numpy.uint8:
        datum.data = row.tobytes()
    else:
        datum.float_data.extend(row.astype(numpy.float32).ravel().tolist())
    label = numpy.asarray(label).ravel()
    if label.size:
        datum.label = int(numpy.rint(label[0]))
    return datum


def read_hdf5_list(list_path):
    """The .h5 paths a list file names (an HDF5Data ``source``, a database's ``list.txt``): whitespace-separated
    names as Caffe reads them, each taken as written (from the current directory), else from the list file's
    folder, else by its base name in that folder (a list moved with its files)."""
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CaffeishError(f"cannot read the HDF5 file list: {e.strerror or e}", path=list_path) from None
    except UnicodeDecodeError:
        raise CaffeishError("the HDF5 file list is not a text file", path=list_path) from None
    base = os.path.dirname(os.path.abspath(list_path))
    files = []
    for number, line in enumerate(lines, 1):
        for name in line.split():
            candidates = [name] if os.path.isabs(name) else [name, os.path.join(base, name)]
            candidates.append(os.path.join(base, os.path.basename(name)))
            found = next((c for c in candidates if os.path.isfile(c)), None)
            if found is None:
                tried = " or ".join(dict.fromkeys(os.path.abspath(c) for c in candidates))
                raise CaffeishError(f"{list_path}:{number}: HDF5 file '{name}' does not exist (tried {tried})")
            files.append(found)
    if not files:
        raise CaffeishError("the HDF5 file list names no files (Caffe needs at least one)", path=list_path)
    return files


def hdf5_files(path):
    """The ``.h5`` files of an HDF5 database: a directory with ``list.txt``, a list file, or one ``.h5`` file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeishError("database does not exist", path=path)
    if os.path.isdir(path):
        list_path = os.path.join(path, LIST_NAME)
        if not os.path.isfile(list_path):
            raise CaffeishError(f"is not an HDF5 database: the directory has no {LIST_NAME}"
                                f"{looks_like_hint(path, 'hdf5')}", path=path)
        return read_hdf5_list(list_path)
    if h5py.is_hdf5(path):
        return [path]
    return read_hdf5_list(path)


class HDF5DB(RecordDB):
    """HDF5 ``data``/``label`` files read as records: keys ``%08d``, values serialized Datums."""
    backend = "hdf5"
    mode = "r"

    def __init__(self, path, *, check_datums=True, batch_rows=256):
        self.path = os.fspath(path)
        self.files = hdf5_files(self.path)
        self.batch_rows = int(batch_rows)
        self.counts = []
        for name in self.files:
            try:
                with h5py.File(name, "r") as f:
                    for ds in ("data", "label"):
                        if ds not in f or not isinstance(f[ds], h5py.Dataset):
                            raise CaffeishError(f"HDF5 file has no '{ds}' dataset", path=name)
                    n, n_label = f["data"].shape[0] if f["data"].ndim else 0, f["label"].shape[0]
            except H5_ERRORS as e:
                raise CaffeishError(f"is not a readable HDF5 file ({e})", path=name) from None
            if n != n_label:
                raise CaffeishError(f"'data' has {n} rows but 'label' has {n_label}", path=name)
            self.counts.append(n)
        if check_datums and sum(self.counts) == 0:
            raise CaffeishError("the database is empty (no rows)", path=self.path)

    def keys_count(self):
        return int(sum(self.counts))


    def iter_batches(self):
        """(data, label) numpy arrays, a few hundred rows at a time, file by file."""
        for name in self.files:
            try:
                with h5py.File(name, "r") as f:
                    data, label = f["data"], f["label"]
                    for start in range(0, data.shape[0], self.batch_rows):
                        stop = min(start + self.batch_rows, data.shape[0])
                        block = data[start:stop], label[start:stop]
                        yield block
            except H5_ERRORS as e:
                raise CaffeishError(f"cannot read rows of the HDF5 file ({type(e).__name__}: {e})", path=name) from None

    def cursor(self):
        return HDF5Cursor(self)

    def get(self, key):
        try:
            index = int(_key_bytes(key))
        except ValueError:
            return None
        for name, n in zip(self.files, self.counts):
            if index < n:
                with h5py.File(name, "r") as f:
                    return _row_datum(f["data"][index], f["label"][index]).SerializeToString()
            index -= n
        return None

    def close(self):
        pass


class HDF5Cursor:
    def __init__(self, db):
        self._db = db
        self.seek_first()

    def seek_first(self):
        self._batches = self._db.iter_batches()
        self._index = -1
        self._data = self._label = None
        self._row = 0
        return self._advance()

    seek_to_first = seek_first

    def _advance(self):
        self._row += 1
        while self._data is None or self._row >= len(self._data):
            try:
                self._data, self._label = next(self._batches)
            except StopIteration:
                self._data = None
                self._valid = False
                return False
            self._row = 0
        self._index += 1
        self._valid = True
        return True

    def valid(self):
        return self._valid

    def next(self):
        return self._advance() if self._valid else False

    def key(self):
        return b"%08d" % self._index

    def datum(self):
        return _row_datum(self._data[self._row], self._label[self._row])

    def value(self):
        return self.datum().SerializeToString()

    def close(self):
        self._batches = None


class HDF5Writer:
    """Rows into ``data``/``label`` datasets of ``.h5`` files in a directory, plus ``list.txt``.

    ``data`` keeps uint8 rows as uint8 and stores anything else as float32; ``label`` is float32.
    Datasets are chunked and gzip-compressed.  ``list_prefix`` is the directory written into
    ``list.txt`` (the database's final location when it is built at a temporary path).
    """
    backend = "hdf5"
    mode = "w"

    def __init__(self, path, *, rows_per_file=None, list_prefix=None, batch_size=COMMIT_EVERY,
                 compression="gzip", compression_opts=4):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.rows_per_file = int(rows_per_file) if rows_per_file else None
        if self.rows_per_file is not None and self.rows_per_file <= 0:
            raise CaffeishError(f"rows per HDF5 file must be positive, not {rows_per_file}")
        self.list_prefix = os.path.abspath(list_prefix if list_prefix is not None else self.path)
        self.batch_size = max(1, int(batch_size))
        self.compression, self.compression_opts = compression, compression_opts
        self.list_path = os.path.join(self.path, LIST_NAME)
        self.names = []
        self.count = 0
        self._file = None
        self._rows_in_file = 0
        self._row_shape = self._dtype = None
        self._pending_data, self._pending_label = [], []

    def put_array(self, data, label):
        """Add one row (``data`` C,H,W or any fixed shape) with its label."""
        data = numpy.asarray(data)
        if self._row_shape is None:
            self._row_shape = data.shape
            self._dtype = numpy.dtype(numpy.uint8) if data.dtype == numpy.uint8 else numpy.dtype(numpy.float32)
        elif data.shape != self._row_shape:
            raise CaffeishError(f"row {self.count} has shape {data.shape}, but earlier rows have "
                                f"{self._row_shape}; HDF5 data needs one shape for all rows", path=self.path)
        self._pending_data.append(data)
        self._pending_label.append(float(numpy.asarray(label).ravel()[0]) if numpy.size(label) else 0.0)
        self.count += 1
        if len(self._pending_data) >= self.batch_size:
            self.flush()

    def put_record(self, record):
        """Add a ``Record``'s array and label (its key is dropped: rows keep their order)."""
        if record.encoded is not None:
            raise CaffeishError("HDF5 cannot hold encoded images; drop --encoded for --backend hdf5")
        self.put_array(record.array, 0 if record.label is None else record.label)

    def transaction(self):
        return HDF5Transaction(self)

    def _file_rows(self):
        """Rows per file: ``rows_per_file``, and at most MAX_FILE_BYTES of rows (each file is built in memory)."""
        row_bytes = max(1, int(numpy.prod(self._row_shape, dtype=numpy.int64)) * self._dtype.itemsize)
        cap = max(1, MAX_FILE_BYTES // row_bytes)
        return min(cap, self.rows_per_file) if self.rows_per_file else cap

    def _new_file(self):
        self._close_file()
        name = f"data_{len(self.names):05d}.h5"
        # Built in memory and written with Python's I/O on close: libhdf5 crashes the process after a failed
        # write to disk (a full disk), where Python raises OSError (see caffeish.weights.h5_image).
        self._image, self._image_path = io.BytesIO(), os.path.join(self.path, name)
        self._file = h5py.File(self._image, "w")
        self.names.append(name)
        self._rows_in_file = 0
        row_bytes = max(1, int(numpy.prod(self._row_shape, dtype=numpy.int64)) * self._dtype.itemsize)
        chunk_rows = max(1, min((1 << 20) // row_bytes, self._file_rows()))
        self._file.create_dataset("data", shape=(0, *self._row_shape), maxshape=(None, *self._row_shape),
                                  dtype=self._dtype, chunks=(chunk_rows, *self._row_shape),
                                  compression=self.compression, compression_opts=self.compression_opts)
        self._file.create_dataset("label", shape=(0,), maxshape=(None,), dtype=numpy.float32,
                                  chunks=(min(chunk_rows * 64, 1 << 16),), compression=self.compression,
                                  compression_opts=self.compression_opts)

    def flush(self):
        data = self._pending_data
        label = self._pending_label
        self._pending_data, self._pending_label = [], []
        start = 0
        while start < len(data):
            if self._file is None or self._rows_in_file >= self._file_rows():
                self._new_file()
            room = min(len(data) - start, self._file_rows() - self._rows_in_file)
            block = numpy.stack(data[start:start + room]).astype(self._dtype, copy=False)
            for ds, values in (("data", block), ("label", numpy.asarray(label[start:start + room], numpy.float32))):
                d = self._file[ds]
                d.resize(self._rows_in_file + room, axis=0)
                d[self._rows_in_file:self._rows_in_file + room] = values
            self._rows_in_file += room
            start += room

    def _close_file(self, write=True):
        if self._file is not None:
            try:
                self._file.close()
                if write:
                    with open(self._image_path, "wb") as f:
                        f.write(self._image.getbuffer())
            finally:
                self._file = self._image = None

    def close(self):
        """Write the pending rows and ``list.txt``; returns the list path (at its final location)."""
        if self._pending_data:
            self.flush()
        self._close_file()
        with open(self.list_path, "w", encoding="utf-8") as f:
            for name in self.names:
                f.write(os.path.join(self.list_prefix, name) + "\n")
        return os.path.join(self.list_prefix, LIST_NAME)

    def abort(self):
        """Close the open file without writing the pending rows or the list (the build failed)."""
        self._pending_data, self._pending_label = [], []
        self._close_file(write=False)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class HDF5Transaction:
    """``put(key, serialized Datum)`` for an HDF5 writer (the key is dropped: rows keep their order)."""

    def __init__(self, writer):
        self._writer = writer

    def put(self, key, value):
        datum = caffe_pb2.Datum()
        datum.ParseFromString(bytes(value))
        if datum.encoded:
            raise CaffeishError("HDF5 cannot hold encoded (compressed) images; write raw pixels instead")
        shape = (datum.channels, datum.height, datum.width)
        if datum.data:
            row = numpy.frombuffer(datum.data, dtype=numpy.uint8).reshape(shape)
        else:
            row = numpy.asarray(datum.float_data, dtype=numpy.float32).reshape(shape)
        self._writer.put_array(row, datum.label)

    def commit(self):
        self._writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.commit()


