"""The LMDB database backend (registered as ``lmdb``, ``DataParameter.LMDB``): shared read-only
environments, batched commits, a map that grows."""
import os
import threading

import lmdb

from ..errors import CaffeishError
from ..proto import caffe_pb2
from .db import (COMMIT_EVERY, INITIAL_MAP_SIZE, MAX_MAP_SIZE, MAX_READERS, MAYBE, NO, SURE, DatabaseBackend,
                 RecordDB, _key_bytes, looks_like_datum, looks_like_hint, register_backend)


@register_backend
class LMDBBackend(DatabaseBackend):
    """Caffe's default database: a directory holding ``data.mdb`` (or a bare data file), key -> Datum."""
    name = "lmdb"
    title = "LMDB"
    noun = "an LMDB"
    proto_db = caffe_pb2.DataParameter.LMDB
    write_options = frozenset({"map_size", "batch_size"})

    @classmethod
    def recognise(cls, path):
        if os.path.isdir(path):
            return SURE if os.path.isfile(os.path.join(path, "data.mdb")) else NO
        return MAYBE if os.path.isfile(path) else NO  # a bare data file (subdir=False) may have any name

    @classmethod
    def open_reader(cls, path, **options):
        return LMDB(path, "r", **options)

    @classmethod
    def open_writer(cls, path, *, final=None, **options):
        if final is not None:
            options.setdefault("name", final)
        return LMDB(path, "w", **options)


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
            try:
                _check_length(env, path, subdir)
                _verify(path, subdir)
            except BaseException:
                env.close()
                raise
            entry = _READERS[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _check_length(env, path, subdir):
    """Refuse a data file shorter than its pages: reading past its end would kill the process (SIGBUS)."""
    data = os.path.join(path, "data.mdb") if subdir else path
    try:
        need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    except lmdb.Error as e:
        raise CaffeishError(f"is a damaged LMDB ({e})", path=path) from None
    have = os.path.getsize(data)
    if have < need:
        raise CaffeishError(f"is a truncated LMDB: {data} holds {have} bytes but its pages need {need} (was it "
                            "copied while being written, or cut short by a full disk?); rebuild or recopy it",
                            path=path)


#: LMDB data files up to this size are checked page by page on first open (py-lmdb's offline verifier, about
#: 1 s per GiB): liblmdb itself aborts the process on some damaged pages.  ``CAFFEISH_VERIFY_LMDB`` = 1
#: checks every file, 0 none.
VERIFY_MAX_BYTES = 1 << 30
_VERIFIED = set()


def _verify(path, subdir):
    data = os.path.join(path, "data.mdb") if subdir else path
    st = os.stat(data)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    mode = os.environ.get("CAFFEISH_VERIFY_LMDB", "").strip()
    if key in _VERIFIED or mode == "0" or (mode != "1" and st.st_size > VERIFY_MAX_BYTES):
        return
    try:
        from lmdb import verify as lmdb_verify
    except ImportError:  # an older py-lmdb: no verifier
        return
    try:
        problems = lmdb_verify.verify(data, subdir=False)
    except Exception as e:  # VerifyError: the file cannot even be walked
        problems = [str(e)]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CaffeishError(f"is a damaged LMDB: {problems[0]}{more}; rebuild it (caffeish convert) or recopy it",
                            path=path)
    _VERIFIED.add(key)


def _damaged(path, error):
    return CaffeishError(f"is a damaged LMDB ({error}); rebuild it (caffeish convert) or recopy it", path=path)


def _release_reader(key):
    with _READERS_LOCK:
        entry = _READERS.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _READERS[key]
                entry[0].close()


class LMDB(RecordDB):
    """An LMDB environment, read-only (``mode="r"``) or for building (``mode="w"``: ``transaction()``, or
    ``put_record`` with ``close()`` committing and ``abort()`` dropping a failed build)."""
    backend = "lmdb"

    def __init__(self, path, mode="r", *, check_datums=True, map_size=None, batch_size=COMMIT_EVERY, name=None):
        self.path = os.fspath(path)
        self.name = os.fspath(name) if name is not None else self.path  # for messages: a build's final path
        self.mode = mode
        self.batch_size = int(batch_size)
        self._records = None  # the transaction of put_record
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
                raise CaffeishError(f"is not an LMDB: the directory has no data.mdb{looks_like_hint(path, 'lmdb')}",
                                    path=path)
            subdir = True
        else:
            subdir = False
        st = os.stat(os.path.join(path, "data.mdb") if subdir else path)
        self._reader_key = (st.st_dev, st.st_ino)
        return _acquire_reader(self._reader_key, path, subdir)

    def _check_first_datum(self):
        try:
            with self.env.begin() as txn:
                cur = txn.cursor()
                if not cur.first():
                    raise CaffeishError("the database is empty (no records)", path=self.path)
                key, value = cur.key(), cur.value()
        except lmdb.Error as e:
            raise _damaged(self.path, e) from None
        if not looks_like_datum(value):
            raise CaffeishError(f"the LMDB holds no Datums: its first record (key {key!r}) does not parse as a "
                                "caffe Datum with pixels", path=self.path)

    # reading
    def cursor(self):
        return LMDBCursor(self.env, self.path)

    def get(self, key):
        try:
            with self.env.begin() as txn:
                return txn.get(_key_bytes(key))
        except lmdb.Error as e:
            raise _damaged(self.path, e) from None

    def keys_count(self):
        try:
            return int(self.env.stat()["entries"])
        except lmdb.Error as e:
            raise _damaged(self.path, e) from None

    # writing
    def transaction(self):
        if self.mode != "w":
            raise ValueError("transaction() needs a database opened with mode='w'")
        return LMDBTransaction(self, self.batch_size)

    def put_record(self, record):
        """Add a ``Record`` as its serialized Datum (committed every ``batch_size`` records and by ``close``)."""
        if self._records is None:
            self._records = self.transaction()
        self._records.put(record.key, record.datum().SerializeToString())

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
                                        path=self.name) from None
                self.env.set_mapsize(size)
            except lmdb.Error as e:  # a full disk, a file-size limit, an I/O error
                raise CaffeishError(f"cannot write the LMDB ({e}): is the disk full? Nothing was written there "
                                    "(an older database at this path is kept)", path=self.name) from None

    def abort(self):
        """Close a build without committing its pending records (it failed; its directory is removed next)."""
        self._records = None
        if self.mode == "w" and self.env is not None:
            env, self.env = self.env, None
            env.close()
        else:
            self.close()

    def close(self):
        if self.env is not None:
            if self.mode == "w":
                if self._records is not None:
                    records, self._records = self._records, None
                    records.commit()
                try:
                    self.env.sync(True)
                except lmdb.Error as e:
                    raise CaffeishError(f"cannot write the LMDB ({e}): is the disk full?", path=self.name) from None
                finally:
                    env, self.env = self.env, None
                    env.close()
            else:
                _release_reader(self._reader_key)
            self.env = None


class LMDBCursor:
    """Caffe's db::Cursor: ``seek_first``, ``valid``, ``next``, ``key``, ``value`` (starts on the first record).

    A damaged database (LMDB's MDB_CORRUPTED, MDB_PAGE_NOTFOUND...) raises CaffeishError naming ``path``.
    """

    def __init__(self, env, path=""):
        self._path = path
        try:
            self._txn = env.begin(buffers=False)
            self._cur = self._txn.cursor()
            self._valid = self._cur.first()
        except lmdb.Error as e:
            raise _damaged(path, e) from None

    def seek_first(self):
        try:
            self._valid = self._cur.first()
        except lmdb.Error as e:
            raise _damaged(self._path, e) from None
        return self._valid

    seek_to_first = seek_first

    def valid(self):
        return self._valid

    def next(self):
        """Advance; False (and ``valid()`` False) once past the last record."""
        try:
            self._valid = self._cur.next() if self._valid else False
        except lmdb.Error as e:
            raise _damaged(self._path, e) from None
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
