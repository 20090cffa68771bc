"""LevelDB, Caffe's older default backend: read through plyvel, `caffeish convert leveldb SRC DST` into LMDB."""
import os

import lmdb
import numpy
import pytest

from caffeish import io as cio
from caffeish.errors import CaffeishError
from caffeish.net import TEST, Net
from helpers import caffeish_in_process as cli, caffeish_run as run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def caffe_leveldb(path, count=6):
    """A LevelDB as Caffe's convert_imageset -backend leveldb writes it: keys %08d_<file>, values Datums
    (raw 3 x 4 x 5 BGR bytes; the last one encoded as a PNG file). Returns [(key, array, label)]."""
    plyvel = pytest.importorskip("plyvel")
    rng = numpy.random.default_rng(0)
    records = []
    db = plyvel.DB(str(path), create_if_missing=True, error_if_exists=True)
    for i in range(count):
        array = rng.integers(0, 256, (3, 4, 5), dtype=numpy.uint8)
        key = b"%08d_img%d.jpg" % (i, i)
        if i == count - 1:
            datum = cio.array_to_datum(array, i % 4)
            datum.data, datum.encoded = cio.encode_image(array, "png"), True
        else:
            datum = cio.array_to_datum(array, i % 4)
        db.put(key, datum.SerializeToString())
        records.append((key, array, i % 4))
    db.close()
    return records


def read_lmdb(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    return records


def test_convert_copies_every_record_and_a_data_layer_reads_them(tmp_path):
    records = caffe_leveldb(tmp_path / "train_leveldb")
    proc = run("convert", "leveldb", tmp_path / "train_leveldb", tmp_path / "train_lmdb")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"LMDB database: {tmp_path / 'train_lmdb'} (6 records)"
    assert "Processed 6 records." in proc.stderr
    import plyvel
    source = plyvel.DB(str(tmp_path / "train_leveldb"))
    expected = list(source.iterator())
    source.close()
    assert read_lmdb(tmp_path / "train_lmdb") == expected  # keys and values byte for byte, in key order
    assert [key for key, _ in expected] == [key for key, _, _ in records]
    # a Data layer over the LMDB gives the images and labels that went into the LevelDB
    net = Net(f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
                 data_param {{ source: "{tmp_path / 'train_lmdb'}" batch_size: 6 backend: LMDB }} }}""", TEST)
    with net:
        net.forward()
        numpy.testing.assert_array_equal(net.blobs["data"].data, numpy.stack([a for _, a, _ in records]))
        numpy.testing.assert_array_equal(net.blobs["label"].data, [label for _, _, label in records])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_leveldb", "train_lmdb"]


def test_leveldb_reader_is_a_cursor_like_the_lmdb_one(tmp_path):
    from caffeish.data.leveldb_backend import LevelDB
    records = caffe_leveldb(tmp_path / "ldb", count=3)
    with LevelDB(tmp_path / "ldb") as db:
        assert len(db) == 3 and db.backend == "leveldb"
        cur = db.cursor()
        seen = []
        while cur.valid():
            seen.append((cur.key(), cio.datum_to_array(cio.parse_datum(cur.value()))))
            cur.next()
        assert not cur.next() and not cur.valid()
        assert cur.seek_first() and cur.key() == records[0][0]
        cur.close()
        assert [k for k, _ in seen] == [k for k, _, _ in records]
        for (_, got), (_, array, _) in zip(seen, records):
            numpy.testing.assert_array_equal(got, array)
        assert db.get(records[1][0]) == dict(db)[records[1][0]] and db.get(b"nope") is None


def test_bad_sources_and_destinations_are_clear_and_write_nothing(tmp_path, capsys):
    plyvel = pytest.importorskip("plyvel")
    caffe_leveldb(tmp_path / "ldb", count=2)
    dst = tmp_path / "dst"
    (tmp_path / "plain").mkdir()
    empty = plyvel.DB(str(tmp_path / "empty_ldb"), create_if_missing=True)
    empty.close()
    junk = plyvel.DB(str(tmp_path / "junk_ldb"), create_if_missing=True)
    junk.put(b"a", b"\xff\xfe not a datum")
    junk.close()
    lmdb.open(str(tmp_path / "an_lmdb"), map_size=1 << 20).close()
    (tmp_path / "taken").mkdir()
    cases = [
        ((tmp_path / "missing", dst), f"{tmp_path / 'missing'}: database does not exist"),
        ((tmp_path / "plain", dst), f"{tmp_path / 'plain'}: is not a LevelDB: no CURRENT file in the directory"),
        ((tmp_path / "an_lmdb", dst), "(it looks like an LMDB, which needs no conversion)"),
        ((tmp_path / "empty_ldb", dst), f"{tmp_path / 'empty_ldb'}: the database is empty"),
        ((tmp_path / "junk_ldb", dst), "the LevelDB holds no Datums: its first record (key b'a')"),
        ((tmp_path / "ldb", tmp_path / "taken"), f"{tmp_path / 'taken'}: already exists; remove it or pass --overwrite"),
        ((tmp_path / "ldb", tmp_path / "ldb"), "the LMDB to write is the LevelDB to read"),
    ]
    for args, message in cases:
        code, _, err = cli(capsys, "convert", "leveldb", *args)
        assert code == 1 and message in err, (args, err)
    held = plyvel.DB(str(tmp_path / "ldb"))  # a LevelDB another program has open: its LOCK is taken
    try:
        code, _, err = cli(capsys, "convert", "leveldb", tmp_path / "ldb", dst)
        assert code == 1 and f"{tmp_path / 'ldb'}: cannot open the LevelDB" in err and "LOCK" in err
    finally:
        held.close()
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert os.listdir(tmp_path / "taken") == []
    with pytest.raises(CaffeishError, match="LevelDB is not supported; convert to LMDB .*caffeish convert leveldb"):
        Net(f"""layer {{ name: "data" type: "Data" top: "data"
                         data_param {{ source: "{tmp_path / 'ldb'}" batch_size: 1 }} }}""", TEST)


def test_without_plyvel_the_error_says_how_to_install_it(tmp_path):
    fake = tmp_path / "fake"
    (fake / "plyvel").mkdir(parents=True)
    (fake / "plyvel" / "__init__.py").write_text("raise ImportError('No module named plyvel')\n")
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    proc = run("convert", "leveldb", tmp_path / "ldb", tmp_path / "dst", pythonpath=f"{fake}{os.pathsep}{ROOT}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "reading a LevelDB needs plyvel, an optional extra: pip install 'caffeish[leveldb]'" in proc.stderr
    assert not (tmp_path / "dst").exists()
