"""pycaffe's image pipeline in caffeish.io: load_image, resize_image, oversample and Transformer.

Each is checked against the formula written out here in plain numpy, and where scikit-image is
installed, against what pycaffe computes with it (skimage.io.imread, skimage.transform.resize,
scipy.ndimage.zoom).
"""
import warnings

import numpy
import pytest
from PIL import Image

from caffeish import io as cio
from caffeish.errors import CaffeishError


# -- pycaffe's own code paths, on scikit-image / scipy (only where installed) ----------------------------------
def pycaffe_resize(im, new_dims, interp_order=1):
    skt = pytest.importorskip("skimage.transform")
    ndimage = pytest.importorskip("scipy.ndimage")
    if im.shape[-1] in (1, 3):
        lo, hi = im.min(), im.max()
        if hi > lo:
            std = (im - lo) / (hi - lo)
            out = skt.resize(std, new_dims, order=interp_order, mode="constant", anti_aliasing=False)
            out = out * (hi - lo) + lo
        else:
            return numpy.full((new_dims[0], new_dims[1], im.shape[-1]), lo, dtype=numpy.float32)
    else:
        scale = tuple(numpy.array(new_dims, dtype=float) / numpy.array(im.shape[:2]))
        out = ndimage.zoom(im, scale + (1,), order=interp_order)
    return out.astype(numpy.float32)


def pycaffe_load(filename, color=True):
    skimage = pytest.importorskip("skimage")
    skio = pytest.importorskip("skimage.io")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = skimage.img_as_float(skio.imread(filename, as_gray=not color)).astype(numpy.float32)
    if img.ndim == 2:
        img = img[:, :, numpy.newaxis]
        if color:
            img = numpy.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


# -- resize_image ----------------------------------------------------------------------------------------------
def bilinear_grid_constant(im, h, w):
    """skimage's order-1 resize, written out: pixel centres map to ``(i + 0.5) * H / h - 0.5``, weights
    ``1 - f`` and ``f`` on the two neighbours, pixels outside the image are 0."""
    def taps(n_in, n_out):
        c = (numpy.arange(n_out) + 0.5) * n_in / n_out - 0.5
        i0 = numpy.floor(c).astype(int)
        return i0, c - i0

    def at(a, rows, cols):
        ok = ((rows >= 0) & (rows < a.shape[0]))[:, None] & ((cols >= 0) & (cols < a.shape[1]))[None, :]
        v = a[numpy.clip(rows, 0, a.shape[0] - 1)][:, numpy.clip(cols, 0, a.shape[1] - 1)]
        return numpy.where(ok[:, :, None], v, 0.0)

    y0, fy = taps(im.shape[0], h)
    x0, fx = taps(im.shape[1], w)
    fy, fx = fy[:, None, None], fx[None, :, None]
    return ((1 - fy) * (1 - fx) * at(im, y0, x0) + (1 - fy) * fx * at(im, y0, x0 + 1)
            + fy * (1 - fx) * at(im, y0 + 1, x0) + fy * fx * at(im, y0 + 1, x0 + 1))


def test_resize_bilinear_is_skimages_formula_on_the_standardised_image():
    rng = numpy.random.default_rng(0)
    for (H, W), (h, w) in [((5, 7), (11, 4)), ((8, 8), (4, 4)), ((3, 2), (9, 9)), ((1, 6), (3, 2))]:
        im = rng.random((H, W, 3)).astype(numpy.float32) * 200 - 50
        lo, hi = float(im.min()), float(im.max())
        want = bilinear_grid_constant((im.astype(numpy.float64) - lo) / (hi - lo), h, w) * (hi - lo) + lo
        got = cio.resize_image(im, (h, w))
        assert got.dtype == numpy.float32 and got.shape == (h, w, 3)
        numpy.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_resize_nearest_and_odd_channel_counts():
    ramp = numpy.arange(12, dtype=numpy.float32).reshape(3, 4, 1)
    # nearest, grid-aligned: output pixel i takes input floor((i + 0.5) * H / h)
    numpy.testing.assert_array_equal(cio.resize_image(ramp, (3, 2), interp_order=0)[:, :, 0],
                                     ramp[:, [1, 3], 0])
    numpy.testing.assert_array_equal(cio.resize_image(ramp, (6, 4), interp_order=0)[:, :, 0],
                                     ramp[[0, 0, 1, 1, 2, 2], :, 0])
    # 2 channels: scipy.ndimage.zoom, corners onto corners: i * (H - 1) / (h - 1)
    im = numpy.stack([ramp[:, :, 0], -ramp[:, :, 0]], axis=2)
    out = cio.resize_image(im, (5, 4))
    numpy.testing.assert_allclose(out[:, :, 0], numpy.repeat(numpy.arange(5)[:, None] * 2.0, 4, 1) + numpy.arange(4),
                                  atol=1e-6)
    numpy.testing.assert_allclose(out[:, :, 1], -out[:, :, 0], atol=1e-6)
    const = numpy.full((4, 4, 3), 0.25, numpy.float32)
    assert (cio.resize_image(const, (2, 7)) == 0.25).all() and cio.resize_image(const, (2, 7)).shape == (2, 7, 3)
    with pytest.raises(CaffeishError, match="interp_order 0 .* and 1"):
        cio.resize_image(ramp, (2, 2), interp_order=3)
    with pytest.raises(CaffeishError, match="positive"):
        cio.resize_image(ramp, (0, 2))


@pytest.mark.parametrize("order", [0, 1])
def test_resize_matches_pycaffe_on_skimage(order):
    rng = numpy.random.default_rng(order)
    worst = 0.0
    for trial in range(60):
        H, W, h, w = (int(v) for v in rng.integers(1, 24, 4))
        channels = (1, 3, 2, 4)[trial % 4]
        dtype = (numpy.float32, numpy.float64, numpy.uint8)[trial % 3]
        im = rng.random((H, W, channels)) * 255
        im = im.astype(dtype)
        got, want = cio.resize_image(im, (h, w), order), pycaffe_resize(im, (h, w), order)
        assert got.shape == want.shape and got.dtype == want.dtype == numpy.float32
        worst = max(worst, float(numpy.abs(got.astype(numpy.float64) - want).max()))
    assert worst <= 1e-6 * 255, worst  # measured: 0 (the same float operations in the same order)


# -- load_image ------------------------------------------------------------------------------------------------
@pytest.fixture
def image_files(tmp_path):
    rng = numpy.random.default_rng(5)
    rgb = (rng.random((6, 7, 3)) * 255).astype(numpy.uint8)
    files = {}
    for mode in ("RGB", "L", "RGBA", "P"):
        img = Image.fromarray(rgb).convert(mode)
        if mode == "RGBA":
            img.putalpha(Image.fromarray((rng.random((6, 7)) * 255).astype(numpy.uint8)))
        files[mode] = tmp_path / f"{mode}.png"
        img.save(files[mode])
    files["I;16"] = tmp_path / "deep.png"
    Image.fromarray((rng.random((6, 7)) * 65535).astype(numpy.uint16)).save(files["I;16"])
    files["JPEG"] = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(files["JPEG"])
    return rgb, {k: str(v) for k, v in files.items()}


def test_load_image_formulas(image_files):
    rgb, files = image_files
    colour = cio.load_image(files["RGB"])
    assert colour.dtype == numpy.float32 and colour.shape == (6, 7, 3)
    numpy.testing.assert_array_equal(colour, (rgb * (1 / 255)).astype(numpy.float32))
    grey = cio.load_image(files["RGB"], color=False)
    want = (rgb * (1 / 255)) @ numpy.array([0.2125, 0.7154, 0.0721])
    assert grey.shape == (6, 7, 1)
    numpy.testing.assert_allclose(grey[:, :, 0], want, rtol=0, atol=1e-7)
    tiled = cio.load_image(files["L"])  # a grey file asked in colour: the grey plane three times
    assert tiled.shape == (6, 7, 3) and (tiled == tiled[:, :, :1]).all()
    assert cio.load_image(files["RGBA"]).shape == (6, 7, 3)
    deep = cio.load_image(files["I;16"], color=False)
    numpy.testing.assert_array_equal(deep[:, :, 0], (numpy.asarray(Image.open(files["I;16"])) * (1 / 65535))
                                     .astype(numpy.float32))


def test_load_image_matches_pycaffe_on_skimage(image_files):
    _, files = image_files
    for name, path in files.items():
        for color in (True, False):
            got, want = cio.load_image(path, color), pycaffe_load(path, color)
            assert got.shape == want.shape and got.dtype == want.dtype, (name, color)
            assert float(numpy.abs(got - want).max()) <= 1e-6, (name, color)  # measured: 0


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(CaffeishError, match="bad.png.*cannot decode"):
        cio.load_image(str(bad))


# -- oversample ------------------------------------------------------------------------------------------------
def test_oversample_is_pycaffes_ten_crops():
    rng = numpy.random.default_rng(1)
    images = rng.random((2, 7, 9, 3)).astype(numpy.float64)
    crops = cio.oversample(images, (4, 5))
    assert crops.shape == (20, 4, 5, 3) and crops.dtype == numpy.float32
    for n, im in enumerate(images):
        # corners, then the centre at int(7 / 2 - 4 / 2) = 1, int(9 / 2 - 5 / 2) = 2; then the five mirrored
        windows = [im[:4, :5], im[:4, 4:], im[3:, :5], im[3:, 4:], im[1:5, 2:7]]
        for k, window in enumerate(windows):
            numpy.testing.assert_array_equal(crops[10 * n + k], window.astype(numpy.float32))
            numpy.testing.assert_array_equal(crops[10 * n + 5 + k], window[:, ::-1].astype(numpy.float32))
    with pytest.raises(CaffeishError, match="cannot cut 8 x 5 crops from 7 x 9"):
        cio.oversample(images, (8, 5))
    with pytest.raises(CaffeishError, match="one size"):
        cio.oversample([images[0], images[0][:6]], (4, 5))


# -- Transformer -----------------------------------------------------------------------------------------------
def make_transformer(mean=None):
    t = cio.Transformer({"data": (10, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    if mean is not None:
        t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_is_pycaffes_order_and_deprocess_undoes_it():
    rng = numpy.random.default_rng(2)
    image = rng.random((4, 5, 3))  # already the input's size: no resize
    keep = image.copy()
    mean = numpy.array([104.0, 117.0, 123.0])
    out = make_transformer(mean).preprocess("data", image)
    want = ((image.transpose(2, 0, 1)[::-1] * 255 - mean[:, None, None]) * 0.5).astype(numpy.float32)
    assert out.dtype == numpy.float32 and out.shape == (3, 4, 5)
    numpy.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-4)
    numpy.testing.assert_array_equal(image, keep)  # the caller's image is untouched
    back = make_transformer(mean).deprocess("data", out[None])
    numpy.testing.assert_allclose(back, image, atol=1e-5)
    whole = rng.random((3, 4, 5)) * 100  # an elementwise mean
    numpy.testing.assert_allclose(make_transformer(whole).preprocess("data", image),
                                  (image.transpose(2, 0, 1)[::-1] * 255 - whole) * 0.5, rtol=1e-5, atol=1e-3)


def test_preprocess_resizes_to_the_input_size():
    image = numpy.random.default_rng(3).random((9, 7, 3)).astype(numpy.float32)
    t = make_transformer()
    want = (cio.resize_image(image, (4, 5)).transpose(2, 0, 1)[::-1] * 255) * 0.5
    numpy.testing.assert_array_equal(t.preprocess("data", image), want.astype(numpy.float32))


def test_transformer_mistakes_are_clear():
    t = cio.Transformer({"data": (1, 3, 4, 5), "extra": (1, 2)})
    with pytest.raises(CaffeishError, match="'label' is not one of the net's inputs .*'data', 'extra'"):
        t.set_raw_scale("label", 255)
    with pytest.raises(CaffeishError, match="permutation of \\(0, 1, 2\\)"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(CaffeishError, match="3 channels: the channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(CaffeishError, match="'data' of shape \\(1, 3, 4, 5\\) has 3 channels, but the mean gives 2"):
        t.set_mean("data", numpy.zeros(2))
    with pytest.raises(CaffeishError, match="mean of shape \\(3, 8, 8\\) does not fit input 'data' of shape "
                                            "\\(1, 3, 4, 5\\)"):
        t.set_mean("data", numpy.zeros((3, 8, 8)))
