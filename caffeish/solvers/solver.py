"""The Solver: Caffe's training loop, shared by every update rule (a solver type overrides only
``compute_update_value``).
"""
import logging
import math
import os
import time

import numpy
from google.protobuf import text_format

from .. import backend
from ..blob import Blob
from ..cuda import kernels as cuda_kernels
from ..cuda import solver_updates as cuda_updates
from ..errors import CaffeishError
from ..net import Net, setup_log
from ..proto import caffe_pb2
from ..prototxt import read_net_param, read_solver_param
from ..registry import Registry
from ..upgrade import LEGACY_SOLVER_TYPES as LEGACY_TYPES  # noqa: F401  (kept importable from here)
from ..upgrade import upgrade_solver_type  # noqa: F401  (Caffe's UpgradeSolverType; lives in caffeish.upgrade)
from . import snapshot as snap
from .lr_policy import learning_rate
from .nan_guard import check_finite

log = logging.getLogger("caffeish")
SOLVERS = Registry("solver")


def register_solver(name):
    def deco(cls):
        cls.type_name = name
        return SOLVERS.register(name)(cls)
    return deco


class Solver:
    """Base class; ``SOLVERS.get(param.type)`` picks the update rule."""
    type_name = "Solver"
    #: How many history blobs per learnable parameter (2 for AdaDelta and Adam).
    history_sets = 1

    def __init__(self, solver, *, level=None, stages=None, dtype=numpy.float32, source=None):
        """``solver``: a solver prototxt path or text, or a parsed SolverParameter (then ``source``, the file it
        came from, if any: relative net paths are looked up beside it)."""
        self.source = os.fspath(solver) if not isinstance(solver, caffe_pb2.SolverParameter) else source
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(read_solver_param(solver))
        upgrade_solver_type(param)
        if level is not None:
            param.train_state.level = level
        if stages:
            param.train_state.stage.extend(stages)
        self.param = param
        self.dtype = numpy.dtype(dtype)
        if setup_log.isEnabledFor(logging.INFO):
            setup_log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(param).rstrip())
        if param.average_loss < 1:
            raise CaffeishError(f"average_loss must be at least 1, not {param.average_loss}")
        if param.iter_size < 1:
            raise CaffeishError(f"iter_size must be at least 1, not {param.iter_size}")
        if param.regularization_type not in ("L1", "L2"):
            raise CaffeishError(f"unknown regularization_type '{param.regularization_type}' (L1 or L2)")
        self.check_parameters()
        if param.random_seed >= 0:
            backend.set_random_seed(param.random_seed)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        self.iter = 0
        self.current_step = 0
        self.history = [Blob(p.shape, dtype=p.dtype, name=f"history[{i}]")
                        for _ in range(self.history_sets) for i, p in enumerate(self.net.learnable_params)]
        self._scratch = {}
        self.losses, self.smoothed_loss = [], 0.0
        self.requested_early_exit = False
        #: Called once per iteration; returns "none", "snapshot" or "stop" (signal handling sets it).
        self.action_request = None
        #: Called after each iteration with the solver (the CLI's progress bar).
        self.on_iteration = None
        #: Objects told of the solver's progress (``add_callback``), in the order added.
        self.callbacks = []
        #: What runs each forward and backward pass of an iteration (``set_passes``); None: the train net.
        self.passes = None
        #: The loss this iteration reports; an ``on_gradients_ready`` callback may replace it (data-parallel
        #: training puts the mean over the replicas here).
        self.iteration_loss = 0.0
        log.info("Solver scaffolding done.")

    def add_callback(self, on_start, on_gradients_ready=None):
        """Hook into the iteration, as Caffe's Solver::Callback: ``add_callback(obj)`` for an object with any of
        ``on_start()`` (each iteration, before forward), ``on_gradients_ready()`` (the gradients are computed,
        before the update), ``before_snapshot()`` (returning False: this process writes no snapshot) and
        ``after_snapshot(paths)``; or pycaffe's ``add_callback(on_start, on_gradients_ready)`` with two callables."""
        if on_gradients_ready is not None or callable(on_start) and not _is_callback(on_start):
            for fn in (on_start, on_gradients_ready):
                if fn is not None and not callable(fn):
                    raise CaffeishError(f"add_callback needs callables, not {fn!r}")
            on_start = _Callback(on_start, on_gradients_ready)
        elif not _is_callback(on_start):
            raise CaffeishError(f"add_callback needs an object with on_start/on_gradients_ready/before_snapshot/"
                                f"after_snapshot methods, or two callables, not {on_start!r}")
        self.callbacks.append(on_start)

    def set_passes(self, passes):
        """Run each forward and backward pass of an iteration as ``passes.forward_backward(solver)`` (which returns
        the pass's loss) instead of the train net's own; None restores that.  Data-parallel training runs every
        replica's pass there (``caffeish.parallel.Replicas``)."""
        if passes is not None and not callable(getattr(passes, "forward_backward", None)):
            raise CaffeishError(f"set_passes needs an object with a forward_backward(solver) method, not {passes!r}")
        self.passes = passes

    def _call_back(self, point, *args):
        results = []
        for callback in self.callbacks:
            fn = getattr(callback, point, None)
            if fn is not None:
                results.append(fn(*args))
        return results

    # -- set-up -----------------------------------------------------------------
    def check_parameters(self):
        """Solver types check their hyper-parameters here (Caffe's CHECKs)."""

    def _net_path(self, path):
        if os.path.exists(path) or self.source is None:
            return path
        beside = os.path.join(os.path.dirname(self.source), path)
        return beside if os.path.exists(beside) else path

    def _read_net(self, path, what):
        path = self._net_path(path)
        if not os.path.exists(path):
            where = f" (the solver is {self.source})" if self.source else ""
            raise CaffeishError(f"the {what} file '{path}' named by the solver does not exist{where}")
        return read_net_param(path), os.path.dirname(os.path.abspath(path))

    def _init_train_net(self):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise CaffeishError("the solver must name exactly one train net, with one of net, net_param, "
                                f"train_net or train_net_param (it gives {', '.join(given) or 'none'})")
        field = given[0]
        source_dir = os.path.dirname(os.path.abspath(self.source)) if self.source else None
        if field.endswith("_param"):
            log.info("Creating training net specified in %s.", field)
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(getattr(p, field))
        else:
            log.info("Creating training net from %s file: %s", field, getattr(p, field))
            net_param, source_dir = self._read_net(getattr(p, field), "net")
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        try:
            return Net(net_param, dtype=self.dtype, source_dir=source_dir)
        except CaffeishError as e:  # name the file the net came from: its own, or the solver (inline nets)
            raise e.in_file(self.source if field.endswith("_param") else self._net_path(getattr(p, field))) from None

    def _init_test_nets(self):
        p = self.param
        generic = p.HasField("net") or p.HasField("net_param")
        solver_dir = os.path.dirname(os.path.abspath(self.source)) if self.source else None
        # (NetParameter, where it came from, the directory Python layers are imported from)
        specific = [(param, "test_net_param", solver_dir) for param in p.test_net_param]
        for f in p.test_net:
            param, directory = self._read_net(f, "test_net")
            specific.append((param, f"test_net file: {f}", directory))
        if generic:
            if len(p.test_iter) < len(specific):
                raise CaffeishError("test_iter must be given once for each test net")
        elif len(p.test_iter) != len(specific):
            raise CaffeishError(f"test_iter must be given once for each test net: {len(specific)} test nets, "
                                f"{len(p.test_iter)} test_iter values")
        sources = list(specific)
        for _ in range(len(p.test_iter) - len(specific)):
            if p.HasField("net_param"):
                sources.append((p.net_param, "net_param", solver_dir))
            else:
                param, directory = self._read_net(p.net, "net")
                sources.append((param, f"net file: {p.net}", directory))
        if p.test_state and len(p.test_state) != len(sources):
            raise CaffeishError("test_state must be unspecified or given once per test net")
        if any(n <= 0 for n in p.test_iter):
            raise CaffeishError(f"test_iter must be positive (the test batches per test net), not "
                                f"{', '.join(str(n) for n in p.test_iter)}")
        if sources and p.test_interval <= 0:
            raise CaffeishError("the solver has test nets (test_iter is set) but no positive test_interval")
        nets = []
        for i, (param, description, directory) in enumerate(sources):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(param)
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(net_param.state)
            if p.test_state:
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, description)
            try:
                nets.append(Net(net_param, dtype=self.dtype, source_dir=directory))
            except CaffeishError as e:
                raise e.in_file(description.split("file: ", 1)[1] if "file: " in description else self.source) \
                    from None
        return nets

    # -- the loop -------------------------------------------------------------------
    def solve(self, resume_file=None):
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", self.param.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(self.param.max_iter - self.iter)
        p = self.param
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_prefilled()
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _data_waited(self):
        """Seconds the train net's prefetching data layers have waited for batches (None: it has none)."""
        layers = [layer for layer in self.net.layers if getattr(layer, "prefetch", False)]
        return sum(layer.waited for layer in layers) if layers else None

    def step(self, iters):
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self.losses, self.smoothed_loss = [], 0.0
        timer, iterations_last = time.perf_counter(), self.iter
        waited_last = self._data_waited()
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = p.display and self.iter % p.display == 0
            self.net.debug_info = bool(display and p.debug_info)
            self._call_back("on_start")
            loss = 0.0
            for _ in range(p.iter_size):
                loss += self.forward_backward()
            loss /= p.iter_size
            check_finite(self.net, loss, self.iter)
            self.iteration_loss = loss
            self._call_back("on_gradients_ready")
            loss = self.iteration_loss
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iterations_last) / (lapse or 1.0)
                log.info("Iteration %d (%g iter/s, %gs/%d iters), loss = %g",
                         self.iter, per_s, lapse, p.display, self.smoothed_loss)
                waited = self._data_waited()
                if waited is not None and self.iter > iterations_last:
                    # whether the prefetch threads keep up: the time forward waited for their batches
                    log.info("    Data wait: %.1f ms of %.0f ms (%.1f%%)", 1e3 * (waited - waited_last),
                             1e3 * lapse, 100.0 * (waited - waited_last) / (lapse or 1.0))
                waited_last = waited
                timer, iterations_last = time.perf_counter(), self.iter
                self._log_outputs(self.net, "Train", [backend.to_cpu(self.net.blobs[n].data).ravel()
                                                      for n in self.net.outputs])
            self.apply_update()
            self.iter += 1
            request = self.action_request() if self.action_request else "none"
            if (p.snapshot and self.iter % p.snapshot == 0) or request == "snapshot":
                self.snapshot()
            if self.on_iteration:
                self.on_iteration(self)
            if request == "stop":
                self.requested_early_exit = True
                break

    def forward_backward(self):
        """One forward and backward pass (accumulating into the parameter diffs): the train net's, or the one
        ``set_passes`` gave; the loss."""
        if self.passes is not None:
            return self.passes.forward_backward(self)
        return self.net.forward_backward()

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self.losses[idx]) / average_loss
            self.losses[idx] = loss

    def _log_outputs(self, net, kind, values, scale=1.0):
        k = 0
        for name, vec in zip(net.outputs, values):
            weight = net.blob_loss_weights.get(name, 0.0)
            for v in vec:
                v = float(v) * scale
                extra = f" (* {weight:g} = {weight * v:g} loss)" if weight else ""
                log.info("    %s net output #%d: %s = %g%s", kind, k, name, v, extra)
                k += 1

    # -- testing -----------------------------------------------------------------------
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def share_trained_layers(self, test_net):
        """The test net reads the train net's weights (Caffe's ShareTrainedLayersWith)."""
        train = self.net.layer_dict
        for name, layer in test_net.layer_dict.items():
            source = train.get(name)
            if source is None or not layer.blobs:
                continue
            for target_blob, source_blob in zip(layer.blobs, source.blobs):
                if target_blob.shape != source_blob.shape:
                    raise CaffeishError(f"the test net's layer '{name}' has a parameter of shape {target_blob.shape} "
                                        f"but the train net's has {source_blob.shape}")
                target_blob.share_data(source_blob)

    def test(self, net_id=0):
        net = self.test_nets[net_id]
        log.info("Iteration %d, Testing net (#%d)", self.iter, net_id)
        self.share_trained_layers(net)
        scores, loss = None, 0.0
        iterations = self.param.test_iter[net_id]
        for _ in range(iterations):
            request = self.action_request() if self.action_request else "none"
            while request != "none":
                if request == "snapshot":
                    self.snapshot()
                elif request == "stop":
                    self.requested_early_exit = True
                request = self.action_request()
            if self.requested_early_exit:
                break
            iter_loss = net.forward_prefilled()
            if self.param.test_compute_loss:
                loss += iter_loss
            result = [backend.to_cpu(net.blobs[n].data).astype(numpy.float64).ravel() for n in net.outputs]
            scores = result if scores is None else [s + r for s, r in zip(scores, result)]
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return None
        if self.param.test_compute_loss:
            log.info("Test loss: %g", loss / iterations)
        scores = scores or []
        self._log_outputs(net, "Test", scores, scale=1.0 / max(iterations, 1))
        return {name: s / iterations for name, s in zip(net.outputs, scores)}

    # -- the update ------------------------------------------------------------------------
    def get_learning_rate(self):
        return learning_rate(self.param, self.iter, self)

    def apply_update(self):
        """One update of every parameter.

        ``apply_update`` is one sequence for all solver types -- learning rate for this
        iteration, clip gradients, normalize by ``iter_size``, regularize (L2/L1 with
        ``decay_mult``), compute the update value, apply -- and a solver type overrides
        only ``compute_update_value`` (with its history blobs, which snapshots save).
        """
        rate = self.get_learning_rate()
        if self.param.display and self.iter % self.param.display == 0:
            log.info("Iteration %d, lr = %g", self.iter, rate)
        self.clip_gradients()
        for i in range(len(self.net.learnable_params)):
            self.update_param(i, rate)
        if self.net.debug_info:
            for i, blob in enumerate(self.net.learnable_params):
                log.info("    [Update] Param %s data: %g; diff: %g", self.net.learnables[i].name,
                         blob.asum_data() / blob.count, blob.asum_diff() / blob.count)

    #: The name of the solver type's fused CUDA kernel (``cuda_updates.update_kernel``, written beside the CPU
    #: rule), used for CuPy parameters by the class that sets it (not by its subclasses, which may change the rule).
    cuda_kernel = None

    def cuda_scalars(self, i, rate):
        """The scalar arguments of ``cuda_kernel`` for parameter ``i``, as Python floats."""
        raise NotImplementedError(f"{type(self).__name__}.cuda_scalars")

    def update_param_cuda(self, i, rate):
        """The whole update of parameter ``i`` in one CUDA kernel when it lives on the GPU; False if not."""
        # only the class that declares the kernel: a subclass may have changed the rule
        if vars(type(self)).get("cuda_kernel") is None:
            return False
        blob = self.net.learnable_params[i]
        data, diff = blob.data, blob.diff
        if backend.get_array_module(data) is numpy:
            return False
        histories = [self.history_blob(i, k).data for k in range(self.history_sets)]
        if not (cuda_kernels.usable(data, diff, *histories)
                and all(a.flags.c_contiguous for a in [data, diff] + histories)):
            return False
        self.fused_cuda_update(i, rate)
        return True

    def fused_cuda_update(self, i, rate):
        """Parameter ``i``'s whole update by this solver type's kernel (its arrays on the device, contiguous)."""
        blob, p = self.net.learnable_params[i], self.param
        histories = [self.history_blob(i, k).data.reshape(-1) for k in range(self.history_sets)]
        cuda_updates.apply(self.cuda_kernel, blob.data.reshape(-1), blob.diff.reshape(-1), histories,
                           iter_size=p.iter_size, decay=p.weight_decay * self.net.params_weight_decay[i],
                           l1=p.regularization_type == "L1", scalars=self.cuda_scalars(i, rate))

    def update_param(self, i, rate):
        """Normalize, regularize, compute the update value (into the diff) and apply it: data -= diff.

        Parameters are independent, so applying each one's update as soon as it is computed gives what
        Caffe's apply-all-at-the-end gives.  Solver types may fuse the whole sequence (SGD does); on the
        GPU one kernel per solver type does it all (``update_param_cuda``).
        """
        if self.update_param_cuda(i, rate):
            return
        self.normalize(i)
        self.regularize(i)
        self.compute_update_value(i, rate)
        blob = self.net.learnable_params[i]
        data = blob.data
        backend.get_array_module(data).subtract(data, blob.diff, out=data)

    def clip_gradients(self):
        threshold = self.param.clip_gradients
        if threshold < 0:
            return
        sumsq = sum(float(_dot(b.diff, b.diff)) for b in self.net.learnable_params)
        norm = math.sqrt(sumsq)
        if norm > threshold:
            scale = threshold / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                     norm, threshold, scale)
            for b in self.net.learnable_params:
                b.diff[...] *= scale

    def normalize(self, i):
        if self.param.iter_size > 1:
            self.net.learnable_params[i].diff[...] *= 1.0 / self.param.iter_size

    def regularize(self, i):
        blob = self.net.learnable_params[i]
        decay = self.param.weight_decay * self.net.params_weight_decay[i]
        if not decay:
            return
        xp = backend.get_array_module(blob.data)
        tmp = self.scratch(blob, 0)
        if self.param.regularization_type == "L2":
            xp.multiply(blob.data, decay, out=tmp)
        else:
            xp.sign(blob.data, out=tmp)
            tmp *= decay
        diff = blob.diff
        xp.add(diff, tmp, out=diff)

    def compute_update_value(self, i, rate):
        raise NotImplementedError

    def local_rate(self, i, rate):
        return rate * self.net.params_lr[i]

    def scratch(self, like, slot):
        """A reusable work array shaped like ``like`` (one flat buffer per slot, sized to the largest param)."""
        key = (slot, like.dtype.str, backend.get_array_module(like.data).__name__)
        buf = self._scratch.get(key)
        if buf is None or buf.size < like.count:
            xp = backend.get_array_module(like.data)
            size = max(b.count for b in self.net.learnable_params)
            buf = self._scratch[key] = xp.empty(size, dtype=like.dtype)
        return buf[: like.count].reshape(like.shape)

    def history_blob(self, i, k=0):
        return self.history[k * len(self.net.learnable_params) + i]

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot_filename(self, extension):
        prefix = self.param.snapshot_prefix
        if not prefix:
            prefix = os.path.splitext(self.source)[0] if self.source else "caffeish"
        return f"{prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write the .caffemodel, then the .solverstate (``snapshot.write_snapshot``: atomically; a failed write
        keeps the previous snapshot and stops training or, with ``on_snapshot_error = "continue"``, is logged);
        returns their paths, or None when none was written."""
        if False in self._call_back("before_snapshot"):
            return None
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        written = snap.write_snapshot(self, self.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel"),
                                      self.snapshot_filename(".solverstate.h5" if hdf5 else ".solverstate"), hdf5)
        if written is None:
            return None
        self.last_snapshot = written
        self._call_back("after_snapshot", self.last_snapshot)
        return written

    #: What a failed snapshot write does: "stop" (raise CaffeishError) or "continue" (log it and train on).
    on_snapshot_error = "stop"
    #: (caffemodel, solverstate) of the last snapshot this solver wrote.
    last_snapshot = None

    def restore(self, path):
        snap.restore_solver_state(self, path)
        self.last_snapshot = (None, os.fspath(path))

    # -- exact resume: everything besides weights and history that decides what comes next --
    def resume_state(self):
        return snap.resume_state(self)

    def set_resume_state(self, state):
        snap.set_resume_state(self, state)


_CALLBACK_POINTS = ("on_start", "on_gradients_ready", "before_snapshot", "after_snapshot")


def _is_callback(obj):
    return any(callable(getattr(obj, point, None)) for point in _CALLBACK_POINTS)


class _Callback:
    """pycaffe's pair of callables as a callback object."""

    def __init__(self, on_start, on_gradients_ready):
        self.on_start = on_start
        self.on_gradients_ready = on_gradients_ready


def _dot(a, b):
    xp = backend.get_array_module(a)
    return xp.vdot(a.ravel(), b.ravel())
