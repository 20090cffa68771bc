"""``caffeish train``: Caffe's ``caffe train``, with its flags, log lines and signal handling."""
import logging
import signal
import sys
import time

import click

from .. import backend, parallel
from ..errors import CaffeishError
from ..proto import caffe_pb2
from ..prototxt import read_solver_param
from ..solvers import SOLVERS, upgrade_solver_type
from ..weights import load_weights
from . import register_command
from .common import gpu_option, level_option, parse_gpus, parse_stages, select_device, stage_option

log = logging.getLogger("caffeish")
EFFECTS = click.Choice(["stop", "snapshot", "none"])


class SignalActions:
    """Turns SIGINT/SIGHUP into solver requests ("stop", "snapshot", "none"), one per signal received."""

    def __init__(self, sigint_effect, sighup_effect):
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending = []
        self.previous = {}

    def __enter__(self):
        for sig in self.effects:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.pending.append(self.effects[signum])

    def __call__(self):
        while self.pending:
            effect = self.pending.pop(0)
            if effect != "none":
                return effect
        return "none"


class ProgressBar:
    """A one-line bar with rate and ETA, on a terminal only; log lines clear it before they print."""

    def __init__(self, stream, total):
        self.stream, self.total = stream, max(total, 1)
        self.start_iter = None
        self.last_draw = 0.0

    def clear(self):
        self.stream.write("\r\033[K")

    def __call__(self, solver):
        now = time.perf_counter()
        if self.start_iter is None:
            self.start_iter, self.start_time = solver.iter, now
            return
        if now - self.last_draw < 0.2 and solver.iter < self.total:
            return
        self.last_draw = now
        done = solver.iter - self.start_iter
        rate = done / max(now - self.start_time, 1e-9)
        eta = (self.total - solver.iter) / rate if rate else 0
        frac = solver.iter / self.total
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        self.stream.write(f"\r[{bar}] {solver.iter}/{self.total} {rate:.1f} it/s ETA "
                          f"{int(eta // 60)}:{int(eta % 60):02d}\033[K")
        self.stream.flush()


class _ClearBar(logging.Filter):
    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def filter(self, record):
        self.bar.clear()
        return True


def _choose_device(gpu, param, world=None):
    """Select the device(s); returns the GPUs to train on in this process when there are several, else []."""
    if gpu is None and param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        if backend.gpu_available():
            gpu = "all" if world is not None else str(param.device_id)
        else:
            log.warning("The solver asks for GPU mode, but no CUDA device is available: running on the CPU")
    if world is not None and parse_gpus(gpu):  # one GPU per rank, picked by the local rank
        gpus = parse_gpus(gpu)
        device = parallel.rank_gpu(world, gpus)
        select_device(str(device))
        log.info("Using GPU %d on rank 0; every rank takes the GPU of its local rank among %s (NCCL all-reduce)",
                 device, ", ".join(map(str, gpus)))
        return []
    if gpu is not None and gpu not in ("", "all") and len(parse_gpus(gpu)) > 1:
        gpus = parallel.parse_devices(parse_gpus(gpu))
        parallel.check_gpus(gpus, f"--gpu {gpu} (data-parallel training in this process, one replica per GPU, "
                                  "gradients summed with NCCL)")
    gpus = select_device(gpu)
    if len(gpus) > 1:
        log.info("Using GPUs %s: one replica per GPU in this process", ", ".join(map(str, gpus)))
        return gpus
    if gpus:
        log.info("Using GPUs %s", ", ".join(map(str, gpus)))
    else:
        log.info("Use CPU.")
    return []


@register_command("train")
@click.command()
@click.option("--solver", required=True, type=click.Path(), help="The solver definition (prototxt).")
@click.option("--weights", default=None, help="Comma-separated .caffemodel files to fine-tune from.")
@click.option("--snapshot", default=None, help="A .solverstate to resume training from.")
@gpu_option
@level_option
@stage_option
@click.option("--sigint-effect", default="stop", type=EFFECTS, show_default=True,
              help="What Ctrl-C does: stop (after a snapshot if snapshot_after_train), snapshot, or none.")
@click.option("--sighup-effect", default="snapshot", type=EFFECTS, show_default=True, help="What SIGHUP does.")
@click.option("--progress/--no-progress", default=None, help="A progress bar (default: when stderr is a terminal).")
@click.option("--on-snapshot-error", default="stop", type=click.Choice(["stop", "continue"]), show_default=True,
              help="When a snapshot cannot be written (a full disk): stop with an error, or log it and train on. "
                   "Either way the previous snapshot is kept.")
@click.option("--mpi/--no-mpi", default=None,
              help="Data-parallel training over MPI ranks (default: when started by mpiexec with more than one "
                   "process).")
@click.option("--mpi-timeout", default=parallel.DEFAULT_TIMEOUT, type=float, show_default=True,
              help="Seconds an all-reduce waits for the other ranks before ending the job (0: for ever).")
@click.option("-q", "--quiet", is_flag=True,
              help="Leave out the set-up lines (solver parameters, each layer's tops, shapes and memory).")
@click.option("-v", "--verbose", is_flag=True, help="Debug lines as well.")
def train(solver, weights, snapshot, gpu, level, stage, sigint_effect, sighup_effect, progress, mpi, mpi_timeout,
          on_snapshot_error="stop", quiet=False, verbose=False):
    """Train a model from a solver file (as `caffe train`); under mpiexec, data-parallel over the ranks.

    The log is Caffe's: the solver's parameters and each net's set-up (layer by layer: tops, their shapes,
    the memory they need, which layers run backward), then the iterations.
    """
    logging.getLogger("caffeish.setup").setLevel(logging.WARNING if quiet else logging.NOTSET)
    if verbose:
        log.setLevel(logging.DEBUG)
    if weights and snapshot:
        raise CaffeishError("give --snapshot to resume training or --weights to fine-tune, not both")
    if not parallel.want_mpi(mpi):
        return _train(solver, weights, snapshot, gpu, level, stage, sigint_effect, sighup_effect, progress,
                      on_snapshot_error=on_snapshot_error)
    world = parallel.World(mpi_timeout)
    world.quiet_other_ranks()
    try:
        _train(solver, weights, snapshot, gpu, level, stage, sigint_effect, sighup_effect, progress, world,
               on_snapshot_error=on_snapshot_error)
    except BaseException as e:  # one rank failing ends the whole job, never a hang
        world.fail(e)


def _train(solver, weights, snapshot, gpu, level, stage, sigint_effect, sighup_effect, progress, world=None,
           on_snapshot_error="stop"):
    param = caffe_pb2.SolverParameter()
    param.CopyFrom(read_solver_param(solver))
    upgrade_solver_type(param)
    gpus = _choose_device(gpu, param, world)
    if world is not None:
        parallel.shared_seed(world, param)
    cls = SOLVERS.get(param.type, context=f"solver {solver}")
    md = None
    try:
        if gpus:
            md = parallel.MultiDeviceSolver(param, gpus, solver_type=param.type, level=level,
                                            stages=parse_stages(stage), source=solver)
            s = md.root
        else:
            s = cls(param, level=level, stages=parse_stages(stage), source=solver)  # the file is parsed once
    except CaffeishError as e:
        raise e.in_file(solver) from None
    s.on_snapshot_error = on_snapshot_error
    dp = parallel.DataParallel(s, world) if world is not None else None
    root = world is None or world.root  # rank 0 reads --snapshot/--weights and broadcasts them
    if snapshot and root:
        log.info("Resuming from %s", snapshot)
        s.restore(snapshot)
    elif weights and root:
        for path in [w for w in weights.split(",") if w]:
            log.info("Finetuning from %s", path)
            for net in [s.net] + s.test_nets:
                load_weights(net, path)
    if dp is not None:
        dp.broadcast_from_root(resumed=bool(snapshot))
    if md is not None:
        md.sync_from_root(resumed=bool(snapshot))
    if progress is None:
        progress = sys.stderr.isatty()
    handler = next((h for h in log.handlers if getattr(h, "_caffeish", False)), None)
    bar_filter = None
    if progress and handler is not None and root:
        s.on_iteration = ProgressBar(sys.stderr, param.max_iter)
        bar_filter = _ClearBar(s.on_iteration)
        handler.addFilter(bar_filter)
    try:
        with SignalActions(sigint_effect, sighup_effect) as actions:
            s.action_request = dp.agree(actions) if dp is not None else actions
            log.info("Starting Optimization")
            s.solve()
    finally:
        if bar_filter is not None:
            handler.removeFilter(bar_filter)
            sys.stderr.write("\n")
        for net in [s.net] + s.test_nets:
            net.close()
        if md is not None:
            md.close()
    if dp is not None:
        dp.finish()
    log.info("Optimization Done.")
