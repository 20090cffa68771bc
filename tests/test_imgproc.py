"""caffeish.imgproc and the image reading built on it: OpenCV's pixels, bit for bit.

A slow per-pixel reference of OpenCV's fixed-point INTER_LINEAR checks ``resize_linear`` everywhere;
where cv2 is installed, ``cv2.resize``, ``cv2.cvtColor``, ``cv2.imdecode`` and a whole
``convert imageset`` run are compared with it directly.
"""
import io
import itertools
import math
import struct

import numpy
import pytest
from PIL import Image, PngImagePlugin

from caffeish import io as cio
from caffeish import imgproc
from caffeish.data import converters
from caffeish.data.db import open_db
from caffeish.errors import CaffeishError
from caffeish.imgproc import bgr_to_gray, codec_gray, libpng_gray, resize_linear, rgb_to_gray


# -- a per-pixel reference of cv::resize, INTER_LINEAR, 8-bit ---------------------------------------------
def _position(d, src, dst):
    """OpenCV's source position for output index d: float32((d + 0.5) * scale - 0.5), floor and fraction."""
    f = numpy.float32((d + 0.5) * (1.0 / (dst / src)) - 0.5)
    s = math.floor(f)
    return s, numpy.float32(f - numpy.float32(s))


def _fixed(t):
    """A float32 weight in 11-bit fixed point, rounded half to even (saturate_cast<short>)."""
    return int(round(float(numpy.float32(t) * numpy.float32(2048))))


def reference_resize(img, height, width):
    """cv::resize(img, Size(width, height)) for uint8 H x W x C, one output pixel at a time."""
    sh, sw, cn = img.shape
    out = numpy.zeros((height, width, cn), numpy.uint8)
    if (sh, sw) == (height, width):
        return img.copy()
    if (sh, sw) == (2 * height, 2 * width):  # OpenCV takes its INTER_AREA path: the mean of each 2 x 2 block
        for y, x, c in itertools.product(range(height), range(width), range(cn)):
            total = int(img[2 * y:2 * y + 2, 2 * x:2 * x + 2, c].astype(int).sum())
            out[y, x, c] = (total + 2) >> 2 if cn in (1, 3, 4) else round(total / 4)
        return out
    for y in range(height):
        sy, ty = _position(y, sh, height)
        b0, b1 = _fixed(numpy.float32(1) - ty), _fixed(ty)
        r0, r1 = min(max(sy, 0), sh - 1), min(max(sy + 1, 0), sh - 1)  # rows clipped, weights kept
        for x in range(width):
            sx, tx = _position(x, sw, width)
            if sx < 0:
                sx, tx = 0, numpy.float32(0)
            if sx >= sw - 1:
                sx, tx = sw - 1, numpy.float32(0)
            a0, a1 = _fixed(numpy.float32(1) - tx), _fixed(tx)
            x1 = min(sx + 1, sw - 1)
            for c in range(cn):
                d0 = int(img[r0, sx, c]) * a0 + int(img[r0, x1, c]) * a1
                d1 = int(img[r1, sx, c]) * a0 + int(img[r1, x1, c]) * a1
                out[y, x, c] = (((b0 * (d0 >> 4)) >> 16) + ((b1 * (d1 >> 4)) >> 16) + 2) >> 2
    return out


SMALL_CASES = [((4, 4, 1), 8, 8), ((5, 7, 3), 3, 2), ((6, 6, 3), 3, 3), ((6, 8, 2), 3, 4), ((1, 9, 1), 1, 4),
               ((9, 1, 3), 4, 1), ((2, 2, 4), 5, 3), ((7, 5, 3), 7, 9), ((3, 10, 1), 11, 3), ((1, 1, 3), 3, 2),
               ((8, 6, 1), 4, 3), ((13, 11, 3), 5, 17), ((10, 10, 5), 5, 5)]


@pytest.mark.parametrize("shape,height,width", SMALL_CASES)
def test_resize_linear_matches_the_per_pixel_reference(shape, height, width):
    img = numpy.random.default_rng(sum(shape) * 31 + height).integers(0, 256, shape, dtype=numpy.uint8)
    got = resize_linear(img, height, width)
    assert got.dtype == numpy.uint8 and got.shape == (height, width, shape[2])
    numpy.testing.assert_array_equal(got, reference_resize(img, height, width))


def test_resize_linear_small_examples():
    row = numpy.array([[0, 10, 20, 30]], numpy.uint8)
    # 2x up: source x = (i + 0.5) / 2 - 0.5, clamped at the borders; weights 3/4, 1/4 in 11-bit fixed point
    numpy.testing.assert_array_equal(resize_linear(row, 1, 8)[0], [0, 3, 8, 13, 18, 23, 28, 30])
    a = numpy.arange(16, dtype=numpy.uint8).reshape(4, 4) * 10
    # 2x down: the mean of each 2 x 2 block (no antialiasing beyond it), rounded half up
    numpy.testing.assert_array_equal(resize_linear(a, 2, 2), [[25, 45], [105, 125]])
    same = resize_linear(a, 4, 4)
    assert same is not a and numpy.array_equal(same, a)
    assert resize_linear(a[:, :, None], 3, 5).shape == (3, 5, 1)  # H x W x 1 stays 3-D
    flat = numpy.full((5, 7, 3), 77, numpy.uint8)
    assert (resize_linear(flat, 11, 2) == 77).all()


def test_resize_linear_floats_use_the_same_grid():
    img = numpy.random.default_rng(3).integers(0, 256, (6, 9, 3), dtype=numpy.uint8)
    for dtype in (numpy.float32, numpy.float64):
        got = resize_linear(img.astype(dtype), 4, 13)
        assert got.dtype == dtype
        # no rounding: the 8-bit result is within one level of it
        assert numpy.abs(got - resize_linear(img, 4, 13)).max() <= 1.0


def test_gray_formulas():
    rng = numpy.random.default_rng(4)
    rgb = rng.integers(0, 256, (31, 17, 3), dtype=numpy.uint8)
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    numpy.testing.assert_array_equal(rgb_to_gray(rgb), (9798 * r + 19235 * g + 3735 * b + 16384) >> 15)
    numpy.testing.assert_array_equal(bgr_to_gray(rgb[..., ::-1]), rgb_to_gray(rgb))
    numpy.testing.assert_array_equal(bgr_to_gray(numpy.dstack([rgb[..., ::-1], rgb[..., 0]])), rgb_to_gray(rgb))  # alpha
    numpy.testing.assert_array_equal(codec_gray(rgb), (4899 * r + 9617 * g + 1868 * b + 8192) >> 14)
    trunc = numpy.where((r == g) & (g == b), r, (9797 * r + 19234 * g + 3737 * b) >> 15)
    numpy.testing.assert_array_equal(libpng_gray(rgb), trunc)
    numpy.testing.assert_array_equal(libpng_gray(rgb, gamma=100000), trunc)  # gamma 1: no correction
    for fn in (rgb_to_gray, codec_gray, libpng_gray):
        assert fn(numpy.full((2, 2, 3), 200, numpy.uint8)).tolist() == [[200, 200], [200, 200]]
    linear = libpng_gray(rgb, gamma=45455)  # sRGB-like: converted in linear light, a different grey
    assert linear.dtype == numpy.uint8 and not numpy.array_equal(linear, trunc)


@pytest.mark.parametrize("call,match", [
    (lambda: resize_linear(numpy.zeros((4, 4), numpy.uint8), 0, 3), "height must be positive"),
    (lambda: resize_linear(numpy.zeros((4, 4), numpy.uint8), 3, -2), "width must be positive"),
    (lambda: resize_linear(numpy.zeros((4, 4), numpy.uint8), 2.5, 3), "whole number"),
    (lambda: resize_linear(numpy.zeros((4, 4), numpy.uint8), True, 3), "whole number"),
    (lambda: resize_linear(numpy.zeros((4, 4), numpy.int16), 2, 2), "uint8 or float32 or float64 image, not int16"),
    (lambda: resize_linear(numpy.zeros(4, numpy.uint8), 2, 2), "H x W or H x W x C image, not one of shape"),
    (lambda: resize_linear(numpy.zeros((1, 4, 4, 3), numpy.uint8), 2, 2), r"not one of shape \(1, 4, 4, 3\)"),
    (lambda: resize_linear(numpy.zeros((0, 4), numpy.uint8), 2, 2), "non-empty"),
    (lambda: rgb_to_gray(numpy.zeros((4, 4), numpy.uint8)), "H x W x 3"),
    (lambda: bgr_to_gray(numpy.zeros((4, 4, 3), numpy.float32)), "uint8 image, not float32"),
    (lambda: libpng_gray(numpy.zeros((4, 4, 2), numpy.uint8)), "colour image"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(CaffeishError, match=match):
        call()


# -- against OpenCV itself ----------------------------------------------------------------------------------
@pytest.fixture
def cv2():
    return pytest.importorskip("cv2")


def _cases(n, seed):
    """(shape, height, width): small/odd/even sizes, up and down, exact halvings, 1 x N, 1 to 5 channels."""
    rng = numpy.random.default_rng(seed)
    sides = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 50, 64, 100, 127, 255, 256]
    for i in range(n):
        sh, sw, h, w = (int(rng.choice(sides)) for _ in range(4))
        if i % 8 == 0:  # an exact 2x reduction, where OpenCV switches paths
            h, w = max(1, sh // 2), max(1, sw // 2)
            sh, sw = 2 * h, 2 * w
        cn = int(rng.integers(0, 6))
        yield ((sh, sw) if cn == 0 else (sh, sw, cn)), h, w


def test_resize_linear_equals_cv2_resize(cv2):
    rng = numpy.random.default_rng(5)
    cases = list(_cases(600, 6)) + [((480, 640, 3), 227, 227), ((375, 500, 3), 256, 256), ((1, 300), 1, 7),
                                    ((300, 1, 3), 9, 1), ((3, 3), 300, 200), ((64, 64, 2), 32, 32)]
    worst = 0
    for shape, h, w in cases:
        img = rng.integers(0, 256, shape, dtype=numpy.uint8)
        want = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).reshape((h, w) + shape[2:])
        got = resize_linear(img, h, w)
        assert got.shape == want.shape
        worst = max(worst, int(numpy.abs(got.astype(int) - want).max()))
    assert worst == 0


def test_float_resize_equals_cv2_resize(cv2):
    rng = numpy.random.default_rng(7)
    ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)  # IPP builds resize floats with their own code; OpenCV's is the reference
    try:
        for shape, h, w in _cases(150, 8):
            img = rng.standard_normal(shape) * 50
            for dtype in (numpy.float32, numpy.float64):
                a = img.astype(dtype)
                want = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR).reshape((h, w) + shape[2:])
                got = resize_linear(a, h, w)
                assert got.dtype == dtype
                if dtype == numpy.float64:
                    numpy.testing.assert_array_equal(got, want)
                else:  # OpenCV's SIMD may fuse multiply-adds: a few float32 ulps
                    numpy.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    finally:
        cv2.ipp.setUseIPP(ipp)


def _all_colours():
    """Every 8-bit colour once, as a 4096 x 4096 x 3 image."""
    v = numpy.arange(256, dtype=numpy.uint8)
    cube = numpy.empty((256, 256, 256, 3), numpy.uint8)
    cube[..., 0], cube[..., 1], cube[..., 2] = v[:, None, None], v[None, :, None], v[None, None, :]
    return cube.reshape(4096, 4096, 3)


def test_cvtcolor_gray_equals_cv2_for_every_colour(cv2):
    colours = _all_colours()
    numpy.testing.assert_array_equal(bgr_to_gray(colours), cv2.cvtColor(colours, cv2.COLOR_BGR2GRAY))
    numpy.testing.assert_array_equal(rgb_to_gray(colours), cv2.cvtColor(colours, cv2.COLOR_RGB2GRAY))


def _encode(arr, fmt, mode=None, **options):
    out = io.BytesIO()
    Image.fromarray(arr, mode).save(out, format=fmt, **options)
    return out.getvalue()


def _png_with(chunk, payload, arr):
    info = PngImagePlugin.PngInfo()
    info.add(chunk, payload)
    return _encode(arr, "PNG", pnginfo=info, compress_level=0)


def _decodes_like_cv2(cv2, data, what):
    raw = numpy.frombuffer(data, numpy.uint8)
    for flag, color in ((cv2.IMREAD_COLOR, True), (cv2.IMREAD_GRAYSCALE, False)):
        want = cv2.imdecode(raw, flag)
        want = want.transpose(2, 0, 1) if want.ndim == 3 else want[numpy.newaxis]
        got = cio.decode_image(data, is_color=color, name=what)
        assert got.shape == want.shape, what
        assert numpy.array_equal(got, want), (what, color, int(numpy.abs(got.astype(int) - want).max()))


def test_decoding_equals_cv2_imdecode(cv2):
    rng = numpy.random.default_rng(9)
    rgb = rng.integers(0, 256, (37, 29, 3), dtype=numpy.uint8)
    rgba = numpy.dstack([rgb, rng.integers(0, 256, (37, 29), dtype=numpy.uint8)])
    smooth = cv2.GaussianBlur(rgb, (5, 5), 2)
    gray16 = rng.integers(0, 65536, (9, 11)).astype(numpy.uint16)
    files = {
        "png": _encode(rgb, "PNG"),
        "png rgba": _encode(rgba, "PNG", "RGBA"),
        "png palette": _encode(numpy.asarray(Image.fromarray(rgb).quantize(50).convert("RGB")), "PNG"),
        "png gAMA 1/2.2": _png_with(b"gAMA", struct.pack(">I", 45455), rgb),
        "png gAMA 1.02": _png_with(b"gAMA", struct.pack(">I", 102000), rgb),
        "png sRGB": _png_with(b"sRGB", b"\x00", rgb),
        "png 16-bit grey": cv2.imencode(".png", gray16)[1].tobytes(),
        "jpeg 4:2:0": _encode(smooth, "JPEG", quality=90),
        "jpeg 4:4:4": _encode(smooth, "JPEG", quality=80, subsampling=0),
        "jpeg progressive": _encode(smooth, "JPEG", quality=85, progressive=True),
        "jpeg grey": _encode(smooth[..., 1], "JPEG"),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff rgba": _encode(rgba, "TIFF", "RGBA"),
        "webp": _encode(rgb, "WEBP", lossless=True),
        "ppm": _encode(rgb, "PPM"),
        "png grey": _encode(rgb[..., 0], "PNG"),
    }
    for what, data in files.items():
        _decodes_like_cv2(cv2, data, what)


def test_png_grey_equals_libpng_for_every_colour(cv2):
    colours = _all_colours()
    for name, data in [("plain", _encode(colours, "PNG", compress_level=0)),
                       ("gamma", _png_with(b"gAMA", struct.pack(">I", 45455), colours))]:
        want = cv2.imdecode(numpy.frombuffer(data, numpy.uint8), cv2.IMREAD_GRAYSCALE)
        assert numpy.array_equal(cio.decode_image(data, is_color=False)[0], want), name


def _datum_bytes(channels, height, width, data, label):
    """Caffe's serialized raw Datum: fields 1-5 then encoded (7) = false, in field-number order."""
    def varint(n):
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out
    return (b"\x08" + varint(channels) + b"\x10" + varint(height) + b"\x18" + varint(width)
            + b"\x22" + varint(len(data)) + data + b"\x28" + varint(label) + b"\x38\x00")


@pytest.mark.parametrize("gray", [False, True])
def test_convert_imageset_writes_opencvs_pixels(cv2, tmp_path, gray):
    rng = numpy.random.default_rng(10)
    root = tmp_path / "images"
    root.mkdir()
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=numpy.uint8)
    Image.fromarray(rgb).save(root / "a.png")
    Image.fromarray(cv2.GaussianBlur(rgb, (5, 5), 2)).save(root / "b.jpg", quality=90)
    Image.fromarray(rgb[..., 2]).save(root / "c.bmp")
    (tmp_path / "list.txt").write_text("a.png 0\nb.jpg 1\nc.bmp 2\n")
    db = tmp_path / "db"
    converters.convert_imageset(str(root), str(tmp_path / "list.txt"), str(db), resize_height=12, resize_width=40,
                                gray=gray)
    with open_db(str(db), "lmdb") as records:
        got = {key.decode(): value for key, value in records}
    assert list(got) == ["00000000_a.png", "00000001_b.jpg", "00000002_c.bmp"]
    for label, (key, value) in enumerate(got.items()):
        datum = cio.parse_datum(value)
        assert datum.HasField("encoded") and datum.encoded is False and datum.HasField("label")
        want = cv2.resize(cv2.imread(str(root / key[9:]), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR),
                          (40, 12))
        want = want[numpy.newaxis] if gray else want.transpose(2, 0, 1)
        numpy.testing.assert_array_equal(cio.datum_to_array(datum), want)
        assert value == _datum_bytes(*want.shape, want.tobytes(), label)  # byte for byte what Caffe writes


def test_other_converters_leave_encoded_unset():
    datum = converters.Record(key="k", label=3, array=numpy.zeros((1, 2, 2), numpy.uint8)).datum()
    assert not datum.HasField("encoded")  # as convert_mnist_data / convert_cifar_data and pycaffe's array_to_datum
    assert not cio.array_to_datum(numpy.zeros((1, 2, 2), numpy.uint8), 1).HasField("encoded")
    assert imgproc.RESIZE_COEF_SCALE == 2048
