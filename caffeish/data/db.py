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

LevelDB, Caffe's older default, is read (never written) by ``LevelDB``: the
same cursor over the records Caffe's tools stored, through ``plyvel`` (the
``[leveldb]`` extra); ``caffeish convert leveldb`` copies such a database into
an LMDB.  The Data layer and ``open_db`` take LMDB and HDF5 only.

``atomic_db_path`` builds a database at a temporary sibling path and renames
it into place only when the build succeeds.
"""
import contextlib
import logging
import os
import shutil
import tempfile

import h5py
import numpy
from google.protobuf import message as pb_message

from ..atomic import current_umask, fsync_directory, process_alive
from ..errors import CaffeishError
from ..proto import caffe_pb2

log = logging.getLogger("caffeish")

COMMIT_EVERY = 1000
INITIAL_MAP_SIZE = 1 << 26      # 64 MiB; doubled on demand
MAX_MAP_SIZE = 1 << 44          # 16 TiB: beyond this a "full" map is a real problem
MAX_READERS = 126
LIST_NAME = "list.txt"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


# -- backend names ---------------------------------------------------------------------------------------------
def backend_name(backend, path=None):
    """``"lmdb"`` or ``"hdf5"`` from a name or a ``DataParameter.DB`` value; LevelDB is refused clearly."""
    leveldb = CaffeishError("LevelDB is not supported; convert to LMDB (caffeish convert leveldb SRC DST copies "
                            "a LevelDB of Caffe's into an LMDB) and set backend: LMDB", path=path)
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
    if mode == "r" and not os.path.lexists(os.fspath(path)):
        recover_interrupted_build(path)  # a killed `convert --overwrite` may have left it aside
    name = backend_name(backend, path)
    if mode not in ("r", "w"):
        raise ValueError(f"open_db mode must be 'r' or 'w', not {mode!r}")
    if name == "lmdb":
        from .lmdb_backend import LMDB
        return LMDB(path, mode, **options)
    from .hdf5_backend import HDF5DB, HDF5Writer
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


# -- what every database reader shares -------------------------------------------------------------------------
class RecordDB:
    """The base of the readers (LMDB, HDF5DB, LevelDB): they define ``cursor()``, ``keys_count()`` and
    ``close()``; this gives iteration, ``len`` and ``with``."""

    def __iter__(self):
        """(key, value) pairs, first to last."""
        cur = self.cursor()
        try:
            while cur.valid():
                yield cur.key(), cur.value()
                cur.next()
        finally:
            cur.close()

    def __len__(self):
        return self.keys_count()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- LevelDB (read-only) ---------------------------------------------------------------------------------------
LEVELDB_EXTRA = "pip install 'caffeish[leveldb]'"


def _plyvel():
    try:
        import plyvel
    except ImportError:
        raise CaffeishError(f"reading a LevelDB needs plyvel, an optional extra: {LEVELDB_EXTRA}") from None
    return plyvel


class LevelDB(RecordDB):
    """A LevelDB as Caffe's tools wrote it (``convert_imageset -backend leveldb``, ``extract_features ...
    leveldb``): keys as stored, values serialized Datums, in key order, read through plyvel.

    Reading only: nothing is ever put.  LevelDB itself still takes the directory's LOCK file and may
    tidy its log files, so the directory must be writable and not in use by another program (Caffe).
    ``check_datums`` (default True) refuses an empty database or one whose first value is not a Datum.
    """
    backend = "leveldb"
    mode = "r"

    def __init__(self, path, *, check_datums=True):
        self.path = os.fspath(path)
        self.db = None
        self._count = None
        if not os.path.exists(self.path):
            raise CaffeishError("database does not exist", path=self.path)
        if not os.path.isfile(os.path.join(self.path, "CURRENT")):
            hint = ""
            if os.path.isfile(os.path.join(self.path, "data.mdb")) or os.path.isfile(self.path):
                hint = " (it looks like an LMDB, which needs no conversion)"
            elif os.path.isfile(os.path.join(self.path, LIST_NAME)):
                hint = " (it looks like an HDF5 database)"
            raise CaffeishError(f"is not a LevelDB: no CURRENT file in the directory{hint}", path=self.path)
        plyvel = _plyvel()
        try:
            self.db = plyvel.DB(self.path, create_if_missing=False)
        except plyvel.CorruptionError as e:
            raise _damaged_leveldb(self.path, e) from None
        except plyvel.Error as e:
            raise CaffeishError(f"cannot open the LevelDB ({_leveldb_reason(e)}): LevelDB writes a LOCK file in its "
                                "directory, so the directory must be writable and no other program (a running Caffe) "
                                "may have the database open", path=self.path) from None
        if check_datums:
            try:
                self._check_first_datum()
            except BaseException:
                self.close()
                raise

    def _check_first_datum(self):
        cur = self.cursor()
        try:
            if not cur.valid():
                raise CaffeishError("the database is empty (no records)", path=self.path)
            key, value = cur.key(), cur.value()
        finally:
            cur.close()
        if not looks_like_datum(value):
            raise CaffeishError(f"the LevelDB holds no Datums: its first record (key {key[:64]!r}) does not parse as "
                                "a caffe Datum with pixels", path=self.path)

    def cursor(self):
        return LevelDBCursor(self)

    def get(self, key):
        try:
            return self.db.get(_key_bytes(key))
        except _plyvel().Error as e:
            raise _damaged_leveldb(self.path, e) from None

    def keys_count(self):
        """The number of records (LevelDB keeps no count: the keys are counted once)."""
        if self._count is None:
            self._count = sum(1 for _ in self)
        return self._count

    def close(self):
        if self.db is not None:
            db, self.db = self.db, None
            db.close()


def _leveldb_reason(error):
    return str(error).strip() or type(error).__name__


def _damaged_leveldb(path, error):
    return CaffeishError(f"is a damaged LevelDB ({_leveldb_reason(error)}); recopy it, or rebuild it", path=path)


class LevelDBCursor:
    """Caffe's db::Cursor over a ``LevelDB``: ``seek_first``, ``valid``, ``next``, ``key``, ``value``."""

    def __init__(self, db):
        self._db = db
        self._plyvel = _plyvel()
        self._it = db.db.iterator()
        self._key = self._value = None
        self.seek_first()

    def _advance(self):
        try:
            self._key, self._value = next(self._it)
            self._valid = True
        except StopIteration:
            self._key = self._value = None
            self._valid = False
        except self._plyvel.Error as e:
            raise _damaged_leveldb(self._db.path, e) from None
        return self._valid

    def seek_first(self):
        try:
            self._it.seek_to_start()
        except self._plyvel.Error as e:
            raise _damaged_leveldb(self._db.path, e) from None
        return self._advance()

    seek_to_first = seek_first

    def valid(self):
        return self._valid

    def next(self):
        """Advance; False (and ``valid()`` False) once past the last record."""
        return self._advance() if self._valid else False

    def key(self):
        return self._key

    def value(self):
        return self._value

    def close(self):
        if self._it is not None:
            self._it.close()
            self._it = None


# -- atomic build ----------------------------------------------------------------------------------------------
def check_target(final_path, overwrite):
    """Refuse an existing ``final_path`` unless ``overwrite``."""
    if os.path.lexists(final_path) and not overwrite:
        raise CaffeishError("already exists; remove it or pass --overwrite to replace it", path=final_path)


def _leftovers(final_path, suffix):
    """``(entry, middle)`` of the ``.<name>.<middle><suffix>`` siblings of ``final_path`` (middle without dots
    except the pid part of a temporary build)."""
    parent, name = os.path.split(final_path)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    head = f".{name}."
    return [(e, e[len(head):-len(suffix)]) for e in entries
            if e.startswith(head) and e.endswith(suffix) and len(e) > len(head) + len(suffix)]


def recover_interrupted_build(final_path):
    """Repair what a killed ``atomic_db_path`` left beside ``final_path``.

    A kill between moving the old database aside (``.<name>.XXXX.old``) and renaming the new one into
    place leaves no database at ``final_path``: the old one, complete, is renamed back.  An old copy
    beside a database that is in place, and the temporary builds of processes no longer running, are
    removed.
    """
    final_path = os.path.abspath(os.fspath(final_path))
    parent = os.path.dirname(final_path)
    for entry, middle in _leftovers(final_path, ".old"):
        if "." in middle:
            continue  # another database's (".<name>.<more>.XXXX.old")
        old = os.path.join(parent, entry)
        if not os.path.lexists(final_path):
            os.rename(old, final_path)
            log.warning("Restored %s from %s: a conversion with --overwrite was interrupted before it could "
                        "put its new database in place", final_path, old)
        elif os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)
    for entry, middle in _leftovers(final_path, ".tmp"):
        pid, _, rest = middle.partition(".")
        if pid.isdigit() and rest and "." not in rest and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def atomic_db_path(final_path, overwrite=False):
    """Yield a fresh temporary directory next to ``final_path``; rename it onto ``final_path`` on success.

    An existing ``final_path`` is refused unless ``overwrite`` (then it is replaced only once the new
    database is complete).  On any exception the temporary directory is removed and the old database,
    if any, is left as it was, so a database at ``final_path`` is always a complete one.
    """
    final_path = os.path.abspath(os.fspath(final_path))
    recover_interrupted_build(final_path)
    check_target(final_path, overwrite)
    parent, name = os.path.split(final_path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 -> what mkdir would have made
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
        fsync_directory(parent)
        if old is not None:
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.unlink(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

