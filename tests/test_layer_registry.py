"""Every registered layer type has a forward test against a reference, and a gradient check if it has a backward."""
import importlib
import pathlib

import caffeish  # noqa: F401  (registers the layers)
from caffeish.layer import LAYERS, create_layer
from caffeish.errors import CaffeishError
from caffeish import caffe_pb2

import gradient_check

import pytest


def _import_layer_tests():
    root = pathlib.Path(__file__).parent
    for path in sorted((root / "layers").rglob("test_*.py")):
        importlib.import_module(".".join(path.relative_to(root).with_suffix("").parts))


def test_every_layer_has_forward_and_gradient_tests():
    _import_layer_tests()
    missing = []
    for name, cls in LAYERS.items():
        if name not in gradient_check.FORWARD_CHECKED:
            missing.append(f"{name}: no forward test")
        if cls.has_backward and name not in gradient_check.GRADIENT_CHECKED:
            missing.append(f"{name}: no gradient check")
    assert not missing, "layers without tests:\n" + "\n".join(missing)


def test_unknown_type_lists_known_ones():
    with pytest.raises(CaffeishError) as err:
        create_layer(caffe_pb2.LayerParameter(name="x", type="Relu"))
    msg = str(err.value)
    assert "unknown layer type 'Relu'" in msg and "ReLU" in msg and "layer 'x'" in msg
