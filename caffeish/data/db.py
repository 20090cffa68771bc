"""One small interface over the databases Caffe's data comes in: LMDB and HDF5.

Reading (what the Data layer and ``compute-mean`` use)::

    db = open_db("examples/mnist/mnist_train_lmdb")          # backend "lmdb", mode "r"
    cur = db.cursor()                                         # positioned on the first record
    while cur.valid():
        key, value = cur.key(), cur.value()                   # bytes, a serialized Datum
        cur.next()                                            # False once past the last record
    cur.seek_first()                                          # start over (a Data layer wraps this way)
    len(db), db.get(b"00000000"), db.close()

Writing (what the converters use)::

    db = open_db(tmp_path, "lmdb", "w")
    txn = db.transaction()
    txn.put(key, datum.SerializeToString())                   # committed every ``batch_size`` puts
    txn.commit()                                              # commits the rest
    db.close()

An LMDB writer starts with a modest map and doubles it whenever LMDB reports
``MapFullError``, so a conversion never fails with ``MDB_MAP_FULL``.

HDF5 holds arrays, not key/value records: a converter writes ``data`` and
``label`` datasets into ``.h5`` files plus a ``list.txt`` naming them (the
``source`` of an HDF5Data layer).  Opened for reading, such a directory, list
file or single ``.h5`` file shows the same cursor, yielding one serialized Datum
per row, so tools like ``compute-mean`` work on either backend.

``atomic_db_path`` builds a database at a temporary sibling path and renames
it into place only when the build succeeds.
"""
import contextlib
import os
import shutil
import tempfile
import threading

import h5py
import lmdb
import numpy
from google.protobuf import message as pb_message

from ..errors import CaffeishError
from ..proto import caffe_pb2

COMMIT_EVERY = 1000
INITIAL_MAP_SIZE = 1 << 26      # 64 MiB; doubled on demand
MAX_MAP_SIZE = 1 << 44          # 16 TiB: beyond this a "full" map is a real problem
MAX_READERS = 126
LIST_NAME = "list.txt"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


# -- backend names ---------------------------------------------------------------------------------------------
def backend_name(backend, path=None):
    """``"lmdb"`` or ``"hdf5"`` from a name or a ``DataParameter.DB`` value; LevelDB is refused clearly."""
    leveldb = CaffeishError("LevelDB is not supported; convert to LMDB (e.g. with caffeish convert, or "
                            "Caffe's convert_imageset -backend lmdb) and set backend: LMDB", path=path)
    if isinstance(backend, (int, numpy.integer)) and not isinstance(backend, bool):
        if backend == caffe_pb2.DataParameter.LMDB:
            return "lmdb"
        if backend == caffe_pb2.DataParameter.LEVELDB:
            raise leveldb
        raise CaffeishError(f"unknown database backend {int(backend)} (known: LMDB = 1)", path=path)
    name = str(backend).strip().lower()
    if name == "auto":
        return sniff_backend(path)
    if name == "leveldb":
        raise leveldb
    if name in ("h5", "hdf5"):
        return "hdf5"
    if name == "lmdb":
        return "lmdb"
    raise CaffeishError(f"unknown database backend '{backend}' (known: lmdb, hdf5)", path=path)


def sniff_backend(path):
    """Guess the backend of an existing database path: ``"lmdb"`` or ``"hdf5"``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data.mdb")):
            return "lmdb"
        if os.path.isfile(os.path.join(path, LIST_NAME)):
            return "hdf5"
        if os.path.isfile(os.path.join(path, "CURRENT")):
            backend_name("leveldb", path)
    elif os.path.isfile(path):
        if path.lower().endswith(HDF5_SUFFIXES) or path.lower().endswith(".txt") or h5py.is_hdf5(path):
            return "hdf5"
        return "lmdb"
    elif not os.path.exists(path):
        raise CaffeishError("database does not exist", path=path)
    raise CaffeishError("cannot tell the database type (neither an LMDB nor an HDF5 list); give the backend",
                        path=path)


def open_db(path, backend="lmdb", mode="r", **options):
    """Open a database for reading (``mode="r"``) or build a new one (``mode="w"``).

    ``backend``: ``"lmdb"``, ``"hdf5"``, ``"auto"`` (reading: guess from the path) or a
    ``caffe_pb2.DataParameter.DB`` value.  Reading options: ``check_datums`` (default True:
    refuse an empty LMDB or one whose first value is not a Datum).  Writing options: LMDB
    ``map_size``, ``batch_size``; HDF5 ``rows_per_file``, ``list_prefix``.
    """
    name = backend_name(backend, path)
    if mode not in ("r", "w"):
        raise ValueError(f"open_db mode must be 'r' or 'w', not {mode!r}")
    if name == "lmdb":
        return LMDB(path, mode, **options)
    if mode == "r":
        return HDF5DB(path, **options)
    return HDF5Writer(path, **options)


def _key_bytes(key):
    return key.encode() if isinstance(key, str) else bytes(key)


def looks_like_datum(value):
    """True when ``value`` parses as a Datum that carries pixels."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(bytes(value))
    except (pb_message.DecodeError, ValueError):
        return False
    if datum.encoded:
        return len(datum.data) > 0
    size = datum.channels * datum.height * datum.width
    return size > 0 and (len(datum.data) == size or len(datum.float_data) == size)


# -- LMDB ------------------------------------------------------------------------------------------------------
# LMDB allows one environment per database per process (py-lmdb refuses a second open), so readers
# of the same file (a TRAIN and a TEST Data layer, a prefetch thread) share one, reference-counted.
_READERS = {}
_READERS_LOCK = threading.Lock()


def _acquire_reader(key, path, subdir):
    """A shared read-only environment for the database file identified by ``key`` (device, inode)."""
    with _READERS_LOCK:
        entry = _READERS.get(key)
        if entry is None:
            try:
                env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=subdir,
                                max_readers=MAX_READERS)
            except lmdb.Error as e:
                raise CaffeishError(f"is not a readable LMDB ({e})", path=path) from None
            entry = _READERS[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release_reader(key):
    with _READERS_LOCK:
        entry = _READERS.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _READERS[key]
                entry[0].close()


class LMDB:
    """An LMDB environment, read-only (``mode="r"``) or for building (``mode="w"``)."""
    backend = "lmdb"

    def __init__(self, path, mode="r", *, check_datums=True, map_size=None, batch_size=COMMIT_EVERY):
        self.path = os.fspath(path)
        self.mode = mode
        self.batch_size = int(batch_size)
        if mode == "r":
            self.env = self._open_reader()
            if check_datums:
                try:
                    self._check_first_datum()
                except BaseException:
                    self.close()
                    raise
        else:
            os.makedirs(self.path, exist_ok=True)
            try:
                self.env = lmdb.open(self.path, map_size=int(map_size or INITIAL_MAP_SIZE), subdir=True,
                                     readonly=False, meminit=False, max_dbs=0)
            except lmdb.Error as e:
                raise CaffeishError(f"cannot create an LMDB here: {e}", path=self.path) from None

    def _open_reader(self):
        path = self.path
        if not os.path.exists(path):
            raise CaffeishError("database does not exist", path=path)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "data.mdb")):
                hint = ""
                if os.path.isfile(os.path.join(path, "CURRENT")):
                    hint = " (it looks like a LevelDB: LevelDB is not supported; convert to LMDB)"
                elif os.path.isfile(os.path.join(path, LIST_NAME)):
                    hint = " (it looks like an HDF5 database: use backend hdf5)"
                raise CaffeishError(f"is not an LMDB: the directory has no data.mdb{hint}", path=path)
            subdir = True
        else:
            subdir = False
        st = os.stat(os.path.join(path, "data.mdb") if subdir else path)
        self._reader_key = (st.st_dev, st.st_ino)
        return _acquire_reader(self._reader_key, path, subdir)

    def _check_first_datum(self):
        with self.env.begin() as txn:
            cur = txn.cursor()
            if not cur.first():
                raise CaffeishError("the database is empty (no records)", path=self.path)
            key, value = cur.key(), cur.value()
        if not looks_like_datum(value):
            raise CaffeishError(f"the LMDB holds no Datums: its first record (key {key!r}) does not parse as a "
                                "caffe Datum with pixels", path=self.path)

    # reading
    def cursor(self):
        return LMDBCursor(self.env)

    def get(self, key):
        with self.env.begin() as txn:
            return txn.get(_key_bytes(key))

    def keys_count(self):
        return int(self.env.stat()["entries"])

    __len__ = keys_count

    def __iter__(self):
        """(key, value) pairs, first to last."""
        cur = self.cursor()
        try:
            while cur.valid():
                yield cur.key(), cur.value()
                cur.next()
        finally:
            cur.close()

    # writing
    def transaction(self):
        if self.mode != "w":
            raise ValueError("transaction() needs a database opened with mode='w'")
        return LMDBTransaction(self, self.batch_size)

    @property
    def map_size(self):
        return int(self.env.info()["map_size"])

    def _write(self, items):
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                size = self.map_size * 2
                if size > MAX_MAP_SIZE:
                    raise CaffeishError(f"the LMDB would need a map larger than {MAX_MAP_SIZE} bytes",
                                        path=self.path) from None
                self.env.set_mapsize(size)

    def close(self):
        if self.env is not None:
            if self.mode == "w":
                self.env.sync(True)
                self.env.close()
            else:
                _release_reader(self._reader_key)
            self.env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LMDBCursor:
    """Caffe's db::Cursor: ``seek_first``, ``valid``, ``next``, ``key``, ``value`` (starts on the first record)."""

    def __init__(self, env):
        self._txn = env.begin(buffers=False)
        self._cur = self._txn.cursor()
        self._valid = self._cur.first()

    def seek_first(self):
        self._valid = self._cur.first()
        return self._valid

    seek_to_first = seek_first

    def valid(self):
        return self._valid

    def next(self):
        """Advance; False (and ``valid()`` False) once past the last record."""
        self._valid = self._cur.next() if self._valid else False
        return self._valid

    def key(self):
        return self._cur.key()

    def value(self):
        return self._cur.value()

    def close(self):
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


class LMDBTransaction:
    """Buffered puts, committed every ``batch_size`` puts and by ``commit()``."""

    def __init__(self, db, batch_size=COMMIT_EVERY):
        self._db = db
        self._batch = max(1, int(batch_size))
        self._pending = []

    def put(self, key, value):
        self._pending.append((_key_bytes(key), bytes(value)))
        if len(self._pending) >= self._batch:
            self.commit()

    def commit(self):
        if self._pending:
            self._db._write(self._pending)
            self._pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.commit()


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


def _read_list(list_path):
    """The .h5 paths an HDF5Data ``source`` names: as written, else relative to the list file's folder."""
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CaffeishError(f"cannot read {list_path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CaffeishError(f"{list_path} is not a text list of .h5 files") from None
    base = os.path.dirname(os.path.abspath(list_path))
    files = []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        candidates = [name, os.path.join(base, name), os.path.join(base, os.path.basename(name))]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise CaffeishError(f"{list_path}:{number}: HDF5 file '{name}' does not exist")
        files.append(found)
    if not files:
        raise CaffeishError("the HDF5 list names no files (the database is empty)", path=list_path)
    return files


def hdf5_files(path):
    """The ``.h5`` files of an HDF5 database: a directory with ``list.txt``, a list file, or one ``.h5`` file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeishError("database does not exist", path=path)
    if os.path.isdir(path):
        list_path = os.path.join(path, LIST_NAME)
        if not os.path.isfile(list_path):
            raise CaffeishError(f"is not an HDF5 database: the directory has no {LIST_NAME}", path=path)
        return _read_list(list_path)
    if h5py.is_hdf5(path):
        return [path]
    return _read_list(path)


class HDF5DB:
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
            except OSError as e:
                raise CaffeishError(f"is not a readable HDF5 file ({e})", path=name) from None
            if n != n_label:
                raise CaffeishError(f"'data' has {n} rows but 'label' has {n_label}", path=name)
            self.counts.append(n)
        if check_datums and sum(self.counts) == 0:
            raise CaffeishError("the database is empty (no rows)", path=self.path)

    def keys_count(self):
        return int(sum(self.counts))

    __len__ = keys_count

    def iter_batches(self):
        """(data, label) numpy arrays, a few hundred rows at a time, file by file."""
        for name in self.files:
            with h5py.File(name, "r") as f:
                data, label = f["data"], f["label"]
                for start in range(0, data.shape[0], self.batch_rows):
                    stop = min(start + self.batch_rows, data.shape[0])
                    yield data[start:stop], label[start:stop]

    def cursor(self):
        return HDF5Cursor(self)

    def __iter__(self):
        cur = self.cursor()
        while cur.valid():
            yield cur.key(), cur.value()
            cur.next()

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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

    def transaction(self):
        return HDF5Transaction(self)

    def _new_file(self):
        self._close_file()
        name = f"data_{len(self.names):05d}.h5"
        self._file = h5py.File(os.path.join(self.path, name), "w")
        self.names.append(name)
        self._rows_in_file = 0
        row_bytes = max(1, int(numpy.prod(self._row_shape, dtype=numpy.int64)) * self._dtype.itemsize)
        chunk_rows = max(1, min((1 << 20) // row_bytes, self.rows_per_file or (1 << 30)))
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
            if self._file is None or (self.rows_per_file and self._rows_in_file >= self.rows_per_file):
                self._new_file()
            room = len(data) - start
            if self.rows_per_file:
                room = min(room, self.rows_per_file - self._rows_in_file)
            block = numpy.stack(data[start:start + room]).astype(self._dtype, copy=False)
            for ds, values in (("data", block), ("label", numpy.asarray(label[start:start + room], numpy.float32))):
                d = self._file[ds]
                d.resize(self._rows_in_file + room, axis=0)
                d[self._rows_in_file:self._rows_in_file + room] = values
            self._rows_in_file += room
            start += room

    def _close_file(self):
        if self._file is not None:
            self._file.close()
            self._file = None

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
        self._close_file()

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


# -- atomic build ----------------------------------------------------------------------------------------------
def check_target(final_path, overwrite):
    """Refuse an existing ``final_path`` unless ``overwrite``."""
    if os.path.lexists(final_path) and not overwrite:
        raise CaffeishError("already exists; remove it or pass --overwrite to replace it", path=final_path)


@contextlib.contextmanager
def atomic_db_path(final_path, overwrite=False):
    """Yield a fresh temporary directory next to ``final_path``; rename it onto ``final_path`` on success.

    An existing ``final_path`` is refused unless ``overwrite`` (then it is replaced only once the new
    database is complete).  On any exception the temporary directory is removed and the old database,
    if any, is left as it was, so a database at ``final_path`` is always a complete one.
    """
    final_path = os.path.abspath(os.fspath(final_path))
    check_target(final_path, overwrite)
    parent, name = os.path.split(final_path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        check_target(final_path, overwrite)
        old = None
        if os.path.lexists(final_path):
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.rename(final_path, old)
        try:
            os.rename(tmp, final_path)
        except BaseException:
            if old is not None:
                os.rename(old, final_path)
            raise
        if old is not None:
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.unlink(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
