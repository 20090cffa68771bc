"""Every layer type; importing this package registers them all.

Sub-packages by kind: ``activation``, ``common``, ``data``, ``loss``, ``recurrent``, ``vision``;
``_common`` holds the pieces layers of several kinds share.

The package also answers pycaffe's ``from caffe import layers as L``:
``L.Convolution(bottom, ...)`` (any capitalised name that is not a module here)
is NetSpec's layer function of that type, so one name serves both uses.
"""
from ..registry import import_modules

import_modules(__name__, __path__)


def __getattr__(name):
    if name[:1].isupper():
        from ..net_spec import layers as spec_layers
        return getattr(spec_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
