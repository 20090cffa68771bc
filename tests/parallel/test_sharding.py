"""Sharded data readers (data-parallel training): rank r of N reads records r, r+N, ... of the one-process stream.

No MPI here: each rank's layer is made in this process with ``set_shard(rank, N)``.
"""
import json

import h5py
import lmdb
import numpy
import pytest
from PIL import Image

import caffeish
from caffeish import CaffeishError
from caffeish import io as cio
from helpers import empty, make_layer


def hdf5_source(tmp_path):
    """Two files of 7 and 6 rows, row i labelled i, read shuffled (files and rows)."""
    names, start = [], 0
    for k, n in enumerate((7, 6)):
        ids = numpy.arange(start, start + n)
        with h5py.File(tmp_path / f"p{k}.h5", "w") as f:
            f["data"] = numpy.repeat(ids[:, None], 2, axis=1).astype(numpy.float32)
            f["label"] = ids.astype(numpy.float32)
        names.append(str(tmp_path / f"p{k}.h5"))
        start += n
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    return f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{tmp_path / "list.txt"}" ' \
           'batch_size: 3 shuffle: true }'


def lmdb_source(tmp_path):
    """13 Datums, record i labelled i, randomly cropped and mirrored."""
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    rng = numpy.random.default_rng(0)
    with env.begin(write=True) as txn:
        for i in range(13):
            image = rng.integers(0, 256, size=(1, 4, 4)).astype(numpy.uint8)
            txn.put(f"{i:08d}".encode(), cio.array_to_datum(image, i).SerializeToString())
    env.close()
    return f'type: "Data" top: "data" top: "label" transform_param {{ crop_size: 3 mirror: true }} ' \
           f'data_param {{ source: "{tmp_path / "db"}" batch_size: 3 backend: LMDB }}'


def image_source(tmp_path):
    """11 images, image i labelled i, read in a shuffled order."""
    lines = []
    for i in range(11):
        Image.fromarray(numpy.full((3, 4), i, dtype=numpy.uint8)).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png {i}")
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
    return f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{tmp_path / "images.txt"}" ' \
           f'root_folder: "{tmp_path}/" batch_size: 3 shuffle: true is_color: false }}'


SOURCES = {"HDF5Data": hdf5_source, "Data": lmdb_source, "ImageData": image_source}


def make(opened, text, shard=None, prefetch=True):
    caffeish.set_random_seed(11)  # the same layer seed (so the same shuffles) for every rank
    layer = make_layer(text, dtype=numpy.float32)
    layer.prefetch = prefetch
    opened.append(layer)
    top = empty(2, dtype=numpy.float32)
    layer.setup([], top)
    if shard:
        layer.set_shard(*shard)
    return layer, top


def read(layer, top, batches):
    labels = []
    for _ in range(batches):
        layer.Forward([], top)
        labels.extend(int(v) for v in top[1].data.ravel())
    return labels


@pytest.mark.parametrize("kind", list(SOURCES))
@pytest.mark.parametrize("prefetch", [True, False], ids=["thread", "sync"])
def test_ranks_read_disjoint_strided_records_covering_the_source(tmp_path, opened, kind, prefetch):
    text = SOURCES[kind](tmp_path)
    n, batches = 3, 5  # 15 records per rank: more than one pass over each source
    stream = read(*make(opened, text, prefetch=prefetch), n * batches)
    shards = [read(*make(opened, text, (r, n), prefetch), batches) for r in range(n)]
    for r, labels in enumerate(shards):
        assert labels == stream[r::n][:3 * batches]
    size = {"HDF5Data": 13, "Data": 13, "ImageData": 11}[kind]
    assert sorted(stream[:size]) == list(range(size))  # one pass over the source
    first_pass = [set(labels[:len(range(r, size, n))]) for r, labels in enumerate(shards)]
    assert all(not (a & b) for i, a in enumerate(first_pass) for b in first_pass[i + 1:])  # disjoint
    assert set().union(*first_pass) == set(range(size))  # together: every record


def test_shards_draw_the_randoms_of_their_one_process_batches(tmp_path, opened):
    """Local batch k of rank r is cropped and mirrored as batch k*N + r of the one-process stream."""
    text = lmdb_source(tmp_path).replace("batch_size: 3", "batch_size: 1")
    layer, top = make(opened, text)
    one = []
    for _ in range(6):
        layer.Forward([], top)
        one.append(top[0].data.copy())
    for r in range(2):
        layer, top = make(opened, text, (r, 2))
        for k in range(3):
            layer.Forward([], top)
            numpy.testing.assert_array_equal(top[0].data, one[2 * k + r])


@pytest.mark.parametrize("kind", list(SOURCES))
def test_state_is_global_and_resumes_with_another_rank_count(tmp_path, opened, kind):
    text = SOURCES[kind](tmp_path)
    stream = read(*make(opened, text), 40)
    layer, top = make(opened, text, (0, 3))
    read(layer, top, 2)  # 2 iterations of 3 ranks: 18 records consumed in all
    state = json.loads(json.dumps(layer.get_state()))
    assert state["batch"] == 6 and state["shard"] == [0, 3]
    for n in (1, 2, 4):
        for r in range(n):
            other, top = make(opened, text, (r, n))
            other.set_state(state)
            assert read(other, top, 2) == stream[18 + r::n][:6]
    # Rank 0's state, restored unsharded, is where one process would be after 6 batches.
    plain, top = make(opened, text)
    plain.set_state(state)
    assert read(plain, top, 1) == stream[18:21]


def test_unsharded_state_is_unchanged(tmp_path, opened):
    layer, top = make(opened, hdf5_source(tmp_path))
    read(layer, top, 2)
    state = layer.get_state()
    assert state["batch"] == 2 and "shard" not in state


def test_bad_shards_are_refused(tmp_path, opened):
    layer, _ = make(opened, hdf5_source(tmp_path))
    with pytest.raises(CaffeishError, match="shard rank 2 is outside 0..1"):
        layer.set_shard(2, 2)
