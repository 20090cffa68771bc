"""The LevelDB database backend (registered as ``leveldb``, ``DataParameter.LEVELDB``): Caffe's older
default, read (never written) through ``plyvel``, the ``[leveldb]`` extra.

``open_db`` and the Data layer refuse it (its ``refusal`` says to convert it); its reader, ``LevelDB``,
serves ``caffeish convert leveldb``, which copies such a database into an LMDB record for record.
"""
import os

from ..errors import CaffeishError
from ..proto import caffe_pb2
from .db import NO, SURE, DatabaseBackend, RecordDB, _key_bytes, looks_like_datum, recognised, register_backend


@register_backend
class LevelDBBackend(DatabaseBackend):
    """A directory LevelDB keeps (``CURRENT``, ``MANIFEST-*``, ``*.ldb``): key -> Datum, in key order."""
    name = "leveldb"
    title = "LevelDB"
    noun = "a LevelDB"
    proto_db = caffe_pb2.DataParameter.LEVELDB
    refusal = ("LevelDB is not supported; convert to LMDB with `caffeish convert leveldb SRC DST`, which copies a "
               "LevelDB of Caffe's into an LMDB, and set backend: LMDB")

    @classmethod
    def recognise(cls, path):
        return SURE if os.path.isdir(path) and os.path.isfile(os.path.join(path, "CURRENT")) else NO

    @classmethod
    def open_reader(cls, path, **options):
        return LevelDB(path, **options)


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
        if not LevelDBBackend.recognise(self.path):
            found = recognised(self.path)
            hint = f" (it looks like {found[0].noun}, which needs no conversion)" if len(found) == 1 else ""
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
