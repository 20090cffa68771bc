"""The Layer base class -- Caffe's layer contract, in Python -- with the NeuronLayer and LossLayer bases, the
parameter blobs a layer declares (``ParamBlob``, ``Layer.init_params``), and the registry of layer types
(``register_layer``, ``create_layer``).
"""
from collections import namedtuple

import numpy

from .backend import get_array_module
from .blob import Blob
from .errors import CaffeishError
from .fillers import fill
from .registry import Registry

LAYERS = Registry("layer")

#: One parameter blob a layer declares to ``Layer.init_params``: Caffe's name for it (``W_xc``, ``bias``...),
#: its shape, and the FillerParameter that initialises it -- None for a blob that starts at zeros (as
#: BatchNorm's statistics).  Not caffe_pb2.ParamSpec, the prototxt's ``param { lr_mult ... }`` of a blob.
ParamBlob = namedtuple("ParamBlob", "name shape filler")


def register_layer(type_name):
    """Class decorator registering a Layer subclass under Caffe's type string."""
    def deco(cls):
        cls.type_name = type_name
        return LAYERS.register(type_name)(cls)
    return deco


def create_layer(layer_param, dtype=numpy.float32):
    """Instantiate the registered class for ``layer_param.type``."""
    try:
        cls = LAYERS.get(layer_param.type)
    except CaffeishError as e:
        raise e.in_layer(layer_param.name, layer_param.type) from None
    return cls(layer_param, dtype=dtype)


class Layer:
    """The base of every layer type: Caffe's layer contract, in Python.

    A layer overrides only ``layer_setup`` (once), ``reshape`` (shapes of tops and
    internal buffers), ``forward`` and ``backward``: one code path for numpy and CuPy
    (``xp = get_array_module(x)``), or, where a device has a kernel of its own,
    ``forward_cpu`` / ``forward_gpu`` (and ``backward_*``), which the base class's
    ``forward`` / ``backward`` pick by the arrays' type (Chainer's FunctionNode).  ``setup`` -- the base class's
    -- checks the declared bottom/top counts, calls those two, and sets the loss
    weights.  ``backward(top, propagate_down, bottom)`` overwrites ``bottom[i].diff``
    where ``propagate_down[i]`` (fan-out has been made explicit by Split layers) and
    accumulates (+=) into ``self.blobs[j].diff`` where ``param_propagate_down[j]``,
    which is what makes weight sharing and gradient accumulation work.

    A layer with parameters declares them in ``layer_setup`` with ``init_params`` (a list of
    ``ParamBlob(name, shape, filler)``), which creates and fills them or checks the shapes of those it was given.

    Layers must read parameters through ``self.blobs[j].data`` on every call, never
    cache the arrays: weight sharing swaps the buffers after setup.
    """
    #: Declared blob counts (None = unconstrained), as Caffe's ExactNumBottomBlobs() etc.
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    equal_num_bottom_top = False
    #: Loss layers give their first top weight 1 unless the prototxt says otherwise.
    default_loss_weight = 0.0
    type_name = "Layer"

    def __init__(self, param, dtype=numpy.float32):
        self.param = param
        self.name = param.name
        self.phase = param.phase
        self.dtype = numpy.dtype(dtype)
        # Weights stored in the prototxt itself (rare, but Caffe honours them).
        self.blobs = [Blob.from_proto_new(b, dtype=self.dtype, name=f"{self.name}[{i}]")
                      for i, b in enumerate(param.blobs)]
        self.param_propagate_down = [True] * len(self.blobs)
        self.loss_weights = []

    @property
    def type(self):
        return self.type_name

    # -- the four methods a layer overrides -------------------------------------
    def layer_setup(self, bottom, top):
        """One-time setup: read ``self.param``, create ``self.blobs`` (``init_params``)."""

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom, top):
        """Compute the tops: ``forward_gpu`` on CuPy arrays, ``forward_cpu`` on numpy arrays."""
        if _on_gpu(bottom, top):
            return self.forward_gpu(bottom, top)
        return self.forward_cpu(bottom, top)

    def backward(self, top, propagate_down, bottom):
        """Set bottom diffs, add to parameter diffs: ``backward_gpu`` on CuPy arrays, else ``backward_cpu``."""
        if _on_gpu(top, bottom):
            return self.backward_gpu(top, propagate_down, bottom)
        return self.backward_cpu(top, propagate_down, bottom)

    # -- per device, for layers whose GPU kernel differs from the numpy code ---------
    def forward_cpu(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} overrides neither forward nor forward_cpu")

    def forward_gpu(self, bottom, top):
        """The CPU code on CuPy arrays (through ``xp``), as Caffe's Forward_gpu falls back to Forward_cpu."""
        return self.forward_cpu(bottom, top)

    def backward_cpu(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__} overrides neither backward nor backward_cpu")

    def backward_gpu(self, top, propagate_down, bottom):
        return self.backward_cpu(top, propagate_down, bottom)

    #: False for layers whose backward does nothing (data layers, Accuracy, ...).
    has_backward = True

    def allow_force_backward(self, bottom_index):
        return True

    def macs(self, bottom, top):
        """Multiply-adds of one forward pass (what ``caffeish summary`` lists and ``caffeish time`` turns into
        GFLOP/s); 0 for layers whose work is not products of weights (the base class)."""
        return 0

    # -- state that exact resume saves (data readers' positions, shuffle orders) --
    def get_state(self):
        """A JSON-serialisable dict of the layer's non-parameter state, or None."""
        return None

    def set_state(self, state):
        """Restore what ``get_state`` returned."""

    def close(self):
        """Release background resources (prefetch threads, open files)."""

    # -- the parameter blobs ---------------------------------------------------
    def init_params(self, specs, context="", learned=True):
        """Create the parameter blobs ``specs`` declares (ParamBlobs, in Caffe's order), or check those given.

        A layer without blobs gets one per spec, named ``layer[j]``, of the layer's dtype, each filled in turn
        (the fillers draw from the engine's generator in that order, so a seed gives the same weights).  Blobs
        the layer already has (from the prototxt) must be as many as the specs, of the same shapes, else a
        CaffeishError names the layer, the blob (index and Caffe name) and both shapes; ``context`` (as
        ``"with num_output 4"``) follows the layer type there, saying what the shapes come from.  Sets
        ``param_propagate_down`` to ``learned`` for every blob and returns ``self.blobs``.
        """
        specs = [ParamBlob(name, tuple(int(d) for d in shape), filler) for name, shape, filler in specs]
        if self.blobs:
            self._check_params(specs, context)
        else:
            blobs = []
            for j, spec in enumerate(specs):
                blob = Blob(spec.shape, dtype=self.dtype, name=f"{self.name}[{j}]")
                if spec.filler is not None:
                    fill(blob, spec.filler)
                blobs.append(blob)
            self.blobs = blobs
        self.param_propagate_down = [bool(learned)] * len(self.blobs)
        return self.blobs

    def _check_params(self, specs, context):
        what = f"{self.type} {context}" if context else self.type
        given = [b.shape for b in self.blobs]
        if len(given) != len(specs):
            wanted = ", ".join(f"{s.name} {s.shape}" for s in specs)
            raise CaffeishError(f"{what} needs {len(specs)} parameter blob{'' if len(specs) == 1 else 's'} "
                                f"({wanted}), but the layer has {len(given)}, of shapes {given}",
                                layer=self.name, layer_type=self.type)
        for j, (spec, shape) in enumerate(zip(specs, given)):
            if shape != spec.shape:
                raise CaffeishError(f"{what} needs parameter blob {j} ({spec.name}) of shape {spec.shape}, but it "
                                    f"has shape {shape}", layer=self.name, layer_type=self.type)

    # -- driven by Net --------------------------------------------------------
    def setup(self, bottom, top):
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        if len(self.param_propagate_down) != len(self.blobs):
            self.param_propagate_down = [True] * len(self.blobs)
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def Forward(self, bottom, top):
        """Reshape, forward, and return this layer's weighted loss."""
        self.reshape(bottom, top)
        if top and all(blob.count == 0 for blob in top):
            return 0.0  # nothing to compute (an empty batch): layers need not handle 0-sized arrays
        self.forward(bottom, top)
        loss = 0.0
        for blob, weight in zip(top, self.loss_weights):
            if weight:
                loss += weight * float(blob.data.sum())
        return loss

    def Backward(self, top, propagate_down, bottom):
        if not self.has_backward:
            return
        if top and all(blob.count == 0 for blob in top):
            for blob, down in zip(bottom, propagate_down):  # an empty output: every gradient is zero
                if down and blob.count:
                    blob.diff[...] = 0
            return
        self.backward(top, propagate_down, bottom)

    def set_loss_weights(self, top):
        weights = list(self.param.loss_weight)
        if weights and len(weights) != len(top):
            raise CaffeishError(f"loss_weight must be given once per top blob: {len(weights)} given, {len(top)} tops")
        if not weights and self.default_loss_weight and top:
            weights = [self.default_loss_weight] + [0.0] * (len(top) - 1)
        self.loss_weights = weights + [0.0] * (len(top) - len(weights))

    def loss(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)

        def need(count, what, blobs, how):
            raise CaffeishError(f"{self.type} layer takes {how} {count} {what} blob(s), but {len(blobs)} given")
        if self.exact_num_bottom is not None and nb != self.exact_num_bottom:
            need(self.exact_num_bottom, "bottom", bottom, "exactly")
        if self.min_bottom is not None and nb < self.min_bottom:
            need(self.min_bottom, "bottom", bottom, "at least")
        if self.max_bottom is not None and nb > self.max_bottom:
            need(self.max_bottom, "bottom", bottom, "at most")
        if self.exact_num_top is not None and nt != self.exact_num_top:
            need(self.exact_num_top, "top", top, "exactly")
        if self.min_top is not None and nt < self.min_top:
            need(self.min_top, "top", top, "at least")
        if self.max_top is not None and nt > self.max_top:
            need(self.max_top, "top", top, "at most")
        if self.equal_num_bottom_top and nb != nt:
            raise CaffeishError(f"{self.type} layer needs as many top blobs as bottom blobs ({nb} bottom, {nt} top)")

    def __repr__(self):
        return f"<{self.type} layer '{self.name}'>"


def _on_gpu(*blob_lists):
    """Whether the first blob of the first non-empty list holds a CuPy array."""
    for blobs in blob_lists:
        if blobs:
            return get_array_module(blobs[0].data) is not numpy
    return False


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; may run in place."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)


class LossLayer(Layer):
    """Two or more bottoms (prediction, target...), one scalar top of weight 1."""
    min_bottom = 2
    exact_num_top = 1
    default_loss_weight = 1.0

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1  # never into labels

    def reshape(self, bottom, top):
        if bottom[0].num_axes == 0:
            raise CaffeishError(f"bottom[0] '{bottom[0].name}' is a scalar (shape ()); a loss needs the examples "
                                "on its first axis")
        if bottom[0].count == 0:
            raise CaffeishError(f"bottom[0] '{bottom[0].name}' of shape {bottom[0].shape} holds no values; a loss "
                                "needs at least one example")
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise CaffeishError(
                f"the first axis of bottom[0] {bottom[0].shape} and bottom[1] {bottom[1].shape} "
                "must match (one label per example)")
        top[0].reshape(())
