"""caffeish.data.db: LMDB and HDF5 behind one interface, recognised on disk, map growth, atomic builds, clear errors."""
import os

import h5py
import lmdb
import numpy
import pytest

from caffeish import caffe_pb2
from caffeish import io as cio
from caffeish.data.db import atomic_db_path, open_db, sniff_backend
from caffeish.data.hdf5_backend import HDF5Writer
from caffeish.errors import CaffeishError


def _datum(i, shape=(3, 4, 5)):
    arr = numpy.random.default_rng(i).integers(0, 256, shape, dtype=numpy.uint8)
    return arr, cio.array_to_datum(arr, label=i % 10).SerializeToString()


def _count(path, backend="lmdb"):
    with open_db(path, backend) as db:
        return db.keys_count()


def _build_lmdb(path, n, **options):
    db = open_db(path, "lmdb", "w", **options)
    txn = db.transaction()
    for i in range(n):
        txn.put("%08d" % i, _datum(i)[1])
    txn.commit()
    size = db.map_size
    db.close()
    return size


def test_lmdb_write_then_read_with_cursor(tmp_path):
    path = tmp_path / "db"
    _build_lmdb(path, 25, batch_size=7)
    db = open_db(path)
    assert len(db) == db.keys_count() == 25
    cur = db.cursor()
    keys = []
    while cur.valid():
        keys.append(cur.key())
        numpy.testing.assert_array_equal(cio.datum_to_array(cio.parse_datum(cur.value())), _datum(len(keys) - 1)[0])
        cur.next()
    assert keys == [b"%08d" % i for i in range(25)]
    assert cur.next() is False and not cur.valid()  # stays past the end
    assert cur.seek_first() and cur.key() == b"00000000"
    assert db.get("00000003") == _datum(3)[1] and db.get(b"nope") is None
    assert [k for k, _ in db][:2] == [b"00000000", b"00000001"]
    cur.close()
    db.close()
    assert _count(path, caffe_pb2.DataParameter.LMDB) == 25
    assert _count(path / "data.mdb") == 25  # a bare data.mdb file (subdir=False)
    # Two readers of one database in one process share its environment (LMDB allows one per process).
    a, b = open_db(path), open_db(path)
    assert a.env is b.env
    a.close()
    assert b.cursor().valid() and len(b) == 25
    b.close()
    assert sniff_backend(path) == "lmdb"


def test_lmdb_map_grows_instead_of_failing(tmp_path):
    # ~600 records of 3 KiB each need far more than the 64 KiB map we start with.
    db = open_db(tmp_path / "db", "lmdb", "w", map_size=1 << 16, batch_size=100)
    payload = numpy.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=numpy.uint8)
    txn = db.transaction()
    for i in range(600):
        txn.put(b"%05d" % i, cio.array_to_datum(payload, i).SerializeToString())
    txn.commit()
    assert db.map_size > 1 << 20
    db.close()
    with open_db(tmp_path / "db") as read:
        assert len(read) == 600 and cio.parse_datum(read.get(b"00599")).label == 599
    # The same through a value bigger than the whole initial map, committed at once.
    big = open_db(tmp_path / "big", "lmdb", "w", map_size=1 << 15)
    txn = big.transaction()
    txn.put(b"k", bytes(1 << 18))
    txn.commit()
    assert big.get(b"k") == bytes(1 << 18)
    big.close()


def test_leveldb_and_unknown_backends_are_refused(tmp_path):
    with pytest.raises(CaffeishError, match="LevelDB is not supported; convert to LMDB"):
        open_db(tmp_path, caffe_pb2.DataParameter.LEVELDB)
    with pytest.raises(CaffeishError, match="LevelDB is not supported"):
        open_db(tmp_path, "leveldb")
    with pytest.raises(CaffeishError, match=r"unknown database type 'rocksdb' \(known types: h5, hdf5, leveldb, lmdb\)"):
        open_db(tmp_path, "rocksdb")
    with pytest.raises(CaffeishError, match="writing LevelDB is not supported; give hdf5 or lmdb"):
        open_db(tmp_path / "new", "leveldb", "w")
    with pytest.raises(CaffeishError, match=r"unknown database backend 7 \(known DataParameter.DB values: LEVELDB = 0, "
                                            r"LMDB = 1\)"):
        open_db(tmp_path, 7)


def test_sniffing_asks_every_registered_backend(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(CaffeishError, match="cannot tell the database type \\(neither an HDF5 database nor an LMDB\\); "
                                            "give the backend"):
        sniff_backend(tmp_path / "plain")
    with pytest.raises(CaffeishError, match="database does not exist"):
        sniff_backend(tmp_path / "missing")
    _build_lmdb(tmp_path / "both", 1)
    assert sniff_backend(tmp_path / "both") == sniff_backend(tmp_path / "both" / "data.mdb") == "lmdb"
    (tmp_path / "both" / "list.txt").write_text("")  # an LMDB directory that also holds an HDF5 list: ambiguous
    with pytest.raises(CaffeishError, match="it looks like an HDF5 database or an LMDB\\); give the backend"):
        sniff_backend(tmp_path / "both")
    assert open_db(tmp_path / "both", "lmdb").keys_count() == 1
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(CaffeishError, match="ldb: LevelDB is not supported; convert to LMDB"):
        sniff_backend(tmp_path / "ldb")
    with pytest.raises(CaffeishError, match="is not an HDF5 database: the directory has no list.txt \\(it looks like a "
                                            "LevelDB: LevelDB is not supported"):
        open_db(tmp_path / "ldb", "hdf5")


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(CaffeishError, match="does not exist") as e:
        open_db(tmp_path / "missing_lmdb")
    assert "missing_lmdb" in str(e.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(CaffeishError, match="is not an LMDB: the directory has no data.mdb"):
        open_db(tmp_path / "plain")
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(CaffeishError, match="looks like a LevelDB"):
        open_db(tmp_path / "ldb")
    open_db(tmp_path / "empty", "lmdb", "w").close()
    with pytest.raises(CaffeishError, match="empty") as e:
        open_db(tmp_path / "empty")
    assert "empty" in str(e.value)
    env = lmdb.open(str(tmp_path / "junk"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"\xff\xfe not a datum")
    env.close()
    with pytest.raises(CaffeishError, match="holds no Datums") as e:
        open_db(tmp_path / "junk")
    assert str(tmp_path / "junk") in str(e.value)
    with open_db(tmp_path / "junk", check_datums=False) as db:
        assert db.keys_count() == 1


def test_hdf5_writer_and_reader_show_datums(tmp_path):
    rows = numpy.random.default_rng(0).integers(0, 256, (7, 3, 2, 2), dtype=numpy.uint8)
    with atomic_db_path(tmp_path / "h5") as tmp:
        writer = HDF5Writer(tmp, rows_per_file=3, list_prefix=tmp_path / "h5", batch_size=2)
        for i, row in enumerate(rows):
            writer.put_array(row, i)
        assert writer.close() == str(tmp_path / "h5" / "list.txt")
    listed = (tmp_path / "h5" / "list.txt").read_text().split()
    assert listed == [str(tmp_path / "h5" / f"data_{i:05d}.h5") for i in range(3)]
    with h5py.File(listed[0], "r") as f:
        assert f["data"].dtype == numpy.uint8 and f["data"].shape == (3, 3, 2, 2)
        assert f["label"].dtype == numpy.float32 and f["data"].compression == "gzip"
    for source in (tmp_path / "h5", tmp_path / "h5" / "list.txt"):
        db = open_db(source, "hdf5")
        assert len(db) == 7 and sniff_backend(source) == "hdf5"
        got = [(k, cio.parse_datum(v)) for k, v in db]
        assert [k for k, _ in got] == [b"%08d" % i for i in range(7)]
        for i, (_, datum) in enumerate(got):
            assert datum.label == i
            numpy.testing.assert_array_equal(cio.datum_to_array(datum), rows[i])
    assert cio.parse_datum(db.get(b"00000005")).label == 5
    assert len(open_db(listed[2], "hdf5")) == 1  # a single .h5 file
    # float rows are stored as float32 and come back as float_data
    with atomic_db_path(tmp_path / "f") as tmp:
        w = HDF5Writer(tmp)
        w.put_array(numpy.full((2, 1, 1), 0.5), 1.0)
        w.close()
    datum = cio.parse_datum(next(iter(open_db(tmp_path / "f", "hdf5")))[1])
    assert list(datum.float_data) == [0.5, 0.5]


def test_hdf5_errors_are_clear(tmp_path):
    (tmp_path / "list.txt").write_text("a.h5\nmissing.h5\n")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = numpy.zeros((2, 1, 1, 1), numpy.float32)
        f["label"] = numpy.zeros(3, numpy.float32)
    with pytest.raises(CaffeishError, match=r"list.txt:2: HDF5 file 'missing.h5' does not exist"):
        open_db(tmp_path / "list.txt", "hdf5")
    with pytest.raises(CaffeishError, match="'data' has 2 rows but 'label' has 3"):
        open_db(tmp_path / "a.h5", "hdf5")
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["data"] = numpy.zeros((2, 1), numpy.float32)
    with pytest.raises(CaffeishError, match="no 'label' dataset"):
        open_db(tmp_path / "b.h5", "hdf5")
    w = HDF5Writer(tmp_path / "w")
    w.put_array(numpy.zeros((1, 2, 2)), 0)
    with pytest.raises(CaffeishError, match="one shape for all rows"):
        w.put_array(numpy.zeros((1, 3, 3)), 0)


def test_atomic_build_leaves_nothing_on_failure_and_keeps_the_old_db(tmp_path):
    target = tmp_path / "db"
    _build_lmdb(target, 3)
    # An existing target is refused without overwrite, before anything is built.
    with pytest.raises(CaffeishError, match="already exists.*--overwrite") as e:
        with atomic_db_path(target):
            pass
    assert str(target) in str(e.value)
    # A failure mid-build (even an interrupt) removes the temporary build and keeps the old database.
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_db_path(target, overwrite=True) as tmp:
                _build_lmdb(tmp, 10)
                raise exc
        assert sorted(os.listdir(tmp_path)) == ["db"]
        assert _count(target) == 3
    # Success replaces it.
    with atomic_db_path(target, overwrite=True) as tmp:
        _build_lmdb(tmp, 5)
        assert not os.path.exists(tmp_path / "db" / "x")
    assert sorted(os.listdir(tmp_path)) == ["db"]
    assert _count(target) == 5
    # A failed first build leaves no target at all.
    with pytest.raises(RuntimeError):
        with atomic_db_path(tmp_path / "sub" / "new") as tmp:
            _build_lmdb(tmp, 2)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path / "sub") == []
