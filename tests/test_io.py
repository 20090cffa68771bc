"""caffeish.io: pycaffe's caffe.io names (Datum, BlobProto, images, mean files)."""
import numpy
import pytest
from PIL import Image

from caffeish import caffe_pb2
from caffeish import io as cio
from caffeish.errors import CaffeishError


def test_uint8_datum_round_trip_keeps_bytes():
    arr = numpy.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=numpy.uint8)
    datum = cio.array_to_datum(arr, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == arr.tobytes() and len(datum.float_data) == 0
    back = cio.datum_to_array(cio.parse_datum(datum.SerializeToString()))
    assert back.dtype == numpy.uint8 and numpy.array_equal(back, arr)


def test_float_datum_round_trip_uses_float_data():
    arr = numpy.random.default_rng(1).standard_normal((2, 3, 1))
    datum = cio.array_to_datum(arr)
    assert not datum.data and len(datum.float_data) == 6
    numpy.testing.assert_array_equal(cio.datum_to_array(datum), arr.astype(numpy.float32))


def test_datum_errors_are_clear():
    with pytest.raises(CaffeishError, match="C x H x W"):
        cio.array_to_datum(numpy.zeros((4, 4)))
    bad = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")
    with pytest.raises(CaffeishError, match="holds 3 bytes, not 4"):
        cio.datum_to_array(bad)
    with pytest.raises(CaffeishError, match="is not a Datum"):
        cio.parse_datum(b"\xff\xff\xff", "record 'x'")


def test_blobproto_round_trip_with_diff_and_legacy_shape():
    arr = numpy.arange(24, dtype=numpy.float32).reshape(1, 2, 3, 4)
    blob = cio.array_to_blobproto(arr, diff=-arr)
    numpy.testing.assert_array_equal(cio.blobproto_to_array(blob), arr)
    numpy.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), -arr)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4)
    legacy.data.extend(arr.ravel().tolist())
    assert cio.blobproto_to_array(legacy).shape == (1, 2, 3, 4)
    with pytest.raises(CaffeishError, match="holds 24 data values, not 25"):
        cio.blobproto_to_array(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[25]), data=arr.ravel()))
    lists = cio.blobprotovector_str_to_arraylist(cio.arraylist_to_blobprotovector_str([arr, arr[0, 0]]))
    assert [a.shape for a in lists] == [(1, 2, 3, 4), (3, 4)]


def test_mean_binaryproto_is_written_atomically_with_legacy_fields(tmp_path):
    mean = numpy.random.default_rng(2).random((3, 4, 5)).astype(numpy.float32)
    path = tmp_path / "mean.binaryproto"
    cio.write_mean_binaryproto(path, mean)
    assert [p.name for p in tmp_path.iterdir()] == ["mean.binaryproto"]  # no temporary left behind
    blob = caffe_pb2.BlobProto.FromString(path.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    assert list(blob.shape.dim) == [1, 3, 4, 5]
    numpy.testing.assert_array_equal(cio.read_mean_binaryproto(path), mean)


def test_encode_decode_png_is_lossless_and_bgr(tmp_path):
    red = numpy.zeros((4, 5, 3), numpy.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    chw = cio.read_image_chw_bgr(str(tmp_path / "red.png"))
    assert chw.shape == (3, 4, 5)
    assert (chw[0] == 0).all() and (chw[1] == 0).all() and (chw[2] == 255).all()  # B, G, R
    data = cio.encode_image(chw, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    datum = caffe_pb2.Datum(data=data, encoded=True)
    numpy.testing.assert_array_equal(cio.datum_to_array(datum), chw)
    assert cio.decode_datum_image(datum, is_color=False).shape == (1, 4, 5)
    gray = numpy.arange(20, dtype=numpy.uint8).reshape(1, 4, 5)
    numpy.testing.assert_array_equal(cio.decode_image(cio.encode_image(gray)), gray)
    assert cio.decode_image(cio.encode_image(gray), is_color=True).shape == (3, 4, 5)
    assert cio.encode_image(chw, "jpg")[:2] == b"\xff\xd8"
    with pytest.raises(CaffeishError, match="cannot decode"):
        cio.decode_image(b"not an image")


def test_load_image_is_float_rgb_like_pycaffe(tmp_path):
    rgb = numpy.random.default_rng(3).integers(0, 256, (6, 7, 3), dtype=numpy.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    im = cio.load_image(str(tmp_path / "x.png"))
    assert im.shape == (6, 7, 3) and im.dtype == numpy.float32
    numpy.testing.assert_allclose(im, rgb / 255.0, atol=1e-6)
    gray = cio.load_image(str(tmp_path / "x.png"), color=False)
    assert gray.shape == (6, 7, 1)
    with pytest.raises(CaffeishError, match="no such file"):
        cio.load_image(str(tmp_path / "missing.png"))


def test_resize_image_shapes_and_constants():
    im = numpy.full((4, 6, 3), 0.25, numpy.float32)
    out = cio.resize_image(im, (8, 3))
    assert out.shape == (8, 3, 3)
    numpy.testing.assert_allclose(out, 0.25, atol=1e-6)
    ramp = numpy.linspace(0, 1, 16, dtype=numpy.float32).reshape(4, 4, 1)
    assert cio.resize_image(ramp, (2, 2), interp_order=0).shape == (2, 2, 1)
    assert cio.resize_image(ramp[:, :, 0], (8, 8)).shape == (8, 8)
