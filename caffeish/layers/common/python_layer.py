"""The Python layer: a layer written in Python by the user, as pycaffe's ``caffe.Layer`` contract has it --
``import_layer_module`` finds the user's module, ``PythonLayer`` wraps the user's object so that the net runs
it like any other layer.
"""
import importlib
import inspect
import os
import sys

import numpy

from ...blob import Blob
from ...errors import CaffeishError
from ...layer import Layer, register_layer

#: Directories searched first for Python layer modules (the Net may put the prototxt's directory here).
PYTHON_LAYER_PATHS = []
#: Environment variable with more directories to search (``os.pathsep``-separated).
PATH_ENV = "CAFFEISH_PYTHON_LAYER_PATH"
#: The methods a Python layer may define; each is looked up when the net first needs it (as pycaffe does), so
#: a layer never run backward needs no ``backward``; ``setup`` and ``reshape`` default to doing nothing.
METHODS = ("setup", "reshape", "forward", "backward")


class BlobVec(list):
    """A layer's parameter blobs: a list with pycaffe's ``add_blob(*shape)``."""

    def __init__(self, blobs=(), dtype=numpy.float32, owner=""):
        super().__init__(blobs)
        self.dtype = numpy.dtype(dtype)
        self.owner = owner

    def add_blob(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        blob = Blob(tuple(int(s) for s in shape), dtype=self.dtype, name=f"{self.owner}[{len(self)}]")
        self.append(blob)
        return blob


def search_dirs():
    """The extra directories searched before ``sys.path``, in order."""
    dirs = [os.fspath(d) for d in PYTHON_LAYER_PATHS]
    dirs += [d for d in os.environ.get(PATH_ENV, "").split(os.pathsep) if d]
    return [os.path.abspath(d) for d in dirs]


def import_layer_module(name):
    """Import ``name`` from ``search_dirs()``, ``sys.path``, then the current directory.

    Where the module is looked for, in order: the directories in ``PYTHON_LAYER_PATHS`` (meant for the directory
    of the prototxt being loaded), those in the environment variable ``CAFFEISH_PYTHON_LAYER_PATH``
    (``os.pathsep``-separated), ``sys.path`` (so PYTHONPATH), then the current directory.
    """
    if not name:
        raise CaffeishError("python_param.module is empty; give the name of the module that defines the layer")
    front, cwd = search_dirs(), os.getcwd()
    searched = front + ["sys.path (PYTHONPATH)", cwd]
    for d in reversed(front):
        sys.path.insert(0, d)
    sys.path.append(cwd)
    try:
        if name not in sys.modules:
            importlib.invalidate_caches()
        return importlib.import_module(name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if isinstance(e, ModuleNotFoundError) and missing and (name == missing or name.startswith(missing + ".")):
            hint = "; give the module name without '.py'" if name.endswith(".py") else ""
            raise CaffeishError(f"cannot import the Python layer module '{name}': it was not found in "
                                f"{', '.join(searched)}{hint}") from e
        raise CaffeishError(f"the Python layer module '{name}' was found but importing it failed: "
                            f"{type(e).__name__}: {e}") from e
    finally:
        for d in front:
            if d in sys.path:
                sys.path.remove(d)
        if cwd in sys.path:
            del sys.path[len(sys.path) - 1 - sys.path[::-1].index(cwd)]


def _user_method(user, method):
    """The user's own ``method`` (not one inherited from caffeish.Layer), or None."""
    attr = getattr(type(user), method, None)
    if attr is None or (isinstance(user, Layer) and attr is getattr(Layer, method)):
        return None
    return getattr(user, method)


def _instantiate(cls, param, dtype):
    """``cls(param, dtype=dtype)`` when it takes a dtype (caffeish.Layer subclasses do), else ``cls(param)``."""
    try:
        inspect.signature(cls).bind(param, dtype=dtype)
        takes_dtype = True
    except (TypeError, ValueError):
        takes_dtype = False
    return cls(param, dtype=dtype) if takes_dtype else cls(param)


@register_layer("Python")
class PythonLayer(Layer):
    """Delegates setup/reshape/forward/backward to the user's object; its blobs are the user's blobs.

    ``python_param { module: "my_layers" layer: "MyLayer" param_str: "..." }`` imports ``module`` and
    instantiates ``module.layer`` with the LayerParameter.  The class (``import caffeish as caffe;
    class MyLayer(caffe.Layer)``) defines ``setup(bottom, top)``, ``reshape(bottom, top)``,
    ``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``; it reads ``self.param_str`` and
    ``self.phase`` and may fill ``self.blobs`` (``self.blobs.add_blob(*shape)`` as in pycaffe, or by assigning a
    list of Blobs), which become this layer's learnable parameters.  ``net.layers[i]`` is the wrapper; attributes
    it lacks are looked up on the user's object (``.layer``), so ``net.layer_dict["data"].set_data(...)`` works.
    """

    def __init__(self, param, dtype=numpy.float32):
        self.__dict__["layer"] = None
        super().__init__(param, dtype=dtype)
        pp = param.python_param
        module = import_layer_module(pp.module)
        where = getattr(module, "__file__", None) or "built-in"
        if not pp.layer:
            raise CaffeishError(f"python_param.layer is empty; give the name of the class in module '{pp.module}'")
        cls = getattr(module, pp.layer, None)
        if cls is None:
            classes = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_"))
            raise CaffeishError(f"the Python layer module '{pp.module}' ({where}) has no class '{pp.layer}'"
                                + (f"; it defines {', '.join(classes)}" if classes else ""))
        if not inspect.isclass(cls):
            raise CaffeishError(f"'{pp.layer}' in the Python layer module '{pp.module}' ({where}) is not a class")
        not_callable = [m for m in METHODS if getattr(cls, m, None) is not None and not callable(getattr(cls, m))]
        if not_callable:
            raise CaffeishError(f"in the Python layer class '{pp.layer}' of module '{pp.module}' ({where}), "
                                f"{', '.join(not_callable)} is not a method")
        self._where = f"the Python layer class '{pp.layer}' in module '{pp.module}' ({where})"
        user = _instantiate(cls, param, self.dtype)
        blobs = getattr(user, "blobs", None)
        user.blobs = BlobVec(blobs if blobs is not None else self._own_blobs, dtype=self.dtype, owner=self.name)
        self.layer = user
        self._pass_attributes()

    # The wrapper's parameter blobs are the user's, whatever list the user's code keeps in ``self.blobs``.
    @property
    def blobs(self):
        user = self.__dict__.get("layer")
        return user.blobs if user is not None else self._own_blobs

    @blobs.setter
    def blobs(self, value):
        user = self.__dict__.get("layer")
        if user is not None:
            user.blobs = value
        else:
            self._own_blobs = value

    def __getattr__(self, name):
        user = self.__dict__.get("layer")
        if user is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(user, name)

    def _pass_attributes(self):
        user = self.layer
        user.param_str = self.param.python_param.param_str
        user.param_str_ = user.param_str  # the name very old pycaffe used
        user.phase = self.phase

    def _call(self, method, *args, optional=False):
        fn = _user_method(self.layer, method)
        if fn is None:
            if optional:
                return
            raise CaffeishError(f"{self._where} does not define {method}(), and the net runs {method} through it"
                                + ("; define backward(self, top, propagate_down, bottom), or stop gradients "
                                   "here (propagate_down: false, lr_mult: 0)" if method == "backward" else ""))
        fn(*args)

    # The user's exceptions pass through as they are: pycaffe code catches its own exception types.
    def layer_setup(self, bottom, top):
        self._pass_attributes()
        self._call("setup", bottom, top, optional=True)

    def reshape(self, bottom, top):
        self._call("reshape", bottom, top, optional=True)

    def forward(self, bottom, top):
        self._call("forward", bottom, top)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", top, propagate_down, bottom)

    def get_state(self):
        get = getattr(self.layer, "get_state", None)
        return get() if callable(get) else None

    def set_state(self, state):
        put = getattr(self.layer, "set_state", None)
        if callable(put):
            put(state)

    def close(self):
        close = getattr(self.layer, "close", None)
        if callable(close):
            close()

    def __repr__(self):
        return f"<Python layer '{self.name}' ({type(self.layer).__name__})>"
