"""caffeish.registry: string registries, and packages whose modules register themselves when imported."""
import importlib
import sys

import pytest

from caffeish import CaffeishError
from caffeish.layer import LAYERS
from caffeish.registry import Registry
from caffeish.solvers import SOLVERS


def test_a_new_module_in_a_package_registers_without_an_import_line(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "__init__.py").write_text("from caffeish.registry import Registry, import_modules\n"
                                         "THINGS = Registry('thing')\n"
                                         "import_modules(__name__, __path__, skip=('helpers',))\n")
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(f"from . import THINGS\nTHINGS.register({name!r})(object())\n")
    (package / "helpers.py").write_text("raise RuntimeError('skipped modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        plugins = importlib.import_module("plugins")
        assert plugins.THINGS.names() == ["alpha", "beta"]
    finally:
        for name in [m for m in sys.modules if m == "plugins" or m.startswith("plugins.")]:
            del sys.modules[name]


def test_every_layer_and_solver_module_is_registered_by_importing_the_package():
    assert {"Convolution", "Pooling", "LSTM", "SoftmaxWithLoss", "Data", "ReLU", "InnerProduct"} <= set(LAYERS.names())
    assert {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"} <= set(SOLVERS.names())


def test_an_unknown_name_lists_the_known_ones_and_the_closest():
    registry = Registry("widget")
    registry.register("Sprocket")(object)
    with pytest.raises(CaffeishError, match=r"unknown widget type 'Sprocet'; did you mean 'Sprocket'\? "
                                            r"\(known types: Sprocket\)"):
        registry.get("Sprocet")
