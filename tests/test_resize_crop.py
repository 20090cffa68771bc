"""`caffeish resize-and-crop`: Caffe's tools/extra/resize_and_crop_images.py (shorter side N, centre N x N)."""
import os

import numpy
from PIL import Image
from helpers import caffeish_run as run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def rgb(path):
    with Image.open(path) as img:
        return numpy.asarray(img.convert("RGB"))


def make_images(folder):
    """wide.png 8 x 12 (random), tall.png 20 x 10 (rows of 10 * y), sub/photo.jpg 30 x 40, bad.png (not an image)."""
    rng = numpy.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    wide = rng.integers(0, 256, (8, 12, 3), dtype=numpy.uint8)
    Image.fromarray(wide).save(folder / "wide.png")
    y = numpy.arange(20, dtype=numpy.int64)[:, None] * numpy.ones(10, dtype=numpy.int64)
    tall = numpy.stack([10 * y, 10 * y + 1, 250 - 10 * y], axis=-1).astype(numpy.uint8)
    Image.fromarray(tall).save(folder / "tall.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=numpy.uint8)).save(folder / "sub" / "photo.jpg")
    (folder / "bad.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image either; not listed")
    return wide, tall


def test_shorter_side_then_centre_crop(tmp_path):
    wide, tall = make_images(tmp_path / "in")
    proc = run("resize-and-crop", tmp_path / "in", tmp_path / "out", "--output-side-length", 8)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{tmp_path / 'out'}: 3 images of 8 x 8"
    assert "Skipping" in proc.stderr and "bad.png" in proc.stderr and "skipped 1 unreadable image(s)" in proc.stderr
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "sub/photo.jpg", "tall.png", "wide.png"]
    # 8 x 12 already has its shorter side 8: no resize, columns (12 - 8) // 2 = 2 .. 9 kept, pixel for pixel
    numpy.testing.assert_array_equal(rgb(out / "wide.png"), wide[:, 2:10])
    # 20 x 10 -> 16 x 8 (8 * 20 // 10), rows (16 - 8) // 2 = 4 .. 11 kept; the rows are 10 * y (plus 1, and
    # 250 - 10 y): bilinear sampling of row i + 0.5 of 16 maps to source row (i + 0.5) * 20 / 16 - 0.5
    got = rgb(out / "tall.png").astype(numpy.int64)
    assert got.shape == (8, 8, 3)
    source_rows = (numpy.arange(4, 12) + 0.5) * 20 / 16 - 0.5
    for channel, (scale, offset) in enumerate([(10, 0), (10, 1), (-10, 250)]):
        expected = numpy.rint(scale * source_rows + offset)[:, None] * numpy.ones(8)
        assert numpy.abs(got[:, :, channel] - expected).max() <= 1, (channel, got[:, :, channel], expected)
    with Image.open(out / "sub" / "photo.jpg") as img:
        assert img.format == "JPEG" and img.size == (8, 8) and img.mode == "RGB"
    assert not [p for p in out.rglob(".tmp*")]


def test_caffe_flags_and_a_list_file(tmp_path, cli):
    wide, _ = make_images(tmp_path / "in")
    listing = tmp_path / "list.txt"
    listing.write_text(f"wide.png 3\n\n{tmp_path / 'in' / 'sub' / 'photo.jpg'} 1\n")  # absolute inside: allowed
    proc = run("resize-and-crop", "--input_folder", tmp_path / "in", "--output_folder", tmp_path / "out",
               "--output_side_length", 4, "--input", listing)
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "sub/photo.jpg", "wide.png"]
    got = rgb(tmp_path / "out" / "wide.png")
    assert got.shape == (4, 4, 3)  # 8 x 12 -> 4 x 6, columns 1 .. 4
    # an existing output is replaced whole
    code, _, err = cli("resize-and-crop", tmp_path / "in", tmp_path / "out", "--list", listing,
                       "--output-side-length", 8)
    assert code == 0, err
    numpy.testing.assert_array_equal(rgb(tmp_path / "out" / "wide.png"), wide[:, 2:10])


def test_bad_input_is_clear_and_writes_nothing(tmp_path, cli):
    make_images(tmp_path / "in")
    out = tmp_path / "out"
    proc = run("resize-and-crop", tmp_path / "missing", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'missing'}: no such folder" in proc.stderr
    (tmp_path / "escape.txt").write_text("wide.png\n../secret.png\n")
    (tmp_path / "odd.txt").write_text("notes.txt\n")
    (tmp_path / "empty").mkdir()
    cases = [
        ((tmp_path / "in", out, "--output-side-length", 0), "--output-side-length must be at least 1, not 0"),
        ((tmp_path / "in", tmp_path / "in"), "the output folder is the input folder"),
        ((tmp_path / "in", out, "--list", tmp_path / "nope.txt"), f"{tmp_path / 'nope.txt'}: cannot read the image list"),
        ((tmp_path / "in", out, "--list", tmp_path / "escape.txt"),
         f"{tmp_path / 'escape.txt'}:2: '../secret.png' is not inside the input folder"),
        ((tmp_path / "in", out, "--list", tmp_path / "odd.txt"), "cannot tell the image format to write from the extension '.txt'"),
        ((tmp_path / "empty", out), f"{tmp_path / 'empty'}: holds no image files"),
        ((tmp_path / "in",), "give the output folder"),
        ((tmp_path / "in", out, "--input-folder", tmp_path / "empty"), "the input folder is given twice and differs"),
    ]
    for args, message in cases:
        code, _, err = cli("resize-and-crop", *args)
        assert code == 1 and message in err, (args, err)
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "bad.png").write_bytes(b"not a png")
    code, _, err = cli("resize-and-crop", tmp_path / "only_bad", out)
    assert code == 1 and "none of the 1 images could be read" in err
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
