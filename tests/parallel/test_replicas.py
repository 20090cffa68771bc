"""The data-parallel core (``caffeish.parallel.Replicas``) on its own: solvers made here, summed in host memory.

Two solvers built from the same seed become the two replicas of one in this process; stepping the first
trains both as one solver with iter_size 2 (see tests/parallel/test_multi_device.py for the data order).
"""
import numpy
import pytest

import caffeish
from caffeish import CaffeishError
from caffeish.parallel import Replicas
from caffeish.parallel.local_reducers import HostReducer
from parallel.test_multi_device import assert_close, single, weights, write_solver


@pytest.fixture
def made():
    solvers = []
    yield solvers
    for s in solvers:
        for net in [s.net] + s.test_nets:
            net.close()


def replicas(made, path, n=2):
    made.extend(caffeish.get_solver(path) for _ in range(n))
    return Replicas(made[-n:], HostReducer(["cpu"] * n))


@pytest.mark.parametrize("source", ["lmdb", "hdf5"])
def test_stepping_the_first_replica_trains_both_as_one_solver_with_iter_size_2(tmp_path, made, source):
    path = write_solver(tmp_path, source, test_iter=1, test_interval=100)
    expected, _ = single(write_solver(tmp_path, source, "reference.prototxt", iter_size=2), 4)
    core = replicas(made, path)
    first, second = core.replicas
    assert core.solver is first and core.is_root and core.size == 2
    assert [layer.shard for layer in core.sharded] == [(0, 2)] and second.net.layers[0].shard == (1, 2)
    assert len(first.test_nets) == 1 and second.test_nets == []  # the root alone tests
    assert first.passes is core and "forward_backward" not in vars(first)  # a strategy, no replaced method
    first.step(4)
    assert first.iter == 4
    assert_close(weights(first.net), expected)
    for a, b in zip(weights(first.net), weights(second.net)):
        numpy.testing.assert_array_equal(a, b)


def test_sync_from_root_gives_every_replica_the_roots_weights_history_and_iteration(tmp_path, made):
    core = replicas(made, write_solver(tmp_path, "lmdb"))
    first, second = core.replicas
    first.step(2)
    for blob in first.net.learnable_params + first.history:
        blob.data[...] += 1.0
    first.iter = 7
    core.sync_from_root(resumed=True)
    assert second.iter == 7
    for a, b in zip(first.net.learnable_params + first.history, second.net.learnable_params + second.history):
        numpy.testing.assert_array_equal(a.data, b.data)


def test_only_the_root_snapshots(tmp_path, made):
    core = replicas(made, write_solver(tmp_path, "lmdb"))
    assert core.before_snapshot() is True
    made.append(caffeish.get_solver(write_solver(tmp_path, "lmdb")))
    elsewhere = Replicas([made[-1]], HostReducer(["cpu"]), ranks=[1], size=2)  # replica 1 of 2, no root here
    assert not elsewhere.is_root and made[-1].snapshot() is None
    assert not list(tmp_path.glob("snap_iter_*"))


def test_bad_replica_sets_are_refused(tmp_path, made):
    made.extend(caffeish.get_solver(write_solver(tmp_path, "lmdb")) for _ in range(2))
    with pytest.raises(CaffeishError, match="the root .0., when here, first"):
        Replicas(made, HostReducer(["cpu", "cpu"]), ranks=[1, 0])
    with pytest.raises(CaffeishError, match="distinct index"):
        Replicas(made, HostReducer(["cpu", "cpu"]), ranks=[0, 0], size=2)
    with pytest.raises(CaffeishError, match="one replica in this process"):
        Replicas(made, HostReducer(["cpu", "cpu"]), overlap=True)
    with pytest.raises(CaffeishError, match="forward_backward"):
        made[0].set_passes(object())
