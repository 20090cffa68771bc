"""OpenCV's image arithmetic in numpy, bit for bit: the resize (``resize_linear``, ``cv::resize``) and the grey
conversions (``rgb_to_gray``/``bgr_to_gray``, ``cv::cvtColor``; ``codec_gray``/``libpng_gray``, ``cv::imread``
of a colour file as grey) that Caffe's C++ gets when it reads images with ``cv::imread``/``cv::imdecode``.

Images are numpy arrays, H x W or H x W x C (channels last, as OpenCV keeps them).
"""
import math

import numpy

from .errors import CaffeishError

RESIZE_COEF_BITS = 11                    # OpenCV's INTER_RESIZE_COEF_BITS
RESIZE_COEF_SCALE = 1 << RESIZE_COEF_BITS

GRAY_WEIGHTS_15 = (9798, 19235, 3735)    # cvtColor: round(0.299, 0.587, 0.114 x 2^15), R, G, B
GRAY_WEIGHTS_14 = (4899, 9617, 1868)     # OpenCV's decoders (and cvtColor of old OpenCV): x 2^14
LIBPNG_WEIGHTS = (9797, 19234, 3737)     # libpng's rgb_to_gray for (0.299, 0.587): floor(x 2^15), B = rest


# -- checks -----------------------------------------------------------------------------------------------
def _image(img, what, dtypes=(numpy.uint8,)):
    img = numpy.asarray(img)
    if img.dtype not in [numpy.dtype(d) for d in dtypes]:
        names = " or ".join(numpy.dtype(d).name for d in dtypes)
        raise CaffeishError(f"{what} needs a {names} image, not {img.dtype}")
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0 or (img.ndim == 3 and img.shape[2] == 0):
        raise CaffeishError(f"{what} needs a non-empty H x W or H x W x C image, not one of shape {img.shape}")
    return img


def _color(img, what):
    img = _image(img, what)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise CaffeishError(f"{what} needs an H x W x 3 (or x 4) colour image, not one of shape {img.shape}")
    return img


def _size(value, what):
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, (int, numpy.integer)):
        raise CaffeishError(f"resize_linear: {what} must be a whole number, not {value!r}")
    if value <= 0:
        raise CaffeishError(f"resize_linear: {what} must be positive, not {value}")
    return int(value)


# -- resize -----------------------------------------------------------------------------------------------
def _linear_axis(src, dst, clamp):
    """Source index and weights along one axis, as ``cv::resize`` computes them (INTER_LINEAR).

    For output position d: f = float32((d + 0.5) * scale - 0.5) with scale = 1 / (dst / src) in
    double, s = floor(f), t = f - s (float32).  Columns (``clamp``) pin s to [0, src - 1] with t = 0
    outside; rows keep s unclamped (the row index is clipped later, the weights are not).  Returns s,
    t and the 11-bit fixed-point weights round((1 - t) * 2048), round(t * 2048) (to nearest even).
    """
    scale = 1.0 / (dst / src)
    f = ((numpy.arange(dst, dtype=numpy.float64) + 0.5) * scale - 0.5).astype(numpy.float32)
    s = numpy.floor(f).astype(numpy.int64)
    t = f - s.astype(numpy.float32)
    if clamp:
        low, high = s < 0, s >= src - 1
        t[low | high] = 0
        s[low] = 0
        s[high] = src - 1
    one = numpy.float32(1)
    w0 = numpy.rint((one - t) * numpy.float32(RESIZE_COEF_SCALE)).astype(numpy.int32)
    w1 = numpy.rint(t * numpy.float32(RESIZE_COEF_SCALE)).astype(numpy.int32)
    return s, one - t, t, w0, w1


def resize_linear(img, height, width):
    """``cv::resize(img, out, Size(width, height))`` with INTER_LINEAR, pixel for pixel.

    ``img``: uint8 (or float32/float64) H x W or H x W x C.  Output pixel (y, x) samples the source
    at ((x + 0.5) * W / width - 0.5, (y + 0.5) * H / height - 0.5), bilinearly between the four
    nearest pixels, clamped to the border, with no antialiasing when shrinking.

    uint8 uses OpenCV's fixed point (weights a0 + a1 = b0 + b1 = 2048, see ``_linear_axis``):
      horizontal, int32:  D = S[y, x0] * a0 + S[y, x1] * a1
      vertical:           out = ((b0 * (D0 >> 4)) >> 16) + ((b1 * (D1 >> 4)) >> 16) + 2) >> 2
    An exact 2x reduction in both axes goes through OpenCV's INTER_AREA: the mean of each 2 x 2
    block, (sum + 2) >> 2 for 1, 3 and 4 channels (the formula above gives the same), rounded half
    to even for other channel counts.  Floats use the float weights 1 - t and t in the same two passes.
    A same-size resize returns a copy.
    """
    img = _image(img, "resize_linear", (numpy.uint8, numpy.float32, numpy.float64))
    height, width = _size(height, "height"), _size(width, "width")
    src = img if img.ndim == 3 else img[:, :, numpy.newaxis]
    sh, sw, cn = src.shape
    if (sh, sw) == (height, width):
        return img.copy()
    exact = src.dtype == numpy.uint8
    if sh == 2 * height and sw == 2 * width:          # OpenCV switches to INTER_AREA here
        work = numpy.int32 if exact else src.dtype
        s = src.astype(work)
        total = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        if not exact:
            out = total * src.dtype.type(0.25)
        elif cn in (1, 3, 4):
            out = (total + 2) >> 2
        else:
            out = numpy.rint(total * 0.25)
    else:
        x0, fa0, fa1, a0, a1 = _linear_axis(sw, width, clamp=True)
        y, fb0, fb1, b0, b1 = _linear_axis(sh, height, clamp=False)
        x1 = numpy.minimum(x0 + 1, sw - 1)
        y0, y1 = numpy.clip(y, 0, sh - 1), numpy.clip(y + 1, 0, sh - 1)
        if exact:
            s = src.astype(numpy.int32)
            a0, a1 = a0[None, :, None], a1[None, :, None]
            d0 = s[y0][:, x0] * a0 + s[y0][:, x1] * a1
            d1 = s[y1][:, x0] * a0 + s[y1][:, x1] * a1
            b0, b1 = b0[:, None, None], b1[:, None, None]
            out = (((b0 * (d0 >> 4)) >> 16) + ((b1 * (d1 >> 4)) >> 16) + 2) >> 2
        else:
            work = src.dtype.type
            fa0, fa1 = fa0.astype(work)[None, :, None], fa1.astype(work)[None, :, None]
            d0 = src[y0][:, x0] * fa0 + src[y0][:, x1] * fa1
            d1 = src[y1][:, x0] * fa0 + src[y1][:, x1] * fa1
            out = d0 * fb0.astype(work)[:, None, None] + d1 * fb1.astype(work)[:, None, None]
    out = numpy.clip(out, 0, 255).astype(numpy.uint8) if exact else out.astype(src.dtype)
    return out if img.ndim == 3 else out[:, :, 0]


# -- grey -------------------------------------------------------------------------------------------------
def _weighted(r, g, b, weights, shift, rounding=True):
    wr, wg, wb = weights
    total = r.astype(numpy.int32) * wr + g.astype(numpy.int32) * wg + b.astype(numpy.int32) * wb
    return (total + ((1 << (shift - 1)) if rounding else 0)) >> shift


def rgb_to_gray(img):
    """``cv::cvtColor(img, gray, COLOR_RGB2GRAY)`` for uint8 H x W x 3 (or x 4, alpha ignored).

    gray = (9798 R + 19235 G + 3735 B + 2^14) >> 15: 0.299, 0.587, 0.114 in 15-bit fixed point.
    (Old OpenCV, 2.4 among them, used the 14-bit weights of ``codec_gray``.)
    """
    img = _color(img, "rgb_to_gray")
    return _weighted(img[..., 0], img[..., 1], img[..., 2], GRAY_WEIGHTS_15, 15).astype(numpy.uint8)


def bgr_to_gray(img):
    """``cv::cvtColor(img, gray, COLOR_BGR2GRAY)`` for uint8 H x W x 3 (or x 4): ``rgb_to_gray`` of B, G, R reversed."""
    img = _color(img, "bgr_to_gray")
    return _weighted(img[..., 2], img[..., 1], img[..., 0], GRAY_WEIGHTS_15, 15).astype(numpy.uint8)


def codec_gray(rgb):
    """Grey as OpenCV's own image decoders make it (BMP, TIFF, PxM, ... read with IMREAD_GRAYSCALE).

    gray = (4899 R + 9617 G + 1868 B + 2^13) >> 14, for uint8 H x W x 3 (or x 4) RGB.

    What ``cv::imread(..., IMREAD_GRAYSCALE)`` makes of a colour file depends on the format: OpenCV's own
    decoders (BMP, TIFF, PxM, ...) use these 14-bit weights; for PNG, libpng does the conversion
    (``libpng_gray``: 15-bit weights, truncated, in linear light when the file has a gAMA or sRGB chunk);
    for JPEG, libjpeg hands over the luma plane (decode straight to grey, see ``caffeish.io``); WebP goes
    through ``cvtColor`` (``rgb_to_gray``).
    """
    rgb = _color(rgb, "codec_gray")
    return _weighted(rgb[..., 0], rgb[..., 1], rgb[..., 2], GRAY_WEIGHTS_14, 14).astype(numpy.uint8)


def _png_reciprocal(value):
    """libpng's png_reciprocal: 1 / x in its 1e5 fixed point, rounded."""
    return int(math.floor(1e10 / value + 0.5))


def _png_significant(gamma):
    """libpng's png_gamma_significant: further than 0.05 from 1 (fixed point 1e5)."""
    return gamma < 95000 or gamma > 105000


def _png_gamma_table(gamma):
    """libpng's 8-bit gamma table: floor(255 (i / 255)^(gamma / 1e5) + 0.5); identity when insignificant."""
    i = numpy.arange(256)
    if not _png_significant(gamma):
        return i
    table = numpy.floor(255.0 * (i / 255.0) ** (gamma * 1e-5) + 0.5).astype(numpy.int64)
    table[0], table[255] = 0, 255
    return table


def libpng_gray(rgb, gamma=None):
    """Grey as libpng's rgb_to_gray makes it for OpenCV reading an 8-bit colour PNG as IMREAD_GRAYSCALE.

    OpenCV asks libpng for weights (0.299, 0.587), which libpng keeps as 15-bit integers
    (9797, 19234, 3737).  Pixels with R = G = B keep their value.  Otherwise, with no gamma (or one
    within 5% of 1, as libpng judges): gray = (9797 R + 19234 G + 3737 B) >> 15, truncated.  With a
    file gamma g (``gamma``: the gAMA value x 1e5 as an integer, 45455 for an sRGB chunk), libpng
    converts in linear light: L = table(1/g), gray = table(g)[(9797 L[R] + 19234 L[G] + 3737 L[B] + 2^14) >> 15],
    its tables built as ``_png_gamma_table`` with its rounded reciprocals.
    """
    rgb = _color(rgb, "libpng_gray")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if gamma is not None and 16 <= gamma <= 625000000:
        screen = _png_reciprocal(gamma)
        if _png_significant(gamma) or _png_significant(screen):
            to_linear = _png_gamma_table(_png_reciprocal(gamma)).astype(numpy.int32)
            from_linear = _png_gamma_table(_png_reciprocal(screen)).astype(numpy.uint8)
            gray = from_linear[_weighted(to_linear[r], to_linear[g], to_linear[b], LIBPNG_WEIGHTS, 15)]
            return numpy.where((r == g) & (r == b), r, gray)
    gray = _weighted(r, g, b, LIBPNG_WEIGHTS, 15, rounding=False).astype(numpy.uint8)
    return numpy.where((r == g) & (r == b), r, gray)
