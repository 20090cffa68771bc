"""Data layer: real LMDBs of raw and encoded Datums, transforms, wrap-around, prefetch, resume, errors."""
import json

import lmdb
import numpy
import pytest

import caffeish
from caffeish import CaffeishError, Net, caffe_pb2
from caffeish import io as cio
from gradient_check import checks_forward
from helpers import empty, make_layer


def make_lmdb(path, images, labels, encoded=False, keys=None):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            if encoded:
                datum = caffe_pb2.Datum(channels=image.shape[0], height=image.shape[1], width=image.shape[2],
                                        encoded=True, data=cio.encode_image(image, "png"), label=int(label))
            else:
                datum = cio.array_to_datum(image, int(label))
            key = keys[i] if keys else f"{i:08d}_img"
            txn.put(key.encode(), datum.SerializeToString())
    env.close()
    return str(path)


def random_images(n, shape=(3, 6, 5), seed=0):
    rng = numpy.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape).astype(numpy.uint8) for _ in range(n)], list(range(n))


def data_layer(opened, db, extra="", ntop=2, phase=caffe_pb2.TRAIN, batch=4, prefetch=True):
    layer = make_layer(f'type: "Data" data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} {extra}',
                       dtype=numpy.float32, phase=phase)
    layer.prefetch = prefetch
    opened.append(layer)
    top = empty(ntop, dtype=numpy.float32)
    layer.setup([], top)
    return layer, top


def run(layer, top, n):
    out = []
    for _ in range(n):
        layer.Forward([], top)
        out.append(tuple(t.data.copy() for t in top))
    return out


@checks_forward("Data")
@pytest.mark.parametrize("encoded", [False, True])
def test_data_reads_datums_in_order_and_wraps(tmp_path, opened, encoded):
    ims, labels = random_images(6)
    db = make_lmdb(tmp_path / "db", ims, labels, encoded=encoded)
    layer, top = data_layer(opened, db)
    assert top[0].shape == (4, 3, 6, 5) and top[1].shape == (4,)
    got = run(layer, top, 3)
    order = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
    for b, (data, label) in enumerate(got):
        idx = order[4 * b:4 * b + 4]
        numpy.testing.assert_array_equal(data, numpy.stack([ims[i] for i in idx]).astype(numpy.float32))
        numpy.testing.assert_array_equal(label, numpy.asarray(idx, numpy.float32))
    assert layer.get_state()["epoch"] == 2 and layer.get_state()["pos"] == 0
    assert not layer.has_backward


@checks_forward("Data")
def test_data_transform_test_phase_centre_crop_mean_scale(tmp_path, opened):
    ims, labels = random_images(5, shape=(3, 7, 8))
    db = make_lmdb(tmp_path / "db", ims, labels)
    layer, top = data_layer(opened, db, "transform_param { crop_size: 4 mean_value: 10 mean_value: 20 "
                                        "mean_value: 30 scale: 0.5 }", phase=caffe_pb2.TEST, batch=5)
    assert top[0].shape == (5, 3, 4, 4)
    (data, label), = run(layer, top, 1)
    mean = numpy.asarray([10, 20, 30], numpy.float32).reshape(3, 1, 1)
    for i in range(5):
        ref = (ims[i][:, 1:5, 2:6].astype(numpy.float32) - mean) * numpy.float32(0.5)
        numpy.testing.assert_allclose(data[i], ref, rtol=1e-6)


def test_data_float_datums_and_single_top(tmp_path, opened):
    rng = numpy.random.default_rng(1)
    ims = [rng.normal(size=(2, 3, 3)).astype(numpy.float32) for _ in range(3)]
    db = make_lmdb(tmp_path / "db", ims, [0, 1, 2])
    layer, top = data_layer(opened, db, ntop=1, batch=3)
    (data,), = run(layer, top, 1)
    numpy.testing.assert_array_equal(data, numpy.stack(ims))


def test_data_prefetch_same_batches_as_without(tmp_path, opened):
    ims, labels = random_images(7, shape=(3, 8, 8))
    db = make_lmdb(tmp_path / "db", ims, labels, encoded=True)
    extra = "transform_param { crop_size: 5 mirror: true mean_value: 128 }"
    caffeish.set_random_seed(4)
    a = run(*data_layer(opened, db, extra), 5)
    caffeish.set_random_seed(4)
    b = run(*data_layer(opened, db, extra, prefetch=False), 5)
    for (x1, y1), (x2, y2) in zip(a, b):
        numpy.testing.assert_array_equal(x1, x2)
        numpy.testing.assert_array_equal(y1, y2)
    assert len({x.tobytes() for x, _ in a}) == 5


def test_data_resume_from_state(tmp_path, opened):
    ims, labels = random_images(9, shape=(1, 6, 6))
    db = make_lmdb(tmp_path / "db", ims, labels)
    extra = "transform_param { crop_size: 4 mirror: true }"
    layer, top = data_layer(opened, db, extra)
    run(layer, top, 3)
    state = json.loads(json.dumps(layer.get_state()))
    assert state["type"] == "Data" and state["batch"] == 3 and state["pos"] == 3 and state["epoch"] == 1
    expected = run(layer, top, 4)
    other, other_top = data_layer(opened, db, extra)
    other.set_state(state)
    for (x1, y1), (x2, y2) in zip(run(other, other_top, 4), expected):
        numpy.testing.assert_array_equal(x1, x2)
        numpy.testing.assert_array_equal(y1, y2)


def test_data_rand_skip(tmp_path, opened):
    ims, labels = random_images(10, shape=(1, 2, 2))
    db = make_lmdb(tmp_path / "db", ims, labels)
    starts = set()
    for seed in range(6):
        caffeish.set_random_seed(seed)
        layer, top = data_layer(opened, db, "data_param { rand_skip: 5 }", batch=2)
        (_, label), = run(layer, top, 1)
        assert label[1] == (label[0] + 1) % 10
        starts.add(int(label[0]))
    assert starts <= set(range(5)) and len(starts) > 1


def test_data_legacy_fields(tmp_path, opened):
    ims, labels = random_images(2, shape=(1, 5, 5))
    db = make_lmdb(tmp_path / "db", ims, labels)
    layer, top = data_layer(opened, db, "data_param { crop_size: 3 scale: 2 }", phase=caffe_pb2.TEST, batch=2)
    (data, _), = run(layer, top, 1)
    numpy.testing.assert_array_equal(data[0], ims[0][:, 1:4, 1:4].astype(numpy.float32) * 2)
    with pytest.raises(CaffeishError, match="data_param.crop_size is deprecated.*transform_param"):
        data_layer(opened, db, "data_param { crop_size: 3 } transform_param { scale: 2 }")


def test_data_mean_file(tmp_path, opened):
    ims, labels = random_images(2, shape=(2, 5, 5))
    db = make_lmdb(tmp_path / "db", ims, labels)
    mean = numpy.arange(50, dtype=numpy.float32).reshape(2, 5, 5)
    cio.write_mean_binaryproto(str(tmp_path / "mean.bp"), mean)
    layer, top = data_layer(opened, db, f'transform_param {{ mean_file: "{tmp_path / "mean.bp"}" crop_size: 3 }}',
                            phase=caffe_pb2.TEST, batch=2)
    (data, _), = run(layer, top, 1)
    numpy.testing.assert_allclose(data[1], (ims[1].astype(numpy.float32) - mean)[:, 1:4, 1:4])
    cio.write_mean_binaryproto(str(tmp_path / "bad.bp"), numpy.zeros((2, 4, 4), numpy.float32))
    with pytest.raises(CaffeishError, match="mean file's image has shape"):
        data_layer(opened, db, f'transform_param {{ mean_file: "{tmp_path / "bad.bp"}" }}')


def test_data_size_mismatch_names_the_key(tmp_path, opened):
    ims = [numpy.zeros((1, 4, 4), numpy.uint8), numpy.zeros((1, 4, 4), numpy.uint8), numpy.zeros((1, 5, 4), numpy.uint8)]
    db = make_lmdb(tmp_path / "db", ims, [0, 1, 2], keys=["a", "b", "odd_one"])
    layer, top = data_layer(opened, db, batch=3)
    with pytest.raises(CaffeishError, match=r"layer 'data'.*record 'odd_one' holds an image of shape \(1, 5, 4\)"):
        layer.Forward([], top)
    # With a crop, Caffe crops each Datum from its own size.
    layer, top = data_layer(opened, db, "transform_param { crop_size: 3 }", batch=3)
    (data, _), = run(layer, top, 1)
    assert data.shape == (3, 1, 3, 3)


def test_data_errors(tmp_path, opened):
    ims, labels = random_images(2)
    db = make_lmdb(tmp_path / "db", ims, labels)
    with pytest.raises(CaffeishError, match="LevelDB is not supported"):
        layer = make_layer(f'type: "Data" data_param {{ source: "{db}" batch_size: 2 backend: LEVELDB }}')
        layer.setup([], empty(2))
    with pytest.raises(CaffeishError, match="database does not exist"):
        data_layer(opened, tmp_path / "nope")
    with pytest.raises(CaffeishError, match="batch_size must be positive"):
        data_layer(opened, db, batch=0)
    with pytest.raises(CaffeishError, match="crop_size 9 is larger"):
        data_layer(opened, db, "transform_param { crop_size: 9 }")
    # backend left unset (Caffe's default is LEVELDB): an LMDB directory is recognised.
    layer = make_layer(f'type: "Data" data_param {{ source: "{db}" batch_size: 2 }}', dtype=numpy.float32)
    opened.append(layer)
    top = empty(2, dtype=numpy.float32)
    layer.setup([], top)
    layer.Forward([], top)
    numpy.testing.assert_array_equal(top[1].data, [0, 1])


def test_data_in_a_net(tmp_path, opened):
    ims, labels = random_images(8, shape=(1, 4, 4))
    db = make_lmdb(tmp_path / "db", ims, [i % 3 for i in labels])
    caffeish.set_random_seed(0)
    net = Net(f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
                data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}
                transform_param {{ scale: 0.00390625 mirror: true }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
        """, caffeish.TRAIN)
    opened.append(net)
    for _ in range(3):
        loss = net.forward()["loss"]
        assert numpy.isfinite(float(loss))
        net.backward()
    assert net.blobs["data"].shape == (4, 1, 4, 4)
    assert float(net.blobs["data"].data.max()) <= 1.0
    assert net.layers[0].get_state()["batch"] == 3
