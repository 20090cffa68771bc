"""The training loop: snapshots, exact resume, fine-tuning, testing, the NaN guard."""
import logging
import os

import numpy
import pytest

import caffeish
from caffeish import CaffeishError, caffe_pb2
from caffeish.prototxt import parse_text, read_binary_proto
from solvers.nets import TEACHER, solver_text


def param(**fields):
    return parse_text(solver_text(**fields), caffe_pb2.SolverParameter())


def weights(solver):
    return [b.data.copy() for b in solver.net.learnable_params]


@pytest.mark.parametrize("fmt, model_ext, state_ext", [("BINARYPROTO", ".caffemodel", ".solverstate"),
                                                       ("HDF5", ".caffemodel.h5", ".solverstate.h5")])
@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_resume_equals_uninterrupted_bitwise(tmp_path, fmt, model_ext, state_ext, solver_type):
    prefix = str(tmp_path / "run")
    common = dict(max_iter=12, snapshot=5, snapshot_prefix=f'"{prefix}"', snapshot_format=fmt,
                  type=f'"{solver_type}"', base_lr=0.01)
    if solver_type == "Adam":
        common["momentum2"] = 0.999
    straight = caffeish.get_solver(param(**common))
    straight.solve()
    assert os.path.exists(f"{prefix}_iter_5{model_ext}") and os.path.exists(f"{prefix}_iter_10{state_ext}")
    # A different seed in the resumed process: everything that matters comes from the snapshot.
    resumed = caffeish.get_solver(param(**{**common, "random_seed": 99}))
    resumed.solve(f"{prefix}_iter_5{state_ext}")
    assert resumed.iter == straight.iter == 12
    for a, b in zip(weights(straight), weights(resumed)):
        numpy.testing.assert_array_equal(a, b)


def test_solverstate_is_caffe_shaped(tmp_path):
    prefix = str(tmp_path / "s")
    s = caffeish.get_solver(param(max_iter=3, snapshot=3, snapshot_prefix=f'"{prefix}"', lr_policy='"step"',
                                  gamma=0.5, stepsize=2))
    s.solve()
    state = read_binary_proto(f"{prefix}_iter_3.solverstate", caffe_pb2.SolverState)
    assert state.iter == 3 and state.current_step == 1
    assert state.learned_net == f"{prefix}_iter_3.caffemodel"
    assert len(state.history) == 4 and list(state.history[0].shape.dim) == [3, 5]
    model = read_binary_proto(state.learned_net, caffe_pb2.NetParameter)
    names = [layer.name for layer in model.layer]
    assert "student" in names and len(model.layer[names.index("student")].blobs) == 2


def test_snapshot_after_train_and_interval(tmp_path):
    prefix = str(tmp_path / "p")
    s = caffeish.get_solver(param(max_iter=7, snapshot=3, snapshot_prefix=f'"{prefix}"',
                                  snapshot_after_train="true"))
    s.solve()
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".caffemodel"))
    assert files == ["p_iter_3.caffemodel", "p_iter_6.caffemodel", "p_iter_7.caffemodel"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_restoring_a_state_of_another_net_is_clear(tmp_path):
    prefix = str(tmp_path / "a")
    caffeish.get_solver(param(max_iter=1, snapshot=1, snapshot_prefix=f'"{prefix}"')).solve()
    other = TEACHER.replace("num_output: 3 weight_filler { type: \"gaussian\" std: 0.1 }",
                            "num_output: 3 bias_term: false weight_filler { type: \"gaussian\" std: 0.1 }")
    s = caffeish.get_solver(parse_text(solver_text(other), caffe_pb2.SolverParameter()))
    with pytest.raises(CaffeishError, match="history blobs.*different net"):
        s.restore(f"{prefix}_iter_1.solverstate")


def test_iter_size_equals_larger_batch():
    def run(batch, iter_size):
        # Without Dropout, the only random draws are DummyData's, so 2 x 4 rows are the same 8 rows as 1 x 8.
        text = TEACHER.replace("dim: 8 dim: 5", f"dim: {batch} dim: 5").replace('bottom: "yd"', 'bottom: "y"')
        text = text.replace(text[text.index('layer { name: "drop"'):text.index('layer { name: "loss"')], "")
        s = caffeish.get_solver(parse_text(solver_text(text, max_iter=3, iter_size=iter_size, momentum=0.5),
                                           caffe_pb2.SolverParameter()), dtype=numpy.float64)
        s.solve()
        return weights(s)
    for a, b in zip(run(8, 1), run(4, 2)):
        numpy.testing.assert_allclose(a, b, rtol=1e-10)


def test_test_nets_share_train_weights_and_report(caplog):
    s = caffeish.get_solver(param(max_iter=4, test_iter=2, test_interval=2, display=2))
    with caplog.at_level(logging.INFO, logger="caffeish"):
        s.solve()
    student = s.test_nets[0].layer_dict["student"].blobs[0]
    assert student.shares_data_with(s.net.layer_dict["student"].blobs[0])
    text = caplog.text
    assert "Iteration 2, Testing net (#0)" in text
    assert "    Test net output #0: loss = " in text and "(* 1 = " in text
    assert "Iteration 2 (" in text and " iter/s, " in text and "s/2 iters), loss = " in text
    assert "    Train net output #0: loss = " in text and "Iteration 2, lr = 0.05" in text


def test_finetune_with_renamed_layer(tmp_path, caplog):
    s = caffeish.get_solver(param(max_iter=5))
    s.solve()
    path = str(tmp_path / "w.caffemodel")
    s.net.save(path)
    renamed = TEACHER.replace('name: "student"', 'name: "student2"')
    net = caffeish.Net(renamed, caffeish.TEST)
    with caplog.at_level(logging.INFO, logger="caffeish"):
        net.copy_from(path)
    assert "Layer student2 is not in the weights" in caplog.text
    numpy.testing.assert_array_equal(net.params["teacher"][0].data, s.net.params["teacher"][0].data)
    assert not numpy.array_equal(net.params["student2"][0].data, s.net.params["student"][0].data)
    wrong = TEACHER.replace("dim: 8 dim: 5", "dim: 8 dim: 6")
    with pytest.raises(CaffeishError, match=r"layer 'teacher'.*cannot copy param 0.*\(3, 6\).*\(3, 5\).*rename"):
        caffeish.Net(wrong, path, caffeish.TEST)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_guard_names_iteration_and_layer(tmp_path):
    prefix = str(tmp_path / "n")
    s = caffeish.get_solver(param(max_iter=200, base_lr=1e4, snapshot=1, snapshot_prefix=f'"{prefix}"'))
    with pytest.raises(CaffeishError) as err:
        s.solve()
    msg = str(err.value)
    assert "training stopped at iteration" in msg and "layer" in msg
    it = int(msg.split("iteration ")[1].split(":")[0])
    # The snapshot of the last good iteration is intact and loads.
    caffeish.Net(TEACHER, f"{prefix}_iter_{it}.caffemodel", caffeish.TEST)


def test_solver_api_step_and_snapshot(tmp_path):
    s = caffeish.SGDSolver(param(max_iter=100, snapshot_prefix=f'"{tmp_path / "api"}"'))
    s.step(3)
    assert s.iter == 3
    model, state = s.snapshot()
    assert model.endswith("api_iter_3.caffemodel") and os.path.exists(state)
    s.step(2)
    s.restore(state)
    assert s.iter == 3


def test_solver_file_errors(tmp_path):
    bad = tmp_path / "bad_solver.prototxt"
    bad.write_text('base_lr: 0.1\nnet: "x.prototxt"\nlr_policy: fixed\n')
    with pytest.raises(CaffeishError, match=f"{bad}:3:12"):
        caffeish.get_solver(str(bad))
    missing = tmp_path / "s.prototxt"
    missing.write_text('net: "nowhere.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(CaffeishError, match="net file 'nowhere.prototxt'.*does not exist"):
        caffeish.get_solver(str(missing))
    with pytest.raises(CaffeishError, match="exactly one train net"):
        caffeish.get_solver(parse_text("base_lr: 0.1", caffe_pb2.SolverParameter()))


def test_net_path_relative_to_solver_file(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(TEACHER)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 1')
    monkeypatch.chdir("/")
    s = caffeish.get_solver(str(tmp_path / "solver.prototxt"))
    s.step(1)
