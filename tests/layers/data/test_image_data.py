"""ImageData: image files from a list, BGR decoding, resize, shuffle per epoch, rand_skip, errors."""
import json
import os
import time

import numpy
import pytest
from PIL import Image

import caffeish
from caffeish import CaffeishError, Net, caffe_pb2
from caffeish.layers.data.prefetch import live_prefetch_threads
from caffeish.imgproc import libpng_gray, resize_linear
from gradient_check import checks_forward
from helpers import empty, make_layer


def write_images(folder, n, size=(5, 6), gray=False, seed=0, names=None):
    """PNG files; returns their BGR (C, H, W) arrays."""
    rng = numpy.random.default_rng(seed)
    arrays = []
    for i in range(n):
        name = names[i] if names else f"img {i}.png"  # a space in the name: the label is after the LAST space
        if gray:
            a = rng.integers(0, 256, size=size).astype(numpy.uint8)
            Image.fromarray(a).save(folder / name)
            arrays.append(a[None])
        else:
            rgb = rng.integers(0, 256, size=size + (3,)).astype(numpy.uint8)
            Image.fromarray(rgb).save(folder / name)
            arrays.append(rgb[:, :, ::-1].transpose(2, 0, 1).copy())
    return arrays


def write_list(folder, n, names=None, labels=None):
    lines = [f"{names[i] if names else f'img {i}.png'} {labels[i] if labels else 10 + i}" for i in range(n)]
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "list.txt")


def image_layer(opened, source, root, params="", extra="", batch=3, phase=caffe_pb2.TRAIN, prefetch=True):
    layer = make_layer(f'type: "ImageData" image_data_param {{ source: "{source}" root_folder: "{root}/" '
                       f'batch_size: {batch} {params} }} {extra}', dtype=numpy.float32, phase=phase)
    layer.prefetch = prefetch
    opened.append(layer)
    top = empty(2, dtype=numpy.float32)
    layer.setup([], top)
    return layer, top


def run(layer, top, n):
    out = []
    for _ in range(n):
        layer.Forward([], top)
        out.append((top[0].data.copy(), top[1].data.copy()))
    return out


@checks_forward("ImageData")
def test_image_data_reads_bgr_images_in_list_order(tmp_path, opened):
    ims = write_images(tmp_path, 4)
    source = write_list(tmp_path, 4)
    layer, top = image_layer(opened, source, tmp_path)
    assert top[0].shape == (3, 3, 5, 6) and top[1].shape == (3,)
    got = run(layer, top, 2)
    order = [0, 1, 2, 3, 0, 1]
    for b, (data, label) in enumerate(got):
        idx = order[3 * b:3 * b + 3]
        numpy.testing.assert_array_equal(data, numpy.stack([ims[i] for i in idx]).astype(numpy.float32))
        numpy.testing.assert_array_equal(label, [10 + i for i in idx])
    assert not layer.has_backward


@checks_forward("ImageData")
def test_image_data_gray_resize_and_transform(tmp_path, opened):
    ims = write_images(tmp_path, 2, size=(4, 6))
    source = write_list(tmp_path, 2)
    layer, top = image_layer(opened, source, tmp_path, "is_color: false new_height: 8 new_width: 12",
                             "transform_param { crop_size: 6 scale: 0.5 }", batch=2, phase=caffe_pb2.TEST)
    assert top[0].shape == (2, 1, 6, 6)
    (data, _), = run(layer, top, 1)
    for i in range(2):
        gray = libpng_gray(ims[i][::-1].transpose(1, 2, 0))  # cv::imread(png, IMREAD_GRAYSCALE): libpng's grey
        big = resize_linear(gray, 8, 12)                      # cv::resize, INTER_LINEAR
        numpy.testing.assert_array_equal(data[i, 0], big[1:7, 3:9].astype(numpy.float32) * 0.5)


def test_image_data_resize_is_opencv_exactly(tmp_path, opened):
    cv2 = pytest.importorskip("cv2")
    write_images(tmp_path, 2, size=(7, 9))
    source = write_list(tmp_path, 2)
    layer, top = image_layer(opened, source, tmp_path, "new_height: 5 new_width: 13", batch=2, phase=caffe_pb2.TEST)
    (data, _), = run(layer, top, 1)
    for i in range(2):
        want = cv2.resize(cv2.imread(str(tmp_path / f"img {i}.png"), cv2.IMREAD_COLOR), (13, 5))
        numpy.testing.assert_array_equal(data[i], want.transpose(2, 0, 1).astype(numpy.float32))


def test_image_data_shuffle_each_epoch_and_prefetch(tmp_path, opened):
    write_images(tmp_path, 6, size=(2, 2))
    source = write_list(tmp_path, 6)
    caffeish.set_random_seed(7)
    layer, top = image_layer(opened, source, tmp_path, "shuffle: true", batch=3)
    labels = numpy.concatenate([lab for _, lab in run(layer, top, 6)]).astype(int).tolist()
    epochs = [labels[i:i + 6] for i in (0, 6, 12)]
    for e in epochs:
        assert sorted(e) == list(range(10, 16))
    assert len({tuple(e) for e in epochs}) > 1
    caffeish.set_random_seed(7)
    plain, plain_top = image_layer(opened, source, tmp_path, "shuffle: true", batch=3, prefetch=False)
    again = numpy.concatenate([lab for _, lab in run(plain, plain_top, 6)]).astype(int).tolist()
    assert again == labels


def test_image_data_resume(tmp_path, opened):
    write_images(tmp_path, 5, size=(6, 6))
    source = write_list(tmp_path, 5)
    extra = "transform_param { crop_size: 4 mirror: true }"
    layer, top = image_layer(opened, source, tmp_path, "shuffle: true", extra)
    run(layer, top, 3)
    state = json.loads(json.dumps(layer.get_state()))
    assert state["epoch"] == 1 and state["pos"] == 4 and sorted(state["order"]) == list(range(5))
    expected = run(layer, top, 4)
    other, other_top = image_layer(opened, source, tmp_path, "shuffle: true", extra)
    other.set_state(state)
    for (x1, y1), (x2, y2) in zip(run(other, other_top, 4), expected):
        numpy.testing.assert_array_equal(x1, x2)
        numpy.testing.assert_array_equal(y1, y2)


def test_image_data_rand_skip(tmp_path, opened):
    write_images(tmp_path, 8, size=(2, 2))
    source = write_list(tmp_path, 8)
    starts = set()
    for seed in range(6):
        caffeish.set_random_seed(seed)
        layer, top = image_layer(opened, source, tmp_path, "rand_skip: 4", batch=1)
        (_, label), = run(layer, top, 1)
        starts.add(int(label[0]) - 10)
    assert starts <= set(range(4)) and len(starts) > 1


def test_image_data_errors(tmp_path, opened):
    write_images(tmp_path, 3, size=(3, 3))
    (tmp_path / "bad.txt").write_text("img 0.png 1\n\nimg 1.png\n")
    with pytest.raises(CaffeishError, match=r"bad.txt: line 3: the label '1.png' \(after the last space\) is not an integer"):
        image_layer(opened, tmp_path / "bad.txt", tmp_path)
    (tmp_path / "nolabel.txt").write_text("img0.png\n")
    with pytest.raises(CaffeishError, match=r"nolabel.txt: line 1: expected 'path label'"):
        image_layer(opened, tmp_path / "nolabel.txt", tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CaffeishError, match="names no images"):
        image_layer(opened, tmp_path / "empty.txt", tmp_path)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "junk.txt").write_text("junk.png 0\n")
    with pytest.raises(CaffeishError, match=r"cannot load image .*junk.png \(line 1 of"):
        image_layer(opened, tmp_path / "junk.txt", tmp_path)
    # An image missing after the first batch: the thread's error comes out on forward, naming the file.
    (tmp_path / "later.txt").write_text("img 0.png 0\nimg 1.png 1\nghost.png 2\n")
    layer, top = image_layer(opened, tmp_path / "later.txt", tmp_path, batch=2)
    layer.Forward([], top)
    with pytest.raises(CaffeishError, match=r"layer 'imagedata'.*reading batch 1 failed.*ghost.png.*line 3"):
        layer.Forward([], top)
    with pytest.raises(CaffeishError, match="new_height .* and new_width .* must be set together"):
        image_layer(opened, tmp_path / "later.txt", tmp_path, "new_height: 4")
    # Images of different sizes without resize or crop.
    write_images(tmp_path, 1, size=(4, 3), names=["tall.png"], seed=3)
    (tmp_path / "sizes.txt").write_text("img 0.png 0\ntall.png 1\n")
    layer, top = image_layer(opened, tmp_path / "sizes.txt", tmp_path, batch=2)
    with pytest.raises(CaffeishError, match=r"image .*tall.png has shape \(3, 4, 3\)"):
        layer.Forward([], top)


def test_image_data_in_a_net(tmp_path, opened):
    write_images(tmp_path, 4, size=(4, 4))
    source = write_list(tmp_path, 4, labels=[0, 1, 2, 1])
    net = Net(f"""
        layer {{ name: "data" type: "ImageData" top: "data" top: "label"
                image_data_param {{ source: "{source}" root_folder: "{tmp_path}/" batch_size: 2 shuffle: true }}
                transform_param {{ scale: 0.00390625 }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
        """, caffe_pb2.TRAIN)
    opened.append(net)
    for _ in range(3):
        assert numpy.isfinite(float(net.forward()["loss"]))
    assert net.blobs["data"].shape == (2, 3, 4, 4)


def test_close_gives_up_on_a_prefetch_thread_stuck_in_a_read(tmp_path, monkeypatch, caplog):
    """A source that never delivers (here a FIFO with no writer, as a hung network file system would):
    close() returns after CLOSE_TIMEOUT with a warning naming the thread instead of hanging forever."""
    from caffeish.layers.data import prefetch
    monkeypatch.setattr(prefetch, "CLOSE_TIMEOUT", 0.3)
    write_images(tmp_path, 1)
    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    (tmp_path / "list.txt").write_text("img 0.png 1\nstuck.png 2\n")
    layer = make_layer(f'name: "img" type: "ImageData" image_data_param {{ source: "{tmp_path}/list.txt" '
                       f'root_folder: "{tmp_path}/" batch_size: 1 }}', dtype=numpy.float32)
    top = empty(2, dtype=numpy.float32)
    layer.setup([], top)
    layer.Forward([], top)  # the first image; the thread then blocks opening the FIFO
    time.sleep(0.2)
    started = time.monotonic()
    layer.close()
    assert time.monotonic() - started < 3
    assert any("did not stop within 0.3 s" in r.getMessage() and "img" in r.getMessage() for r in caplog.records)
    assert live_prefetch_threads()
    with open(fifo, "wb") as f:  # let the read finish: the stopped thread ends
        f.write(b"not an image")
    deadline = time.monotonic() + 5
    while live_prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not live_prefetch_threads()
