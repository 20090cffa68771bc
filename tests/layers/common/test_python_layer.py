import re
import sys
import uuid

import numpy
import pytest

import caffeish
from caffeish import CaffeishError, caffe_pb2
from caffeish.layers.common import python_layer
from caffeish.prototxt import parse_text
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

LAYERS_SOURCE = '''
import caffeish as caffe


class ScaleLayer(caffe.Layer):
    """y = s * x with a learnable scalar s, initialised from param_str."""

    def setup(self, bottom, top):
        if len(bottom) != 1 or len(top) != 1:
            raise Exception("ScaleLayer takes one bottom and one top")
        if not self.blobs:
            self.blobs.add_blob(1)
            self.blobs[0].data[...] = float(self.param_str or 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class PhaseLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase

    def backward(self, top, propagate_down, bottom):
        pass

    def helper(self):
        return "from the user's object"


class Incomplete(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass
'''


@pytest.fixture(scope="module")
def layer_dir(tmp_path_factory):
    """A directory holding a uniquely named module of Python layers (so sys.modules never mixes tests up)."""
    d = tmp_path_factory.mktemp("pylayers")
    name = f"pylayers_{uuid.uuid4().hex[:8]}"
    (d / f"{name}.py").write_text(LAYERS_SOURCE)
    yield d, name
    sys.modules.pop(name, None)


@pytest.fixture
def module(layer_dir, monkeypatch):
    d, name = layer_dir
    monkeypatch.setattr(python_layer, "PYTHON_LAYER_PATHS", [str(d)])
    return name


def python(module, cls="ScaleLayer", param_str="1.5", dtype=numpy.float64, phase=caffe_pb2.TRAIN):
    return make_layer(f'type: "Python" python_param {{ module: "{module}" layer: "{cls}" param_str: "{param_str}" }}',
                      dtype=dtype, phase=phase)


@checks_forward("Python")
def test_python_layer_forward_through_the_wrapper(module):
    layer = python(module)
    x = blob((2, 3))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, 1.5 * x.data)
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (1,) and layer.blobs[0].dtype == numpy.float64
    assert layer.blobs is layer.layer.blobs and layer.type == "Python"
    assert layer.param_str == "1.5"         # looked up on the user's object


@checks_gradient("Python")
def test_python_layer_gradient_through_the_wrapper(module):
    check_gradient(python(module, param_str="0.7"), [blob((2, 3))], empty())


def test_python_layer_phase_and_attribute_delegation(module):
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        layer = python(module, "PhaseLayer", phase=phase)
        top = empty()
        layer.setup([], top)
        layer.Forward([], top)
        assert top[0].shape == () and float(top[0].data) == phase
    assert layer.helper() == "from the user's object"
    with pytest.raises(AttributeError):
        layer.no_such_attribute  # noqa: B018


NET = """
name: "pynet"
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 3 } } }
layer { name: "scale" type: "Python" bottom: "x" top: "sx"
        python_param { module: "%s" layer: "ScaleLayer" param_str: "0.25" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "sx" bottom: "y" top: "loss" }
"""


def test_python_layer_trains_in_a_net_with_a_solver(module):
    solver_param = parse_text(f'net_param {{ {NET % module} }} base_lr: 0.2 lr_policy: "fixed" max_iter: 30 '
                              'type: "SGD" solver_mode: CPU random_seed: 1', caffe_pb2.SolverParameter())
    solver = caffeish.get_solver(solver_param)
    net = solver.net
    x = numpy.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(numpy.float32)
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = 2.0 * x
    assert net.params["scale"][0] is net.learnable_params[0]
    start = net.forward_prefilled()
    solver.step(30)
    end = net.forward_prefilled()
    assert end < 0.01 * start
    assert abs(float(net.params["scale"][0].data[0]) - 2.0) < 0.05


def test_python_layer_found_through_the_environment_and_the_current_directory(tmp_path, monkeypatch):
    for how in ("env", "cwd"):
        d = tmp_path / how
        d.mkdir()
        name = f"pyenv_{uuid.uuid4().hex[:8]}"
        (d / f"{name}.py").write_text(LAYERS_SOURCE)
        monkeypatch.setattr(python_layer, "PYTHON_LAYER_PATHS", [])
        if how == "env":
            monkeypatch.setenv(python_layer.PATH_ENV, str(d))
        else:
            monkeypatch.delenv(python_layer.PATH_ENV, raising=False)
            monkeypatch.chdir(d)
        path_before = list(sys.path)
        try:
            layer = python(name)
        finally:
            sys.modules.pop(name, None)
        assert type(layer.layer).__name__ == "ScaleLayer"
        assert sys.path == path_before   # the search directories are not left behind


def test_python_layer_errors(module, tmp_path, monkeypatch):
    with pytest.raises(CaffeishError, match=r"cannot import the Python layer module 'no_such_mod_x1'.*"
                                            + re.escape(str(python_layer.PYTHON_LAYER_PATHS[0]))):
        python("no_such_mod_x1")
    with pytest.raises(CaffeishError, match=f"module '{module}' .* has no class 'Missing'; it defines .*ScaleLayer"):
        python(module, "Missing")
    assert type(python(module, "Incomplete").layer).__name__ == "Incomplete"  # methods are needed when run
    broken = f"pybroken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{broken}.py").write_text("import no_such_dependency_x2\n")
    monkeypatch.setattr(python_layer, "PYTHON_LAYER_PATHS", [str(tmp_path)])
    with pytest.raises(CaffeishError, match=f"'{broken}' was found but importing it failed.*no_such_dependency_x2"):
        python(broken)
    with pytest.raises(CaffeishError, match="python_param.module is empty"):
        make_layer('type: "Python"')
