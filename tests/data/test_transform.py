"""DataTransformer against a plain loop over Caffe's DataTransformer::Transform."""
import numpy
import pytest

from caffeish import CaffeishError, caffe_pb2
from caffeish import io as cio
from caffeish.data.transform import DataTransformer, effective_transform_param
from caffeish.prototxt import parse_text

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def tparam(text=""):
    return parse_text(text, caffe_pb2.TransformationParameter())


def reference(x, param, mirror, h_off, w_off, mean=None):
    """Caffe's per-element loop: top[c, h, w'] = (x[c, h_off+h, w_off+w] - mean) * scale, w' mirrored."""
    n, c, height, width = x.shape
    crop = param.crop_size
    oh, ow = (crop, crop) if crop else (height, width)
    values = list(param.mean_value)
    if len(values) == 1:
        values = values * c
    out = numpy.zeros((n, c, oh, ow), numpy.float32)
    for i in range(n):
        for ch in range(c):
            for h in range(oh):
                for w in range(ow):
                    hh, ww = h_off[i] + h, w_off[i] + w
                    v = numpy.float32(x[i, ch, hh, ww])
                    if mean is not None:
                        v = v - numpy.float32(mean[ch, hh, ww])
                    elif values:
                        v = v - numpy.float32(values[ch])
                    out[i, ch, h, ow - 1 - w if mirror[i] else w] = v * numpy.float32(param.scale)
    return out


def images(shape, seed=0, dtype=numpy.uint8):
    rng = numpy.random.default_rng(seed)
    if dtype == numpy.uint8:
        return rng.integers(0, 256, size=shape).astype(numpy.uint8)
    return rng.uniform(-5, 5, size=shape).astype(dtype)


@pytest.mark.parametrize("text", [
    "crop_size: 4",
    "crop_size: 4 mirror: true",
    "mirror: true scale: 0.5",
    "crop_size: 3 mirror: true mean_value: 100 scale: 0.01",
    "crop_size: 5 mean_value: 10 mean_value: 20 mean_value: 30",
    "",
])
@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_transform_matches_loop(text, phase):
    p = tparam(text)
    t = DataTransformer(p, phase)
    x = images((5, 3, 6, 7))
    out = t.transform_batch(x, numpy.random.default_rng(42))
    mirror, h_off, w_off = t.draw(5, 6, 7, numpy.random.default_rng(42))
    assert out.dtype == numpy.float32
    numpy.testing.assert_allclose(out, reference(x, p, mirror, h_off, w_off), rtol=1e-6, atol=1e-6)
    if p.crop_size and phase == TEST:  # centre crop
        assert (h_off == (6 - p.crop_size) // 2).all() and (w_off == (7 - p.crop_size) // 2).all()
    if not p.mirror:
        assert not mirror.any()


def test_train_crop_offsets_random_and_reproducible():
    t = DataTransformer(tparam("crop_size: 3 mirror: true"), TRAIN)
    m, h, w = t.draw(400, 8, 5, numpy.random.default_rng(1))
    assert set(h.tolist()) == set(range(6)) and set(w.tolist()) == set(range(3))
    assert 0.4 < m.mean() < 0.6
    x = images((4, 1, 8, 5))
    a = t.transform_batch(x, numpy.random.default_rng(7))
    b = t.transform_batch(x, numpy.random.default_rng(7))
    numpy.testing.assert_array_equal(a, b)


def test_mirror_happens_in_test_phase_too():
    t = DataTransformer(tparam("mirror: true"), TEST)
    m, _, _ = t.draw(100, 4, 4, numpy.random.default_rng(0))
    assert m.any() and not m.all()


def test_mean_file_subtracted_at_crop_offsets(tmp_path):
    mean = images((3, 6, 7), seed=3).astype(numpy.float32) / 2
    path = str(tmp_path / "mean.binaryproto")
    cio.write_mean_binaryproto(path, mean)
    for phase in (TRAIN, TEST):
        p = tparam(f'crop_size: 4 mirror: true scale: 0.25 mean_file: "{path}"')
        t = DataTransformer(p, phase)
        x = images((4, 3, 6, 7), seed=4)
        out = t.transform_batch(x, numpy.random.default_rng(9))
        draws = t.draw(4, 6, 7, numpy.random.default_rng(9))
        numpy.testing.assert_allclose(out, reference(x, p, *draws, mean=mean), rtol=1e-6, atol=1e-5)


def test_float_input_and_float64_output():
    p = tparam("crop_size: 2 mean_value: 1.5 scale: 2")
    t = DataTransformer(p, TEST, dtype=numpy.float64)
    x = images((2, 2, 4, 4), dtype=numpy.float32)
    out = t.transform_batch(x, numpy.random.default_rng(0))
    assert out.dtype == numpy.float64
    numpy.testing.assert_allclose(out, (x[:, :, 1:3, 1:3].astype(numpy.float64) - 1.5) * 2, rtol=1e-6)


def test_transform_does_not_modify_input():
    x = images((2, 3, 4, 4), dtype=numpy.float32)
    keep = x.copy()
    DataTransformer(tparam("mean_value: 3 scale: 2"), TEST).transform_batch(x, numpy.random.default_rng(0))
    numpy.testing.assert_array_equal(x, keep)


def test_transform_list_crops_images_of_different_sizes():
    p = tparam("crop_size: 3 mirror: true")
    t = DataTransformer(p, TRAIN)
    ims = [images((2, 5, 6), seed=1), images((2, 3, 3), seed=2), images((2, 7, 4), seed=3)]
    out = t.transform_list(ims, numpy.random.default_rng(5))
    m, h, w = t.draw(3, [5, 3, 7], [6, 3, 4], numpy.random.default_rng(5))
    for i, im in enumerate(ims):
        numpy.testing.assert_array_equal(out[i], reference(im[None], p, m[i:i + 1], h[i:i + 1], w[i:i + 1])[0])
    with pytest.raises(CaffeishError, match="one size"):
        DataTransformer(tparam(), TRAIN).transform_list(ims, numpy.random.default_rng(0))


@pytest.mark.parametrize("text, shape, match", [
    ("crop_size: 9", (1, 3, 8, 8), "crop_size 9 is larger than the image .8 x 8"),
    ("mean_value: 1 mean_value: 2", (1, 3, 4, 4), "either 1 mean_value or as many as channels .3.; 2 given"),
])
def test_bad_shapes(text, shape, match):
    with pytest.raises(CaffeishError, match=match):
        DataTransformer(tparam(text), TRAIN).transform_batch(numpy.zeros(shape, numpy.uint8),
                                                             numpy.random.default_rng(0))


def test_bad_parameters(tmp_path):
    path = str(tmp_path / "mean.binaryproto")
    cio.write_mean_binaryproto(path, numpy.zeros((3, 4, 4), numpy.float32))
    with pytest.raises(CaffeishError, match="both mean_file and mean_value"):
        DataTransformer(tparam(f'mean_file: "{path}" mean_value: 1'), TRAIN)
    with pytest.raises(CaffeishError, match="both force_color and force_gray"):
        DataTransformer(tparam("force_color: true force_gray: true"), TRAIN)
    t = DataTransformer(tparam(f'mean_file: "{path}"'), TRAIN)
    with pytest.raises(CaffeishError, match=r"mean file's image has shape \(3, 4, 4\).*\(3, 5, 5\)"):
        t.output_shape((3, 5, 5))
    assert t.output_shape((3, 4, 4)) == (3, 4, 4)


def test_decode_encoded_datum_with_force_color_and_gray():
    bgr = images((3, 5, 4), seed=2)
    datum = caffe_pb2.Datum(encoded=True, data=cio.encode_image(bgr, "png"), label=1)
    numpy.testing.assert_array_equal(DataTransformer(tparam(), TRAIN).decode(datum), bgr)
    gray = DataTransformer(tparam("force_gray: true"), TRAIN).decode(datum)
    assert gray.shape == (1, 5, 4)
    expected = 0.114 * bgr[0] + 0.587 * bgr[1] + 0.299 * bgr[2]
    assert numpy.abs(gray[0].astype(float) - expected).max() <= 1.0
    g = caffe_pb2.Datum(encoded=True, data=cio.encode_image(bgr[:1], "png"))
    color = DataTransformer(tparam("force_color: true"), TRAIN).decode(g)
    assert color.shape == (3, 5, 4) and (color == bgr[:1]).all()
    raw = cio.array_to_datum(bgr, 0)
    numpy.testing.assert_array_equal(DataTransformer(tparam("force_gray: true"), TRAIN).decode(raw), bgr)


def test_legacy_data_param_fields():
    lp = parse_text('name: "d" type: "Data" data_param { scale: 0.5 crop_size: 3 mirror: true }',
                    caffe_pb2.LayerParameter())
    p = effective_transform_param(lp, lp.data_param, "data_param")
    assert p.scale == 0.5 and p.crop_size == 3 and p.mirror
    lp = parse_text('name: "d" type: "Data" data_param { mean_file: "m" } transform_param { scale: 2 }',
                    caffe_pb2.LayerParameter())
    with pytest.raises(CaffeishError, match="data_param.mean_file is deprecated.*move data_param.mean_file into "
                                            "transform_param"):
        effective_transform_param(lp, lp.data_param, "data_param")
    lp = parse_text('name: "d" type: "Data" transform_param { scale: 2 }', caffe_pb2.LayerParameter())
    assert effective_transform_param(lp, lp.data_param, "data_param").scale == 2
