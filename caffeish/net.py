"""Net: a directed graph of layers built from a NetParameter, run forward and backward (Caffe's Net; pycaffe's
conveniences come from ``caffeish.pycaffe``).
"""
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy
from google.protobuf import text_format

from . import backend
from .blob import Blob, format_bytes, memory_limit
from .cpu import threads as cpu_threads
from .errors import CaffeishError
from .layer import create_layer
from .net_graph import filter_net, insert_splits
from .proto import caffe_pb2
from .prototxt import read_net_param, read_weights, write_binary_proto
from .pycaffe import PycaffeNet
from .upgrade import upgrade_net

log = logging.getLogger("caffeish")
#: Caffe's set-up lines (each layer's tops and shapes, the memory, who needs backward); ``caffeish train --quiet``
#: turns them off.
setup_log = logging.getLogger("caffeish.setup")

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


@dataclass
class Learnable:
    """A parameter the solver trains: its blob (the owner's, where layers share it by name) and multipliers."""
    blob: Blob
    name: str                 # the ParamSpec name, or "<layer>[<index>]"
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    lr_given: bool = False    # whether a ParamSpec set it (every layer sharing it must then agree)
    decay_given: bool = False


@dataclass
class ParamRecord:
    """One parameter blob of one layer, in net order (layer by layer, then the layer's own order)."""
    blob: Blob
    layer_id: int
    index: int                # in its layer's blobs
    learnable: int            # its Learnable in ``net.learnables`` (the owner's, for a shared blob)
    owner: int = -1           # the ParamRecord it shares data and diff with; -1: its own


class Net(PycaffeNet):
    """A network for one phase.

    ``Net(model, phase)``, ``Net(model, weights, phase)`` or
    ``Net(model, phase, level=0, stages=(), weights=None)``, where ``model`` is a
    prototxt path, prototxt text or a ``caffe_pb2.NetParameter``.

    Building follows Caffe's Net::Init: filter layers by the NetState, insert Split
    layers for fan-out, wire bottoms and tops (in place when a top names its
    bottom), set each layer up, share parameters by ParamSpec name, then walk the
    graph backwards to find which layers contribute to a loss and need backward.
    """
    def __init__(self, model, *args, phase=None, level=None, stages=None, weights=None,
                 dtype=numpy.float32, debug_info=None, source_dir=None):
        if args and isinstance(args[0], (str, bytes)) or (args and hasattr(args[0], "__fspath__")):
            weights, args = args[0], args[1:]
        if args:
            phase = args[0]
        if len(args) > 1:
            raise TypeError("Net(model, [weights,] phase)")
        self._callbacks = {"before_forward": [], "after_forward": [], "before_backward": [], "after_backward": []}
        self.source = model if isinstance(model, str) and "\n" not in model and "{" not in model else None
        param = read_net_param(model)
        if source_dir is None and self.source:
            source_dir = os.path.dirname(os.path.abspath(self.source))
        # Python layers are imported from the prototxt's directory first, as pycaffe users expect.
        from .layers.common import python_layer
        if source_dir:
            python_layer.PYTHON_LAYER_PATHS.insert(0, source_dir)
        try:
            self._build(param, phase, level, stages, numpy.dtype(dtype), debug_info)
        except CaffeishError as e:
            raise e.in_file(self.source) from None
        finally:
            if source_dir:
                python_layer.PYTHON_LAYER_PATHS.remove(source_dir)
        if weights is not None:
            self.copy_from(weights)

    # -- building ---------------------------------------------------------------
    def _build(self, in_param, phase, level, stages, dtype, debug_info):
        cpu_threads.quiet_idle_blas_threads()
        state = caffe_pb2.NetState()
        state.CopyFrom(in_param.state)
        if phase is not None:
            state.phase = phase
        if level is not None:
            state.level = level
        if stages is not None:
            del state.stage[:]
            state.stage.extend(stages)
        self.phase = state.phase
        self.state = state
        self.name = in_param.name
        self.dtype = dtype
        self.debug_info = in_param.debug_info if debug_info is None else debug_info
        filtered = filter_net(upgrade_net(in_param), state)
        if setup_log.isEnabledFor(logging.INFO):
            setup_log.info("Initializing net from parameters: \n%s", text_format.MessageToString(filtered).rstrip())
        param = insert_splits(filtered)
        self.param = param

        self.layers, self._layer_names = [], []
        self.blobs = OrderedDict()
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_names, self.top_names = OrderedDict(), OrderedDict()
        self.bottom_need_backward, self.layer_need_backward = [], []
        self.blob_need_backward = {}
        self.blob_loss_weights = OrderedDict()
        #: Every parameter blob of every layer; ``learnables`` the distinct ones the solver trains.
        self.param_records, self.learnables = [], []
        self._param_names_index = {}
        self.inputs = []
        available = OrderedDict()

        for layer_id, lp in enumerate(param.layer):
            lp = _with_phase(lp, self.phase)
            try:
                layer = create_layer(lp, dtype=dtype)
            except CaffeishError as e:
                raise e.in_layer(lp.name, lp.type) from None
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise CaffeishError(f"propagate_down is given {len(lp.propagate_down)} times but the layer has "
                                    f"{len(lp.bottom)} bottoms", layer=lp.name, layer_type=lp.type)
            bottoms, needs = [], []
            need_backward = False
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise CaffeishError(f"unknown bottom blob '{name}' (bottom index {j}); no earlier layer "
                                        "produces it, or an earlier layer already consumed it",
                                        layer=lp.name, layer_type=lp.type)
                del available[name]
                blob = self.blobs[name]
                need = self.blob_need_backward[name]
                if lp.propagate_down:
                    need = bool(lp.propagate_down[j])
                bottoms.append(blob)
                needs.append(need)
                need_backward |= self.blob_need_backward[name]
            tops = []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and lp.bottom[j] == name:
                    blob = self.blobs[name]  # in place
                elif name in self.blobs:
                    raise CaffeishError(f"top blob '{name}' is produced by more than one layer",
                                        layer=lp.name, layer_type=lp.type)
                else:
                    blob = Blob(dtype=dtype, name=name)
                    self.blobs[name] = blob
                    self.blob_need_backward[name] = False
                    if lp.type == "Input":
                        self.inputs.append(name)
                tops.append(blob)
                available[name] = blob
            in_place = [(j, blob.shape) for j, blob in enumerate(tops) if j < len(bottoms) and blob is bottoms[j]]
            try:
                layer.setup(bottoms, tops)
            except CaffeishError as e:
                raise e.in_layer(lp.name, lp.type) from None
            except ValueError as e:  # numpy's word for shapes that do not fit
                if lp.type == "Python":
                    raise  # the user's own exception, type kept
                raise CaffeishError(f"shapes do not fit ({e}); bottom shapes: "
                                    f"{[b.shape for b in bottoms]}", layer=lp.name, layer_type=lp.type) from e
            for j, shape in in_place:
                if tops[j].shape != shape:
                    raise CaffeishError(f"cannot run in place: its top '{tops[j].name}' would change shape from "
                                        f"{shape} to {tops[j].shape}; give the top a name of its own",
                                        layer=lp.name, layer_type=lp.type)
            for j, blob in enumerate(tops):
                w = layer.loss(j)
                self.blob_loss_weights[blob.name] = w or self.blob_loss_weights.get(blob.name, 0.0)
                if w:
                    # As Caffe's SetLossWeights: the weight is the top's diff, where backward starts; a diff
                    # the user writes there later (net.backward(loss=2)) scales the gradients.
                    blob.diff[...] = w

            for pid in range(len(layer.blobs)):
                spec = lp.param[pid] if pid < len(lp.param) else caffe_pb2.ParamSpec()
                param_need = spec.lr_mult != 0
                need_backward |= param_need
                layer.param_propagate_down[pid] = param_need
            for pid in range(len(layer.blobs)):
                self._append_param(lp, layer, layer_id, pid)

            self.layers.append(layer)
            self._layer_names.append(lp.name)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_names[lp.name] = list(lp.bottom)
            self.top_names[lp.name] = list(lp.top)
            self.bottom_need_backward.append(needs)
            self.layer_need_backward.append(need_backward and layer.has_backward or
                                            (need_backward and bool(layer.blobs)))
            if need_backward:
                for blob in tops:
                    self.blob_need_backward[blob.name] = True

        self._prune_backward(param.force_backward)
        self.outputs = list(available)
        self._share_weights()
        # Views the solvers index by learnable id (built once: the structure does not change after set-up).
        self.learnable_params = [p.blob for p in self.learnables]
        self.params_lr = [p.lr_mult for p in self.learnables]
        self.params_weight_decay = [p.decay_mult for p in self.learnables]
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers))
        if setup_log.isEnabledFor(logging.INFO):
            self._log_setup()
        self._check_memory()

    def _log_setup(self):
        """Caffe's Net::Init lines, so a caffeish log reads (and parses) as Caffe's."""
        memory = 0
        for lid, layer in enumerate(self.layers):
            name = self._layer_names[lid]
            setup_log.info("Creating Layer %s", name)
            for blob in self.bottom_vecs[lid]:
                setup_log.info("%s <- %s", name, blob.name)
            for blob in self.top_vecs[lid]:
                setup_log.info("%s -> %s", name, blob.name)
            setup_log.info("Setting up %s", name)
            for j, blob in enumerate(self.top_vecs[lid]):
                dims = "".join(f"{d} " for d in blob.shape)
                setup_log.info("Top shape: %s(%d)", dims, blob.count)
                if layer.loss(j):
                    setup_log.info("    with loss weight %g", layer.loss(j))
                memory += blob.count * self.dtype.itemsize
            setup_log.info("Memory required for data: %d", memory)
        for lid in range(len(self.layers) - 1, -1, -1):
            need = "needs" if self.layer_need_backward[lid] else "does not need"
            setup_log.info("%s %s backward computation.", self._layer_names[lid], need)
        for name in self.outputs:
            setup_log.info("This network produces output %s", name)
        setup_log.info("Network initialization done.")

    def _check_memory(self):
        """Refuse a net whose blobs (data, and diffs when it learns) would not fit in memory, naming the largest."""
        sizes = {}
        for blob in list(self.blobs.values()) + [p.blob for p in self.param_records]:
            key = id(blob._data_buf) if blob._data_buf is not None else id(blob)
            sizes[key] = max(sizes.get(key, (0, None))[0], blob.count * blob.dtype.itemsize), blob
        total = sum(size for size, _ in sizes.values())
        backward = any(self.layer_need_backward)
        need = total * 2 if backward else total
        limit, source = memory_limit()
        if limit is None or need <= limit:
            return
        largest = sorted(sizes.values(), key=lambda item: -item[0])[:3]
        names = ", ".join(f"'{blob.name}' {blob.shape} {format_bytes(size)}" for size, blob in largest)
        what = f"net '{self.name}'" if self.name else "the net"
        raise CaffeishError(f"{what} would need {format_bytes(need)} for its blobs"
                            f"{' (data and gradients)' if backward else ''}, more than {source} "
                            f"({format_bytes(limit)}); the largest blobs: {names}. Check the sizes that make them "
                            "(num_output, dim, batch_size, kernel and stride)")

    def _append_param(self, lp, layer, layer_id, pid):
        spec = lp.param[pid] if pid < len(lp.param) else None
        name = spec.name if spec is not None else ""
        blob = layer.blobs[pid]
        if not name or name not in self._param_names_index:
            if name:
                self._param_names_index[name] = len(self.param_records)
            self.param_records.append(ParamRecord(blob, layer_id, pid, len(self.learnables)))
            self.learnables.append(Learnable(
                blob, name or f"{lp.name}[{pid}]",
                lr_mult=spec.lr_mult if spec is not None else 1.0,
                decay_mult=spec.decay_mult if spec is not None else 1.0,
                lr_given=spec is not None and spec.HasField("lr_mult"),
                decay_given=spec is not None and spec.HasField("decay_mult")))
            return
        owner = self._param_names_index[name]
        owner_blob = self.param_records[owner].blob
        strict = spec.share_mode == caffe_pb2.ParamSpec.STRICT
        if (strict and owner_blob.shape != blob.shape) or owner_blob.count != blob.count:
            raise CaffeishError(f"cannot share parameter '{name}': its owner has shape {owner_blob.shape} but this "
                                f"layer's param {pid} has shape {blob.shape}"
                                + ("" if not strict else " (share_mode STRICT needs equal shapes)"),
                                layer=lp.name, layer_type=lp.type)
        learnable = self.param_records[owner].learnable
        self.param_records.append(ParamRecord(blob, layer_id, pid, learnable, owner))
        trained = self.learnables[learnable]
        for field, given in (("lr_mult", "lr_given"), ("decay_mult", "decay_given")):
            if spec.HasField(field):
                value = getattr(spec, field)
                if getattr(trained, given) and getattr(trained, field) != value:
                    raise CaffeishError(f"shared parameter '{name}' has {field} {value} here but "
                                        f"{getattr(trained, field)} where it was first declared", layer=lp.name,
                                        layer_type=lp.type)
                setattr(trained, field, value)
                setattr(trained, given, True)

    def _share_weights(self):
        for record in self.param_records:
            if record.owner >= 0:
                record.blob.share_data(self.param_records[record.owner].blob)
                record.blob.share_diff(self.param_records[record.owner].blob)

    def _prune_backward(self, force_backward):
        """Skip backward for layers that feed no loss (Caffe's Net::Init second pass)."""
        under_loss, skip = set(), set()
        for lid in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[lid]
            contributes, skip_down = False, True
            for j, blob in enumerate(self.top_vecs[lid]):
                if layer.loss(j) or blob.name in under_loss:
                    contributes = True
                if blob.name not in skip:
                    skip_down = False
            if self.layer_need_backward[lid] and skip_down:
                self.layer_need_backward[lid] = False
                self.bottom_need_backward[lid] = [False] * len(self.bottom_vecs[lid])
            if not contributes:
                self.layer_need_backward[lid] = False
            for j, blob in enumerate(self.bottom_vecs[lid]):
                if contributes:
                    under_loss.add(blob.name)
                else:
                    self.bottom_need_backward[lid][j] = False
                if not self.bottom_need_backward[lid][j]:
                    skip.add(blob.name)
        if force_backward:
            for lid, layer in enumerate(self.layers):
                self.layer_need_backward[lid] = layer.has_backward or bool(layer.blobs)
                for j, blob in enumerate(self.bottom_vecs[lid]):
                    need = self.bottom_need_backward[lid][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[lid][j] = need
                    self.blob_need_backward[blob.name] = self.blob_need_backward[blob.name] or need
                layer.param_propagate_down = [True] * len(layer.blobs)

    # -- running ----------------------------------------------------------------
    def forward_prefilled(self, start=0, end=None):
        """Run layers ``start..end`` (inclusive) and return the total weighted loss."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        before, after = self._callbacks["before_forward"], self._callbacks["after_forward"]
        for lid in range(start, end + 1):
            layer = self.layers[lid]
            for callback in before:
                callback(lid)
            try:
                loss += layer.Forward(self.bottom_vecs[lid], self.top_vecs[lid])
            except CaffeishError as e:
                raise e.in_layer(layer.name, layer.type) from None
            if self.debug_info:
                self._log_forward(lid)
            for callback in after:
                callback(lid)
        return loss

    def backward_from_to(self, start=None, end=0):
        start = len(self.layers) - 1 if start is None else start
        before, after = self._callbacks["before_backward"], self._callbacks["after_backward"]
        for lid in range(start, end - 1, -1):
            if not self.layer_need_backward[lid]:
                continue
            for callback in before:
                callback(lid)
            self.layers[lid].Backward(self.top_vecs[lid], self.bottom_need_backward[lid], self.bottom_vecs[lid])
            for callback in after:
                callback(lid)
            if self.debug_info:
                self._log_backward(lid)

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """pycaffe's Net.forward: set ``inputs`` (name=array), run layers ``start..end`` (names), return
        ``{blob: data}`` for the net's outputs (the tops of ``end`` when given) and ``blobs``.  An input of
        another batch size reshapes the net (pycaffe would refuse it)."""
        for name, value in inputs.items():
            if name not in self.blobs:
                raise CaffeishError(f"forward(): '{name}' is not a blob of net '{self.name}'")
            blob = self.blobs[name]
            if tuple(numpy.shape(value)) != blob.shape:
                blob.reshape(numpy.shape(value))
            blob.data[...] = backend.to_current(value, blob.dtype)
        start_id = self._layer_index(start) if start is not None else 0
        end_id = self._layer_index(end) if end is not None else len(self.layers) - 1
        self.forward_prefilled(start_id, end_id)
        outs = set(blobs or ())
        names = self.top_names[self._layer_names[end_id]] if end is not None else self.outputs
        outs.update(names)
        return {name: self.blobs[name].data for name in outs}

    def backward(self, diffs=None, start=None, end=None, **top_diffs):
        """pycaffe's Net.backward: set output diffs (name=array), run layers ``start..end`` backwards, return
        ``{blob: diff}`` for the net's inputs (the bottoms of ``end`` when given) and ``diffs``.  A loss
        top's diff is its loss weight unless set here: ``backward(loss=2)`` doubles every gradient."""
        for name, value in top_diffs.items():
            if name not in self.blobs:
                raise CaffeishError(f"backward(): '{name}' is not a blob of net '{self.name}'")
            self.blobs[name].diff = backend.to_current(value, self.blobs[name].dtype)
        start_id = self._layer_index(start) if start is not None else len(self.layers) - 1
        end_id = self._layer_index(end) if end is not None else 0
        self.backward_from_to(start_id, end_id)
        names = set(diffs or ()) | set(self.bottom_names[self._layer_names[end_id]] if end is not None else self.inputs)
        return {name: self.blobs[name].diff for name in names}

    def forward_backward(self):
        loss = self.forward_prefilled()
        self.backward_from_to()
        return loss

    def reshape(self):
        for lid, layer in enumerate(self.layers):
            layer.reshape(self.bottom_vecs[lid], self.top_vecs[lid])

    def close(self):
        """Stop the layers' background work (data prefetching); the net is unusable afterwards."""
        for layer in self.layers:
            layer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def clear_param_diffs(self):
        for blob in self.learnable_params:
            blob.diff[...] = 0

    def set_input_arrays(self, data, labels, layer=None):
        """pycaffe's Net.set_input_arrays: hand arrays to a MemoryData layer (the first, or the one named)."""
        targets = [x for x in self.layers if x.type == "MemoryData" and (layer is None or x.name == layer)]
        if not targets:
            raise CaffeishError(f"set_input_arrays: net '{self.name}' has no MemoryData layer"
                                + (f" named '{layer}'" if layer else ""))
        targets[0].set_arrays(data, labels)

    def _layer_index(self, name):
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise CaffeishError(f"net '{self.name}' has no layer named '{name}'") from None

    # -- pycaffe-style views -----------------------------------------------------
    @property
    def params(self):
        """OrderedDict layer name -> list of parameter blobs (layers with parameters only)."""
        return OrderedDict((n, layer.blobs) for n, layer in zip(self._layer_names, self.layers) if layer.blobs)

    @property
    def layer_names(self):
        return list(self._layer_names)

    # -- weights ------------------------------------------------------------------
    def copy_from(self, weights):
        """Copy trained parameters by layer name (fine-tuning) from a .caffemodel, a .caffemodel.h5 or a
        NetParameter.  Layers the file lacks keep their fillers (and are logged); a shape mismatch is an error."""
        if not isinstance(weights, caffe_pb2.NetParameter) and os.fspath(weights).endswith(".h5"):
            from .weights import load_net_hdf5
            return load_net_hdf5(self, os.fspath(weights))
        where = "" if isinstance(weights, caffe_pb2.NetParameter) else f" in {os.fspath(weights)}"
        source = weights if isinstance(weights, caffe_pb2.NetParameter) else read_weights(weights)
        # Old (V0/V1) .caffemodels hold 'layers' entries; upgrading names them as 'layer' entries do.
        source = upgrade_net(source, None if isinstance(weights, caffe_pb2.NetParameter) else os.fspath(weights),
                             weights=True)
        by_name = OrderedDict(zip(self._layer_names, self.layers))
        copied = set()
        for src in list(source.layer) + list(source.layers):
            target = by_name.get(src.name)
            if target is None:
                log.info("Ignoring source layer %s", src.name)
                continue
            if len(src.blobs) != len(target.blobs):
                raise CaffeishError(f"incompatible number of blobs: the weights{where} hold {len(src.blobs)} for this "
                                    f"layer, the net's layer has {len(target.blobs)}", layer=src.name,
                                    layer_type=target.type)
            for j, bp in enumerate(src.blobs):
                try:
                    target.blobs[j].from_proto(bp, reshape=False)
                except CaffeishError as e:
                    raise CaffeishError(f"cannot copy param {j} weights{where}: {e.reason}. To learn this layer's "
                                        "parameters from scratch instead, rename the layer.",
                                        layer=src.name, layer_type=target.type) from None
            copied.add(src.name)
        for name, layer in by_name.items():
            if layer.blobs and name not in copied:
                log.info("Layer %s is not in the weights%s: its parameters keep their fillers", name, where)

    def to_proto(self, write_diff=False):
        out = caffe_pb2.NetParameter()
        out.name = self.name
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            del lp.blobs[:]
            for blob in layer.blobs:
                blob.to_proto(lp.blobs.add(), write_diff=write_diff)
        return out

    def save(self, path, write_diff=False):
        write_binary_proto(path, self.to_proto(write_diff))

    # -- debug_info ---------------------------------------------------------------
    def _log_forward(self, lid):
        layer = self.layers[lid]
        for blob in self.top_vecs[lid]:
            log.info("    [Forward] Layer %s, top blob %s data: %.6g", layer.name, blob.name, _mean_abs(blob.data))
        for j, blob in enumerate(layer.blobs):
            log.info("    [Forward] Layer %s, param blob %d data: %.6g", layer.name, j, _mean_abs(blob.data))

    def _log_backward(self, lid):
        layer = self.layers[lid]
        for j, blob in enumerate(self.bottom_vecs[lid]):
            if self.bottom_need_backward[lid][j]:
                log.info("    [Backward] Layer %s, bottom blob %s diff: %.6g", layer.name, blob.name,
                         _mean_abs(blob.diff))
        for j, blob in enumerate(layer.blobs):
            if layer.param_propagate_down[j]:
                log.info("    [Backward] Layer %s, param blob %d diff: %.6g", layer.name, j, _mean_abs(blob.diff))


def _mean_abs(array):
    return float(abs(array).sum()) / max(array.size, 1)


def _with_phase(lp, phase):
    if lp.phase == phase and lp.HasField("phase"):
        return lp
    out = caffe_pb2.LayerParameter()
    out.CopyFrom(lp)
    out.phase = phase
    return out
