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
from ..weights import H5_ERRORS, atomic_h5, load_weights

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
