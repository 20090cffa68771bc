"""The gradient buckets and the hooks that start them, with a stand-in for MPI (no mpi4py needed).

The stand-in world has two "ranks" whose all-reduce doubles each bucket (both ranks hold the same
gradients), so after the division by the number of ranks the gradients must be the one-process ones.
"""
import numpy

import caffeish
from caffeish import caffe_pb2
from caffeish.parallel import DataParallel, World, gradient_layers, make_buckets
from caffeish.prototxt import parse_text
from solvers.nets import solver_text

NET = """
layer { name: "x" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 dim: 2 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" param { name: "w1" } param { lr_mult: 0 }
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip_shared" type: "InnerProduct" bottom: "h" top: "h2" param { name: "w1" } param { lr_mult: 1 }
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h2" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def solver(**fields):
    param = parse_text(solver_text(NET, **fields), caffe_pb2.SolverParameter())
    return caffeish.get_solver(param)


def test_gradient_layers_follow_backward_order_and_sharing():
    s = solver()
    names = s.net.layer_names
    found = [(s.net.learnables[i].name, names[lid]) for i, lid in gradient_layers(s.net)]
    # ip2's weight and bias first; then ip_shared's bias; the shared w1 is complete after ip1, the first holder;
    # ip1's bias (lr_mult 0) is not sent at all.
    assert found == [("ip2[0]", "ip2"), ("ip2[1]", "ip2"), ("ip_shared[1]", "ip_shared"), ("w1", "ip1")]


def test_buckets_split_by_size_and_start_at_their_last_layer():
    s = solver()
    lids = {name: i for i, name in enumerate(s.net.layer_names)}
    whole = make_buckets(s.net, 1 << 20)
    assert len(whole) == 1 and whole[0].trigger == lids["ip1"] and whole[0].count == 12 + 2 + 6 + 36
    each = make_buckets(s.net, 1)
    assert [b.trigger for b in each] == [lids["ip2"], lids["ip2"], lids["ip_shared"], lids["ip1"]]


class FakeMPI:
    IN_PLACE, SUM, MIN, MAX = "in place", "sum", "min", "max"
    THREAD_SINGLE, THREAD_MULTIPLE = 0, 3

    @staticmethod
    def Query_thread():
        return FakeMPI.THREAD_SINGLE  # no progress thread

    class Request:
        @staticmethod
        def Testall(requests):
            return True


class FakeComm:
    """Collectives of two ranks holding the same values: a sum doubles, a max keeps."""

    def __init__(self, events):
        self.events = events

    def Iallreduce(self, send, recv, op):
        if op == "sum":
            recv *= 2
        self.events.append(("allreduce", recv.size))
        return "request"

    def Ibcast(self, array, root):
        return "request"

    def Ibarrier(self):
        return "request"


def fake_world(events):
    world = World.__new__(World)
    world.MPI, world.comm = FakeMPI, FakeComm(events)
    world.rank, world.size, world.local_rank, world.local_size = 0, 2, 0, 1
    world.timeout, world.on_abort, world._failed = 5.0, [], False
    return world


def test_buckets_start_during_the_last_backward_pass_and_give_one_process_gradients():
    reference = solver(iter_size=2, max_iter=3)
    reference.step(3)
    events = []
    s = solver(iter_size=2, max_iter=3)
    names = s.net.layer_names
    s.net.after_backward(lambda lid: events.append(("backward", names[lid])))  # before the trainer's hook
    dp = DataParallel(s, fake_world(events), bucket_bytes=1)
    dp.broadcast_from_root()
    events.clear()  # (set-up's own collectives)
    s.step(1)
    one_pass = [("backward", n) for n in ("loss", "ip2", "ip_shared", "relu", "ip1")]
    assert events[:5] == one_pass  # the first pass of iter_size 2 starts nothing
    assert events[5:] == [("backward", "loss"), ("backward", "ip2"), ("allreduce", 12), ("allreduce", 2),
                          ("backward", "ip_shared"), ("allreduce", 6), ("backward", "relu"), ("backward", "ip1"),
                          ("allreduce", 36), ("allreduce", 3)]  # 3: the loss and the stop/snapshot requests
    s.step(2)
    for a, b in zip(reference.net.learnable_params, s.net.learnable_params):
        numpy.testing.assert_allclose(a.data, b.data, rtol=1e-6)
    assert dp.stats["iterations"] == 3
