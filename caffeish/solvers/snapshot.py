"""Writing and reading snapshots: .caffemodel / .solverstate (binary protobuf) or their HDF5 forms.

Every file is written to a temporary name, fsynced and renamed, so a crash in
the middle of a snapshot leaves the previous one intact.  The layouts are
Caffe's: HDF5 weights under ``data/<layer>/<i>`` (and ``diff/...``), solver
state with ``iter``, ``learned_net``, ``current_step`` and ``history/<i>``.
"""
import json
import logging
import os

import numpy

from .. import backend
from ..errors import CaffeishError
from ..proto import caffe_pb2
from ..prototxt import read_binary_proto, write_binary_proto
from ..weights import H5_ERRORS, atomic_h5, load_weights, save_net_hdf5

log = logging.getLogger("caffeish")


def save_solver_state(solver, model_path, state_path, hdf5=False):
    extra = json.dumps(solver.resume_state())
    if hdf5:
        def fill(f):
            f["iter"] = numpy.int32(solver.iter)
            f["learned_net"] = numpy.bytes_(model_path)
            f["current_step"] = numpy.int32(solver.current_step)
            f["resume_state_json"] = numpy.bytes_(extra)
            group = f.create_group("history")
            for i, blob in enumerate(solver.history):
                group.create_dataset(str(i), data=backend.to_cpu(blob.data))
        atomic_h5(state_path, fill)
        return
    state = caffe_pb2.SolverState(iter=solver.iter, learned_net=model_path, current_step=solver.current_step,
                                  resume_state_json=extra)
    for blob in solver.history:
        blob.to_proto(state.history.add())
    write_binary_proto(state_path, state)


def _text(value, field, path):
    """A text field of a solver state (str; bytes from HDF5 or from a damaged protobuf string)."""
    if isinstance(value, (bytes, numpy.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise CaffeishError(f"the solver state {path} is damaged: its {field} is not UTF-8 text") from None
    value = str(value)
    if "\x00" in value:
        raise CaffeishError(f"the solver state {path} is damaged: its {field} holds a NUL character")
    return value


def _learned_net_path(learned_net, state_path):
    if not learned_net or os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(state_path), os.path.basename(learned_net))
    return beside if os.path.exists(beside) else learned_net


def restore_solver_state(solver, path):
    if not os.path.exists(path):
        raise CaffeishError(f"the solver state {path} does not exist")
    if path.endswith(".h5"):
        import h5py
        try:
            with h5py.File(path, "r") as f:
                it, step = int(f["iter"][()]), int(f["current_step"][()])
                learned = f["learned_net"][()] if "learned_net" in f else ""
                extra = f["resume_state_json"][()] if "resume_state_json" in f else ""
                group = f.get("history", {})
                history = [numpy.asarray(group[str(i)]) for i in range(len(group))]
        except H5_ERRORS as e:  # h5py's words for a damaged file
            raise CaffeishError(f"the solver state {path} is not a readable HDF5 solver state ({e}); resume from "
                                "another snapshot") from None
    else:
        state = read_binary_proto(path, caffe_pb2.SolverState)
        it, step, learned, extra = state.iter, state.current_step, state.learned_net, state.resume_state_json
        history = state.history
    learned = _text(learned, "learned_net", path)
    extra = _text(extra, "resume_state_json", path)
    if len(history) != len(solver.history):
        raise CaffeishError(f"the solver state {path} holds {len(history)} history blobs, but this "
                            f"{solver.type_name} solver's net needs {len(solver.history)}: it was saved for a "
                            "different net or solver type")
    learned = _learned_net_path(learned, path)
    if learned:
        load_weights(solver.net, learned)
    for i, (blob, saved) in enumerate(zip(solver.history, history)):
        if isinstance(saved, numpy.ndarray):
            if saved.size != blob.count:
                raise CaffeishError(f"the solver state {path}: history blob {i} has shape {saved.shape}, the net's "
                                    f"parameter has {blob.shape}: it was saved for a different net")
            blob.data[...] = backend.to_current(saved.reshape(blob.shape), blob.dtype)
        else:
            try:
                blob.from_proto(saved, reshape=False)
            except CaffeishError as e:
                raise CaffeishError(f"the solver state {path} does not fit this net ({e.reason})") from None
    solver.iter, solver.current_step = it, step
    if extra:
        try:
            solver.set_resume_state(json.loads(extra))
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # JSON or a generator state of another shape
            raise CaffeishError(f"the solver state {path} holds a damaged resume state ({type(e).__name__}: {e}); "
                                "resume from another snapshot") from None


def write_snapshot(solver, model, state, hdf5=False):
    """The solver's .caffemodel, then its .solverstate; (model, state), or None when writing failed.

    Each file is written atomically, so a crash at any moment leaves every earlier snapshot whole (a crash
    between the two files leaves a new .caffemodel beside the previous .solverstate, which still names its
    own .caffemodel).  A write that fails (a full disk, a missing directory) removes what this snapshot
    wrote, keeps the previous snapshot, and then raises a CaffeishError (``solver.on_snapshot_error =
    "stop"``, the default) or logs it and returns None (``"continue"``).
    """
    written = None
    try:
        directory = os.path.dirname(model)
        if directory:
            os.makedirs(directory, exist_ok=True)
        written = model
        if hdf5:
            log.info("Snapshotting to HDF5 file %s", model)
            save_net_hdf5(solver.net, model, solver.param.snapshot_diff)
        else:
            log.info("Snapshotting to binary proto file %s", model)
            solver.net.save(model, write_diff=solver.param.snapshot_diff)
        written = state
        log.info("Snapshotting solver state to %s file %s", "HDF5" if hdf5 else "binary proto", state)
        save_solver_state(solver, model, state, hdf5)
    except OSError as e:
        return _write_failed(solver, written or model, model if written == state else None, e)
    return model, state


def _write_failed(solver, path, orphan, error):
    if orphan is not None:  # the model of a snapshot whose state could not be written
        try:
            os.unlink(orphan)
        except OSError:
            pass
    reason = os.strerror(error.errno) if error.errno else str(error)
    last = solver.last_snapshot
    kept = f"the previous snapshot ({last[1]}) is kept" if last else "no earlier snapshot of this run was written"
    if solver.on_snapshot_error == "continue":
        log.error("Snapshot at iteration %d failed: cannot write %s: %s; %s. Training goes on "
                  "(--on-snapshot-error continue).", solver.iter, path, reason, kept)
        return None
    resume = f" and resume with --snapshot {last[1]}" if last else ""
    raise CaffeishError(f"cannot write the snapshot at iteration {solver.iter}: {reason}; {kept}. Free space (or "
                        f"fix snapshot_prefix){resume}, or pass --on-snapshot-error continue to train on "
                        "without snapshots", path=path) from None


def resume_state(solver):
    """Everything besides weights and history that decides what comes next: the host generator's state and
    the layers' own (data readers' positions, shuffle orders), for exact resume."""
    return {
        "rng": backend.rng().bit_generator.state,
        "train": _layer_states(solver.net),
        "test": [_layer_states(n) for n in solver.test_nets],
    }


def set_resume_state(solver, state):
    if "rng" in state:
        backend.rng().bit_generator.state = state["rng"]
    _set_layer_states(solver.net, state.get("train", {}))
    for net, states in zip(solver.test_nets, state.get("test", [])):
        _set_layer_states(net, states)


def _layer_states(net):
    return {layer.name: s for layer in net.layers if (s := layer.get_state()) is not None}


def _set_layer_states(net, states):
    for name, s in states.items():
        if name in net.layer_dict:
            net.layer_dict[name].set_state(s)
