"""The databases Caffe's data comes in (LMDB, HDF5, LevelDB), behind one interface (``open_db``) and a registry
of backends (``DATABASES``); ``atomic_db_path`` builds a database at a temporary sibling path and renames it into
place only when the build succeeds.
"""
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile

import numpy
from google.protobuf import message as pb_message

from .. import io as cio
from ..atomic import current_umask, fsync_directory, process_alive
from ..errors import CaffeishError
from ..proto import caffe_pb2
from ..registry import Registry

log = logging.getLogger("caffeish")

COMMIT_EVERY = 1000
INITIAL_MAP_SIZE = 1 << 26      # 64 MiB; doubled on demand
MAX_MAP_SIZE = 1 << 44          # 16 TiB: beyond this a "full" map is a real problem
MAX_READERS = 126


# -- the registry of backends ----------------------------------------------------------------------------------
#: name or alias -> DatabaseBackend subclass; unknown names get its one-line error listing the known ones.
DATABASES = Registry("database")

#: What ``DatabaseBackend.recognise`` answers: not this kind, could be (a catch-all), certainly (a marker file).
NO, MAYBE, SURE = 0, 1, 2


class DatabaseBackend:
    """One kind of database as the registry knows it.  A backend module subclasses this, sets the class
    attributes and the methods it supports, and decorates the subclass with ``@register_backend``.

    ``DATABASES`` holds one ``DatabaseBackend`` per kind of database (LMDB, HDF5, LevelDB: the
    ``*_backend`` modules of this package, each registering itself); ``open_db``, ``sniff_backend``,
    ``backend_name``, the converters, ``caffeish convert``/``extract-features`` and the Data layer look
    backends up there, by name, alias, ``DataParameter.DB`` value or what is on disk.

    LevelDB, Caffe's older default, is registered so that its name, its ``DataParameter.DB`` value and
    its directories are known, but ``open_db`` and the Data layer refuse it (``refusal``): its reader
    serves ``caffeish convert leveldb``, which copies such a database into an LMDB.

    Adding a backend: a module ``caffeish/data/<name>_backend.py`` with a ``DatabaseBackend`` subclass
    decorated ``@register_backend``; importing ``caffeish.data`` imports every ``*_backend`` module.
    """

    name = ""                   # its registry name, lower case: what ``--backend`` and ``open_db`` take
    aliases = ()                # other names it answers to ("h5")
    title = ""                  # in messages: "LMDB"
    noun = ""                   # in messages: "an LMDB"
    proto_db = None             # its ``caffe_pb2.DataParameter.DB`` value, when Caffe's proto names it
    refusal = None              # set: ``open_db`` and the Data layer refuse the backend with this message
    write_options = None        # the ``open_writer`` options it takes (a frozenset); None: it cannot be written
    encoded_images = True       # holds encoded (compressed) images
    one_shape = False           # every record must have the same shape
    float_labels = False        # keeps non-integer labels (a Datum's label is an integer)
    source_title = None         # what the path a writer's ``close()`` returns is (None: it returns None)

    @classmethod
    def recognise(cls, path):
        """``SURE`` when the existing ``path`` is a database of this kind, ``MAYBE`` when it could be one,
        else ``NO``."""
        return NO

    @classmethod
    def open_reader(cls, path, **options):
        """A reader (a ``RecordDB``) of the database at ``path``; ``check_datums`` (default True) refuses an
        empty database or one whose first value is not a Datum."""
        raise NotImplementedError

    @classmethod
    def open_writer(cls, path, *, final=None, **options):
        """A writer building a new database at ``path`` (``final``: where it will be renamed to, for messages
        and the paths it records).  A writer has ``put_record(record)``, ``close()`` (returns the path a
        ``source_title`` names, or None) and ``abort()`` (drops a failed build)."""
        raise NotImplementedError


def register_backend(cls):
    """Class decorator: register a ``DatabaseBackend`` subclass under its name and its aliases."""
    for name in (cls.name, *cls.aliases):
        DATABASES.register(name)(cls)
    return cls


def backends():
    """The registered backends (each once), by name."""
    return sorted({id(b): b for _, b in DATABASES.items()}.values(), key=lambda b: b.name)


def readable_backends():
    """The backends ``open_db`` reads (not refused)."""
    return [b for b in backends() if b.refusal is None]


def writable_backends():
    """The backends ``open_db(..., "w")`` and the converters build."""
    return [b for b in backends() if b.write_options is not None]


def _or(words):
    words = list(words)
    return " or ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " or " + words[-1]


def names_text(kinds):
    """``"hdf5 or lmdb"``: the names of ``kinds``, for help and messages."""
    return _or(b.name for b in kinds)


def get_backend(backend, path=None):
    """The registered backend named ``backend`` (a name or alias, any case, or a ``DataParameter.DB`` value);
    ``"auto"`` recognises the database at ``path``.  A refused backend is returned as well."""
    if isinstance(backend, (int, numpy.integer)) and not isinstance(backend, bool):
        for kind in backends():
            if kind.proto_db is not None and kind.proto_db == backend:
                return kind
        values = sorted(b.proto_db for b in backends() if b.proto_db is not None)
        known = ", ".join(f"{caffe_pb2.DataParameter.DB.Name(v)} = {v}" for v in values)
        raise CaffeishError(f"unknown database backend {int(backend)} (known DataParameter.DB values: {known})",
                            path=path)
    name = str(backend).strip().lower()
    if name == "auto":
        return DATABASES.get(sniff_backend(path, refuse=False))
    return DATABASES.get(name, os.fspath(path) if path is not None else "")


def reading_backend(backend, path=None):
    """``get_backend`` for reading: a refused backend (LevelDB) raises its ``refusal``."""
    kind = get_backend(backend, path)
    if kind.refusal is not None:
        raise CaffeishError(kind.refusal, path=path)
    return kind


def writing_backend(backend, path=None):
    """``get_backend`` for building a database: a backend that cannot be written is refused."""
    kind = get_backend(backend, path)
    if kind.write_options is None:
        raise CaffeishError(f"writing {kind.title} is not supported; give {names_text(writable_backends())}",
                            path=path)
    return kind


def backend_name(backend, path=None):
    """The registry name (``"lmdb"``, ``"hdf5"``...) of a backend ``open_db`` reads, from a name, alias or
    ``DataParameter.DB`` value (``"auto"``: recognised at ``path``); a refused one (LevelDB) raises."""
    return reading_backend(backend, path).name


def recognised(path):
    """The backends that recognise the existing ``path`` best (``SURE`` before ``MAYBE``): one, several (an
    ambiguous path) or none."""
    path = os.fspath(path)
    scores = [(kind.recognise(path), kind) for kind in backends()]
    best = max((score for score, _ in scores), default=NO)
    return [kind for score, kind in scores if score == best] if best > NO else []


def looks_like_hint(path, name):
    """`` (it looks like an HDF5 database: use backend hdf5)``: what another backend than ``name`` makes of
    ``path``, for a reader's "is not a ..." message (empty when no other backend recognises it)."""
    found = recognised(path)
    if len(found) != 1 or found[0].name == name:
        return ""
    other = found[0]
    if other.refusal is not None:
        return f" (it looks like {other.noun}: {other.refusal})"
    return f" (it looks like {other.noun}: use backend {other.name})"


def sniff_backend(path, refuse=True):
    """The name of the backend of an existing database ``path``, as the registered backends recognise it
    (a refused one, LevelDB, raises its ``refusal`` unless ``refuse`` is False)."""
    if path is None:
        raise CaffeishError("backend auto needs the database's path to recognise it")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeishError("database does not exist", path=path)
    found = recognised(path)
    if not found:
        nouns = [b.noun for b in readable_backends()]
        neither = f"neither {', '.join(nouns[:-1])} nor {nouns[-1]}" if len(nouns) > 1 else f"not {_or(nouns)}"
        raise CaffeishError(f"cannot tell the database type ({neither}); give the backend", path=path)
    if len(found) > 1:
        raise CaffeishError(f"cannot tell the database type (it looks like {_or(b.noun for b in found)}); give "
                            "the backend", path=path)
    kind = found[0]
    if refuse and kind.refusal is not None:
        raise CaffeishError(kind.refusal, path=path)
    return kind.name


def open_db(path, backend="lmdb", mode="r", **options):
    """Open a database for reading (``mode="r"``) or build a new one (``mode="w"``).

    ``backend``: a registered name or alias (``"lmdb"``, ``"hdf5"``), ``"auto"`` (reading: recognise
    the path) or a ``caffe_pb2.DataParameter.DB`` value.  Reading options: ``check_datums`` (default
    True: refuse an empty database or one whose first value is not a Datum).  Writing options: those of
    the backend's ``open_writer`` (LMDB ``map_size``, ``batch_size``, ``name``; HDF5 ``rows_per_file``,
    ``list_prefix``, ``batch_size``).

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
        db.put_record(Record(key, label, array))                  # or, Caffe's way, for LMDB:
        txn = db.transaction()
        txn.put(key, datum.SerializeToString())                   # committed every ``batch_size`` puts
        txn.commit()                                              # commits the rest
        db.close()                                                # (``abort()`` drops a failed build)

    An LMDB writer starts with a modest map and doubles it whenever LMDB reports
    ``MapFullError``, so a conversion never fails with ``MDB_MAP_FULL``.

    HDF5 holds arrays, not key/value records: a converter writes ``data`` and
    ``label`` datasets into ``.h5`` files plus a ``list.txt`` naming them (the
    ``source`` of an HDF5Data layer).  Opened for reading, such a directory, list
    file or single ``.h5`` file shows the same cursor, yielding one serialized Datum
    per row, so tools like ``compute-mean`` work on either backend.
    """
    if mode == "r" and not os.path.lexists(os.fspath(path)):
        recover_interrupted_build(path)  # a killed `convert --overwrite` may have left it aside
    if mode == "r":
        return reading_backend(backend, path).open_reader(path, **options)
    if mode == "w":
        return writing_backend(backend, path).open_writer(path, **options)
    raise ValueError(f"open_db mode must be 'r' or 'w', not {mode!r}")


# -- records ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Record:
    """What a writer's ``put_record`` takes: a key, a label (None: a Datum without one, an HDF5 row's 0) and
    either a C x H x W array or an encoded image."""
    key: str
    label: float
    array: numpy.ndarray = None     # C x H x W
    encoded: bytes = None           # an image file's bytes (backends with ``encoded_images`` only)
    raw_flag: bool = False          # a raw Datum says ``encoded: false`` (convert_imageset's do; MNIST/CIFAR's don't)

    def datum(self):
        if self.encoded is not None:
            datum = caffe_pb2.Datum(data=self.encoded, encoded=True, label=int(self.label))
            if self.array is not None:
                datum.channels, datum.height, datum.width = self.array.shape
            return datum
        datum = cio.array_to_datum(self.array, None if self.label is None else int(self.label))
        if self.raw_flag:
            datum.encoded = False
        return datum


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

