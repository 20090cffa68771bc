"""The registry of database backends: a backend defined here, registered by one decorator, is written by
`caffeish convert`, recognised on disk, opened by open_db and read by a Data layer; unknown names are refused."""
import os

import numpy
import pytest

from caffeish import io as cio
from caffeish.data import db as dbmod
from caffeish.data.db import (DATABASES, NO, SURE, DatabaseBackend, RecordDB, backend_name, get_backend, open_db,
                              register_backend, sniff_backend, writable_backends)
from caffeish.errors import CaffeishError
from caffeish.net import TEST, Net
from helpers import caffeish_in_process as cli

MARKER = "DATUMDIR"  # the file that says "this directory is a datum directory": the keys, one per line (hex)


class DatumDir(RecordDB):
    """A directory with one serialized Datum per file and a DATUMDIR file naming the keys in order."""

    def __init__(self, path, *, check_datums=True):
        self.path = os.fspath(path)
        if not os.path.isfile(os.path.join(self.path, MARKER)):
            hint = dbmod.looks_like_hint(self.path, "datumdir")
            raise CaffeishError(f"is not a datum directory: no {MARKER} file{hint}", path=self.path)
        with open(os.path.join(self.path, MARKER)) as f:
            self.keys = [bytes.fromhex(line) for line in f.read().split()]
        if check_datums and not self.keys:
            raise CaffeishError("the database is empty (no records)", path=self.path)

    def get(self, key):
        key = key.encode() if isinstance(key, str) else bytes(key)
        if key not in self.keys:
            return None
        with open(os.path.join(self.path, key.hex()), "rb") as f:
            return f.read()

    def cursor(self):
        return DatumDirCursor(self)

    def keys_count(self):
        return len(self.keys)

    def close(self):
        pass


class DatumDirCursor:
    def __init__(self, db):
        self._db = db
        self.seek_first()

    def seek_first(self):
        self._index = 0
        return self.valid()

    def valid(self):
        return self._index < len(self._db.keys)

    def next(self):
        if self.valid():
            self._index += 1
        return self.valid()

    def key(self):
        return self._db.keys[self._index]

    def value(self):
        return self._db.get(self.key())

    def close(self):
        pass


class DatumDirWriter:
    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.keys = []

    def put_record(self, record):
        key = record.key.encode() if isinstance(record.key, str) else bytes(record.key)
        with open(os.path.join(self.path, key.hex()), "wb") as f:
            f.write(record.datum().SerializeToString())
        self.keys.append(key)

    def close(self):
        with open(os.path.join(self.path, MARKER), "w") as f:
            f.write("".join(k.hex() + "\n" for k in self.keys))

    def abort(self):
        pass


class DatumDirBackend(DatabaseBackend):
    name = "datumdir"
    aliases = ("dd",)
    title = "datum directory"
    noun = "a datum directory"
    write_options = frozenset({"batch_size"})

    @classmethod
    def recognise(cls, path):
        return SURE if os.path.isfile(os.path.join(path, MARKER)) else NO

    @classmethod
    def open_reader(cls, path, **options):
        return DatumDir(path, **options)

    @classmethod
    def open_writer(cls, path, *, final=None, batch_size=None):
        return DatumDirWriter(path)


@pytest.fixture
def datumdir(monkeypatch):
    """DatumDirBackend registered for one test (the registry is put back as it was afterwards)."""
    monkeypatch.setattr(DATABASES, "_entries", dict(DATABASES._entries))
    register_backend(DatumDirBackend)
    return DatumDirBackend


def test_the_builtin_backends_are_registered():
    assert DATABASES.names() == ["h5", "hdf5", "leveldb", "lmdb"]
    assert [b.name for b in writable_backends()] == ["hdf5", "lmdb"]
    assert get_backend("H5") is get_backend("hdf5") and get_backend(" LMDB ").name == "lmdb"
    from caffeish import caffe_pb2
    assert get_backend(caffe_pb2.DataParameter.LMDB).name == "lmdb"
    assert get_backend(caffe_pb2.DataParameter.LEVELDB).name == "leveldb"


def test_unknown_names_get_the_registry_error_listing_the_known_ones(tmp_path, capsys):
    with pytest.raises(CaffeishError) as e:
        open_db(tmp_path, "lmbd")
    assert str(e.value) == (f"{tmp_path}: unknown database type 'lmbd'; did you mean 'lmdb'? (known types: h5, hdf5, "
                            "leveldb, lmdb)")
    with pytest.raises(CaffeishError, match=r"^unknown database type 'rocksdb' \(known types: h5, hdf5, leveldb, "
                                            r"lmdb\)$"):
        backend_name("rocksdb")
    code, _, err = cli(capsys, "convert", "npz", "--backend", "rocksdb", tmp_path / "a.npz", tmp_path / "db")
    assert code == 1 and "unknown database type 'rocksdb' (known types: h5, hdf5, leveldb, lmdb)" in err
    code, _, err = cli(capsys, "compute-mean", "--backend", "rocksdb", tmp_path)
    assert code == 1 and "unknown database type 'rocksdb' (known types: h5, hdf5, leveldb, lmdb)" in err


def test_a_registered_backend_is_written_recognised_opened_and_read_by_a_data_layer(tmp_path, capsys, datumdir):
    assert DATABASES.names() == ["datumdir", "dd", "h5", "hdf5", "leveldb", "lmdb"]
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 4, 6), dtype=numpy.uint8)
    numpy.savez(tmp_path / "d.npz", data=images, label=numpy.arange(5) % 3)
    # `caffeish convert` builds one (atomically, like every database), by its name or its alias
    code, out, err = cli(capsys, "convert", "npz", "--backend", "datumdir", tmp_path / "d.npz", tmp_path / "dd")
    assert code == 0, err
    assert out.strip() == f"datum directory database: {tmp_path / 'dd'} (5 records)"
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "dd"]
    code, _, err = cli(capsys, "convert", "npz", "--backend", "DD", tmp_path / "d.npz", tmp_path / "dd2")
    assert code == 0, err
    code, _, err = cli(capsys, "convert", "npz", "--backend", "dd", "--rows-per-file", 2, tmp_path / "d.npz",
                       tmp_path / "dd3")
    assert code == 1 and "--rows-per-file applies to --backend hdf5 only" in err
    # recognised on disk, opened by name, alias or "auto"
    assert sniff_backend(tmp_path / "dd") == backend_name("auto", tmp_path / "dd") == "datumdir"
    for backend in ("datumdir", "dd", "auto"):
        with open_db(tmp_path / "dd", backend) as db:
            assert isinstance(db, DatumDir) and len(db) == 5
            got = [(k, cio.parse_datum(v)) for k, v in db]
    assert [k for k, _ in got] == [b"%08d" % i for i in range(5)]
    numpy.testing.assert_array_equal(numpy.stack([cio.datum_to_array(d) for _, d in got]), images)
    assert [d.label for _, d in got] == [0, 1, 2, 0, 1]
    # the other readers point at it
    with pytest.raises(CaffeishError, match=r"is not an LMDB: the directory has no data.mdb \(it looks like a datum "
                                            r"directory: use backend datumdir\)"):
        open_db(tmp_path / "dd")
    with pytest.raises(CaffeishError, match="cannot tell the database type \\(neither a datum directory, an HDF5 "
                                            "database nor an LMDB\\)"):
        sniff_backend(tmp_path)
    # a Data layer with no backend set reads it, as Caffe's Data layer reads an LMDB
    net = Net(f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
                 data_param {{ source: "{tmp_path / 'dd'}" batch_size: 4 }} }}""", TEST)
    with net:
        net.forward()
        numpy.testing.assert_array_equal(net.blobs["data"].data, images[:4])
        numpy.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2, 0])
        net.forward()  # wraps around at the end
        numpy.testing.assert_array_equal(net.blobs["data"].data, images[[4, 0, 1, 2]])
    # compute-mean too
    code, _, err = cli(capsys, "compute-mean", tmp_path / "dd")
    assert code == 0 and f"mean_value channel [0]: {images[:, 0].mean():g}" in err


def test_a_backend_is_gone_once_its_test_is_over():
    assert "datumdir" not in DATABASES and DATABASES.names() == ["h5", "hdf5", "leveldb", "lmdb"]
