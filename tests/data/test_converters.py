"""caffeish convert: every converter round-trips small generated data, through the real CLI."""
import gzip
import logging
import os
import pathlib
import re
import subprocess
import sys

import h5py
import numpy
import pytest
from PIL import Image

from caffeish import io as cio
from caffeish.data import converters
from caffeish.data.db import open_db
from caffeish.errors import CaffeishError
from caffeish.imgproc import libpng_gray, resize_linear

ROOT = pathlib.Path(__file__).resolve().parents[2]


def caffeish(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "caffeish", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"caffeish {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def cli(capsys, *args):
    """The same CLI in-process (for the many error cases; the subprocess runs above cover the real thing)."""
    from caffeish.cli import main

    logger = logging.getLogger("caffeish")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers = []  # main() adds a handler on the current (captured) stderr; put things back after
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    finally:
        logger.handlers, logger.propagate, logger.level = saved
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def failed(proc, *fragments):
    """A user error: exit 1, one message, no traceback, naming what is at fault."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "caffeish: error:" in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    return proc.stderr


def datums(path, backend="lmdb"):
    with open_db(path, backend) as db:
        return {key.decode(): cio.parse_datum(value) for key, value in db}


def bgr(rgb):
    """H x W x 3 RGB -> 3 x H x W BGR, as Caffe stores images."""
    return rgb[:, :, ::-1].transpose(2, 0, 1)


# -- imageset ------------------------------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path):
    rng = numpy.random.default_rng(0)
    root = tmp_path / "imgs"
    root.mkdir()
    red = numpy.zeros((4, 5, 3), numpy.uint8)
    red[..., 0] = 255
    cat = rng.integers(0, 256, (4, 5, 3), dtype=numpy.uint8)
    gray = rng.integers(0, 256, (4, 5), dtype=numpy.uint8)
    Image.fromarray(red).save(root / "red.png")
    Image.fromarray(cat).save(root / "my cat.png")
    Image.fromarray(gray).save(root / "gray.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    listing = tmp_path / "list.txt"
    listing.write_text("red.png 0\nmy cat.png 1\nbroken.png 2\n\ngray.png 3\n")
    return {"root": root, "list": listing, "red": red, "cat": cat, "gray": gray, "tmp": tmp_path}


def test_imageset_raw_bgr_with_spaces_and_a_skipped_corrupt_file(images):
    db = images["tmp"] / "train_lmdb"
    proc = caffeish("convert", "imageset", f"{images['root']}/", images["list"], db)
    assert re.search(r"W\d{4} .*Could not read or decode .*broken\.png", proc.stderr)
    assert "Processed 3 files." in proc.stderr and "Wrote 3 images" in proc.stderr and "skipped 1" in proc.stderr
    got = datums(db)
    assert list(got) == ["00000000_red.png", "00000001_my cat.png", "00000003_gray.png"]
    red = got["00000000_red.png"]
    assert (red.channels, red.height, red.width, red.label, red.encoded) == (3, 4, 5, 0, False)
    arr = cio.datum_to_array(red)
    assert (arr[0] == 0).all() and (arr[1] == 0).all() and (arr[2] == 255).all()  # B, G, R planes
    numpy.testing.assert_array_equal(cio.datum_to_array(got["00000001_my cat.png"]), bgr(images["cat"]))
    numpy.testing.assert_array_equal(cio.datum_to_array(got["00000003_gray.png"]),
                                     numpy.repeat(images["gray"][numpy.newaxis], 3, axis=0))
    assert got["00000003_gray.png"].label == 3


def test_imageset_gray_resize_and_caffe_flags(images):
    db = images["tmp"] / "gray_lmdb"
    caffeish("convert", "imageset", "-gray", "-resize_height", 8, "-resize_width", 6, images["root"], images["list"],
             db)
    got = datums(db)
    arr = cio.datum_to_array(got["00000000_red.png"])
    assert arr.shape == (1, 8, 6)
    assert (arr == libpng_gray(images["red"])[0, 0]).all()  # flat red stays flat
    cat = resize_linear(libpng_gray(images["cat"]), 8, 6)  # OpenCV's pixels: imread(png, grey), resize bilinear
    numpy.testing.assert_array_equal(cio.datum_to_array(got["00000001_my cat.png"])[0], cat)


def test_imageset_encoded_keeps_png_bytes_or_reencodes(images):
    db = images["tmp"] / "enc_lmdb"
    caffeish("convert", "imageset", "--encoded", images["root"], images["list"], db)
    got = datums(db)
    assert all(d.encoded for d in got.values())
    assert got["00000000_red.png"].data == (images["root"] / "red.png").read_bytes()  # file bytes kept
    numpy.testing.assert_array_equal(cio.datum_to_array(got["00000001_my cat.png"]), bgr(images["cat"]))
    # gray.png is 1-channel but color was asked for: re-encoded as a 3-channel PNG
    assert cio.decode_datum_image(got["00000003_gray.png"]).shape == (3, 4, 5)

    jpg = images["tmp"] / "jpg_lmdb"
    caffeish("convert", "imageset", "--encoded", "--encode-type", "jpg", images["root"], images["list"], jpg)
    red = datums(jpg)["00000000_red.png"]
    assert red.data[:2] == b"\xff\xd8"
    arr = cio.datum_to_array(red).astype(int)
    assert (arr[2] > 200).all() and (arr[0] < 60).all()


def test_imageset_shuffle_is_seeded(images, capsys):
    a, b = images["tmp"] / "a", images["tmp"] / "b"
    assert cli(capsys, "convert", "imageset", "--shuffle", "--seed", 3, images["root"], images["list"], a).returncode == 0
    assert cli(capsys, "convert", "imageset", "--shuffle", "--seed", 3, images["root"], images["list"], b).returncode == 0
    keys = list(datums(a))
    assert keys == list(datums(b))
    assert sorted(k.split("_", 1)[1] for k in keys) == ["gray.png", "my cat.png", "red.png"]


def test_imageset_hdf5_writes_data_label_files_and_list(images):
    db = images["tmp"] / "h5"
    proc = caffeish("convert", "imageset", "--backend", "hdf5", "--rows-per-file", 2, images["root"], images["list"],
                    db)
    assert str(db / "list.txt") in proc.stdout
    files = (db / "list.txt").read_text().split("\n")[:-1]
    assert files == [str(db / "data_00000.h5"), str(db / "data_00001.h5")]
    with h5py.File(files[0], "r") as f:
        assert f["data"].dtype == numpy.uint8 and f["data"].shape == (2, 3, 4, 5)
        numpy.testing.assert_array_equal(f["data"][1], bgr(images["cat"]))
        assert f["label"].dtype == numpy.float32 and list(f["label"][:]) == [0.0, 1.0]
        assert f["data"].compression == "gzip" and f["data"].chunks is not None
    got = list(datums(db, "hdf5").values())
    assert [d.label for d in got] == [0, 1, 3]


def test_imageset_mixed_sizes(images, capsys):
    Image.new("RGB", (6, 6)).save(images["root"] / "big one.png")
    with open(images["list"], "a") as f:
        f.write("big one.png 4\n")
    ok = images["tmp"] / "mixed_ok"
    assert cli(capsys, "convert", "imageset", images["root"], images["list"], ok).returncode == 0  # Caffe allows it without -check_size
    assert cio.datum_to_array(datums(ok)["00000004_big one.png"]).shape == (3, 6, 6)
    for extra in (["--check-size"], ["--backend", "hdf5"]):
        db = images["tmp"] / f"mixed{len(extra)}"
        failed(cli(capsys, "convert", "imageset", *extra, images["root"], images["list"], db),
               "big one.png: image is 6x6", "red.png is 4x5", "--resize-height")
        assert not db.exists() and not [p for p in os.listdir(images["tmp"]) if p.startswith(".")]


def test_imageset_bad_lists(images, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("red.png 0\nred.png\n")
    failed(caffeish("convert", "imageset", images["root"], bad, tmp_path / "db", check=False),
           f"{bad}:2:", "expected 'path label'")
    bad.write_text("red.png 0\n\nmy cat.png one\n")
    failed(cli(capsys, "convert", "imageset", images["root"], bad, tmp_path / "db"),
           f"{bad}:3:", "label 'one' is not an integer")
    failed(cli(capsys, "convert", "imageset", images["root"], tmp_path / "nolist.txt", tmp_path / "db"),
           "nolist.txt", "does not exist")
    bad.write_text("broken.png 0\n")
    failed(cli(capsys, "convert", "imageset", images["root"], bad, tmp_path / "db"), "would be empty")
    failed(cli(capsys, "convert", "imageset", "--encoded", "--backend", "hdf5", images["root"], images["list"],
                    tmp_path / "db"), "HDF5 cannot hold encoded images")
    failed(cli(capsys, "convert", "imageset", "--backend", "leveldb", images["root"], images["list"], tmp_path / "db"), "writing LevelDB is not supported; give hdf5 or lmdb")
    failed(cli(capsys, "convert", "imageset", tmp_path / "noroot", images["list"], tmp_path / "db"),
           "noroot: the image root folder does not exist")
    failed(cli(capsys, "convert", "imageset", "--resize-height", 4, images["root"], images["list"], tmp_path / "db"), "give both --resize-height and --resize-width")
    assert not (tmp_path / "db").exists()


def test_overwrite(images):
    db = images["tmp"] / "db"
    caffeish("convert", "imageset", images["root"], images["list"], db)
    one = images["tmp"] / "one.txt"
    one.write_text("red.png 5\n")
    failed(caffeish("convert", "imageset", images["root"], one, db, check=False),
           str(db), "already exists", "--overwrite")
    assert len(datums(db)) == 3
    caffeish("convert", "imageset", "--overwrite", images["root"], one, db)
    assert [d.label for d in datums(db).values()] == [5]


def test_failure_mid_conversion_keeps_the_earlier_db(images, monkeypatch):
    db = images["tmp"] / "db"
    converters.convert_imageset(images["root"], images["list"], db)
    real = cio.read_image_chw_bgr
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressing Ctrl-C in the middle
        return real(*args, **kwargs)

    monkeypatch.setattr(cio, "read_image_chw_bgr", flaky)
    with pytest.raises(KeyboardInterrupt):
        converters.convert_imageset(images["root"], images["list"], db, overwrite=True, log_every=1)
    assert len(datums(db)) == 3
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        converters.convert_imageset(images["root"], images["list"], images["tmp"] / "fresh")
    assert not (images["tmp"] / "fresh").exists()
    assert sorted(p for p in os.listdir(images["tmp"]) if p.startswith(".")) == []


# -- MNIST ---------------------------------------------------------------------------------------------------
def write_idx(path, magic, array, gz=False):
    header = numpy.array([magic, *array.shape], dtype=">u4").tobytes()
    data = header + array.astype(numpy.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_mnist_gzipped_and_plain(tmp_path, capsys):
    rng = numpy.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 4), dtype=numpy.uint8)
    labels = rng.integers(0, 10, 7).astype(numpy.uint8)
    write_idx(tmp_path / "img.gz", 2051, images, gz=True)
    write_idx(tmp_path / "lab", 2049, labels)
    db = tmp_path / "mnist_lmdb"
    proc = caffeish("convert", "mnist", tmp_path / "img.gz", tmp_path / "lab", db, "--log-every", 5)
    assert "Processed 5 items." in proc.stderr and "Processed 7 items." in proc.stderr
    got = datums(db)
    assert list(got) == ["%08d" % i for i in range(7)]
    for i, datum in enumerate(got.values()):
        assert (datum.channels, datum.height, datum.width, datum.label) == (1, 5, 4, labels[i])
        numpy.testing.assert_array_equal(cio.datum_to_array(datum)[0], images[i])
    h5 = tmp_path / "mnist_h5"
    assert cli(capsys, "convert", "mnist", "--backend", "hdf5", tmp_path / "img.gz", tmp_path / "lab", h5).returncode == 0
    with h5py.File(h5 / "data_00000.h5", "r") as f:
        numpy.testing.assert_array_equal(f["data"][:, 0], images)
        numpy.testing.assert_array_equal(f["label"][:], labels.astype(numpy.float32))


def test_mnist_errors(tmp_path, capsys):
    write_idx(tmp_path / "img", 2051, numpy.zeros((3, 2, 2)))
    write_idx(tmp_path / "lab", 2049, numpy.zeros(4))
    failed(cli(capsys, "convert", "mnist", tmp_path / "img", tmp_path / "lab", tmp_path / "db"),
           "holds 3 images but", "holds 4 labels")
    failed(caffeish("convert", "mnist", tmp_path / "lab", tmp_path / "lab", tmp_path / "db", check=False),
           f"{tmp_path / 'lab'}: is not an MNIST image file: magic number 2049, expected 2051")
    (tmp_path / "short").write_bytes((tmp_path / "img").read_bytes()[:-3])
    failed(cli(capsys, "convert", "mnist", tmp_path / "short", tmp_path / "lab", tmp_path / "db"),
           "short: is truncated")
    assert not (tmp_path / "db").exists()


# -- CIFAR ---------------------------------------------------------------------------------------------------
def cifar_batch(path, n, seed, label_bytes=1):
    rng = numpy.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, label_bytes), dtype=numpy.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=numpy.uint8)
    path.write_bytes(numpy.concatenate([labels, pixels], axis=1).tobytes())
    return labels, pixels.reshape(n, 3, 32, 32)


def test_cifar10_train_and_test(tmp_path):
    batches = [cifar_batch(tmp_path / f"data_batch_{i}.bin", 2, i) for i in range(1, 6)]
    test_labels, test_pixels = cifar_batch(tmp_path / "test_batch.bin", 3, 9)
    caffeish("convert", "cifar10", tmp_path, tmp_path / "train_lmdb")
    got = datums(tmp_path / "train_lmdb")
    assert list(got) == ["%05d" % i for i in range(10)]
    labels = numpy.concatenate([b[0][:, 0] for b in batches])
    pixels = numpy.concatenate([b[1] for b in batches])
    for i, datum in enumerate(got.values()):
        assert (datum.channels, datum.height, datum.width, datum.label) == (3, 32, 32, labels[i])
        numpy.testing.assert_array_equal(cio.datum_to_array(datum), pixels[i])  # the file's RGB planes, as Caffe
    caffeish("convert", "cifar10", "--split", "test", "--bgr", tmp_path, tmp_path / "test_lmdb")
    got = list(datums(tmp_path / "test_lmdb").values())
    assert [d.label for d in got] == list(test_labels[:, 0])
    numpy.testing.assert_array_equal(cio.datum_to_array(got[2]), test_pixels[2, ::-1])


def test_cifar100_fine_and_coarse_labels(tmp_path, capsys):
    labels, _ = cifar_batch(tmp_path / "train.bin", 4, 0, label_bytes=2)
    assert cli(capsys, "convert", "cifar10", "--cifar100", tmp_path, tmp_path / "fine").returncode == 0
    assert cli(capsys, "convert", "cifar10", "--cifar100", "--coarse", tmp_path, tmp_path / "coarse").returncode == 0
    assert [d.label for d in datums(tmp_path / "fine").values()] == list(labels[:, 1])
    assert [d.label for d in datums(tmp_path / "coarse").values()] == list(labels[:, 0])


def test_cifar_errors(tmp_path, capsys):
    failed(cli(capsys, "convert", "cifar10", tmp_path, tmp_path / "db"),
           "missing CIFAR-10 batch file(s)", "data_batch_1.bin")
    (tmp_path / "test_batch.bin").write_bytes(bytes(3074))
    failed(cli(capsys, "convert", "cifar10", "--split", "test", tmp_path, tmp_path / "db"),
           "test_batch.bin: is not a CIFAR-10 binary batch: 3074 bytes")
    assert not (tmp_path / "db").exists()


# -- npz -----------------------------------------------------------------------------------------------------
def test_npz_uint8_and_float(tmp_path, capsys):
    rng = numpy.random.default_rng(2)
    u8 = rng.integers(0, 256, (5, 2, 3, 4), dtype=numpy.uint8)
    numpy.savez(tmp_path / "u8.npz", data=u8, label=numpy.arange(5))
    caffeish("convert", "npz", tmp_path / "u8.npz", tmp_path / "u8")
    got = list(datums(tmp_path / "u8").values())
    assert all(d.data and not d.float_data for d in got)
    numpy.testing.assert_array_equal(numpy.stack([cio.datum_to_array(d) for d in got]), u8)

    f64 = rng.standard_normal((3, 1, 2, 2))
    numpy.savez(tmp_path / "f.npz", data=f64, label=numpy.array([[0.0], [1.0], [2.0]]))
    assert cli(capsys, "convert", "npz", tmp_path / "f.npz", tmp_path / "f").returncode == 0
    got = list(datums(tmp_path / "f").values())
    assert all(not d.data and len(d.float_data) == 4 for d in got) and [d.label for d in got] == [0, 1, 2]
    numpy.testing.assert_allclose(numpy.stack([cio.datum_to_array(d) for d in got]), f64, rtol=1e-6)

    numpy.savez(tmp_path / "soft.npz", data=f64, label=numpy.array([0.5, 1.5, 2.0]))
    failed(cli(capsys, "convert", "npz", tmp_path / "soft.npz", tmp_path / "s"),
           "soft.npz", "non-integer", "--backend hdf5")
    assert cli(capsys, "convert", "npz", "--backend", "hdf5", tmp_path / "soft.npz", tmp_path / "s").returncode == 0
    with h5py.File(tmp_path / "s" / "data_00000.h5", "r") as f:
        assert f["data"].dtype == numpy.float32 and list(f["label"][:]) == [0.5, 1.5, 2.0]

    numpy.savez(tmp_path / "nolabel.npz", data=u8)
    failed(cli(capsys, "convert", "npz", tmp_path / "nolabel.npz", tmp_path / "n"),
           "nolabel.npz: has no array 'label'")


def test_converter_lmdb_map_grows(tmp_path):
    data = numpy.random.default_rng(3).integers(0, 256, (300, 3, 16, 16), dtype=numpy.uint8)
    numpy.savez(tmp_path / "d.npz", data=data, label=numpy.zeros(300))
    converters.convert_npz(tmp_path / "d.npz", tmp_path / "db", map_size=1 << 15)  # far too small: grows
    with open_db(tmp_path / "db") as db:
        assert len(db) == 300
        numpy.testing.assert_array_equal(cio.datum_to_array(cio.parse_datum(db.get(b"00000299"))), data[299])


def test_caffeish_errors_in_process(tmp_path):
    with pytest.raises(CaffeishError, match="--rows-per-file applies to --backend hdf5 only"):
        converters.write_records(tmp_path / "db", [], rows_per_file=3)
