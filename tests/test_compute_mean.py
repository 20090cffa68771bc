"""caffeish compute-mean: Caffe's compute_image_mean over LMDB (raw, encoded) and HDF5 databases."""
import re

import lmdb
import numpy
import pytest
from PIL import Image

from caffeish import caffe_pb2
from caffeish import io as cio
from caffeish.data import converters
from helpers import caffeish_run


def channel_means(stderr):
    return [float(v) for v in re.findall(r"mean_value channel \[\d+\]: (\S+)", stderr)]


@pytest.fixture
def data(tmp_path):
    arr = numpy.random.default_rng(0).integers(0, 256, (6, 3, 4, 5), dtype=numpy.uint8)
    numpy.savez(tmp_path / "d.npz", data=arr, label=numpy.arange(6))
    return arr


def test_mean_of_lmdb_and_hdf5_matches_numpy(tmp_path, data):
    converters.convert_npz(tmp_path / "d.npz", tmp_path / "lmdb")
    converters.convert_npz(tmp_path / "d.npz", tmp_path / "h5", backend="hdf5", rows_per_file=4)
    expected = data.astype(numpy.float64).mean(axis=0)
    for db, extra in ((tmp_path / "lmdb", []), (tmp_path / "h5", ["--backend", "hdf5"]), (tmp_path / "h5", [])):
        out = tmp_path / f"mean_{db.name}_{len(extra)}.binaryproto"
        proc = caffeish_run("compute-mean", db, out, *extra)
        assert proc.returncode == 0, proc.stderr
        assert "Number of channels: 3" in proc.stderr
        numpy.testing.assert_allclose(channel_means(proc.stderr), expected.mean(axis=(1, 2)), rtol=1e-5)
        blob = caffe_pb2.BlobProto.FromString(out.read_bytes())
        assert list(blob.shape.dim) == [1, 3, 4, 5] and (blob.num, blob.channels) == (1, 3)
        numpy.testing.assert_allclose(cio.blobproto_to_array(blob)[0], expected, rtol=1e-6)
        numpy.testing.assert_allclose(cio.read_mean_binaryproto(out), expected, rtol=1e-6)


def test_mean_of_encoded_and_float_datums(tmp_path, cli):
    rng = numpy.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    images = rng.integers(0, 256, (3, 4, 5, 3), dtype=numpy.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(3)))
    converters.convert_imageset(tmp_path / "imgs", tmp_path / "list.txt", tmp_path / "enc", encoded=True)
    code, _, err = cli("compute-mean", tmp_path / "enc", tmp_path / "enc.binaryproto")
    assert code == 0, err
    expected = images[:, :, :, ::-1].transpose(0, 3, 1, 2).astype(numpy.float64).mean(axis=0)  # BGR
    numpy.testing.assert_allclose(cio.read_mean_binaryproto(tmp_path / "enc.binaryproto"), expected, rtol=1e-6)

    floats = rng.standard_normal((4, 2, 3, 3))
    numpy.savez(tmp_path / "f.npz", data=floats, label=numpy.zeros(4))
    converters.convert_npz(tmp_path / "f.npz", tmp_path / "f")
    code, _, err = cli("compute-mean", tmp_path / "f")  # no OUT: only the per-channel means
    assert code == 0 and not (tmp_path / "f.binaryproto").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".binaryproto") == ["enc.binaryproto"]


def test_mean_errors_are_clear(tmp_path, cli):
    proc = caffeish_run("compute-mean", tmp_path / "missing_lmdb", tmp_path / "m.binaryproto")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'missing_lmdb'}: database does not exist" in proc.stderr

    (tmp_path / "plain").mkdir()
    code, _, err = cli("compute-mean", tmp_path / "plain", "--backend", "lmdb")
    assert code == 1 and "is not an LMDB" in err and "Traceback" not in err
    code, _, err = cli("compute-mean", tmp_path / "plain", "--backend", "leveldb")
    assert code == 1 and "LevelDB is not supported; convert to LMDB" in err

    env = lmdb.open(str(tmp_path / "empty"), map_size=1 << 20)
    env.close()
    code, _, err = cli("compute-mean", tmp_path / "empty")
    assert code == 1 and f"{tmp_path / 'empty'}: the database is empty" in err

    env = lmdb.open(str(tmp_path / "junk"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"\xff garbage")
    env.close()
    code, _, err = cli("compute-mean", tmp_path / "junk")
    assert code == 1 and "holds no Datums" in err

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "a.png")
    Image.new("RGB", (5, 4)).save(tmp_path / "imgs" / "b.png")
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\n")
    converters.convert_imageset(tmp_path / "imgs", tmp_path / "list.txt", tmp_path / "mixed")
    code, _, err = cli("compute-mean", tmp_path / "mixed", tmp_path / "m.binaryproto")
    assert code == 1 and "record b'00000001_b.png' is (3, 4, 5)" in err and "one image size" in err
    assert not (tmp_path / "m.binaryproto").exists()
