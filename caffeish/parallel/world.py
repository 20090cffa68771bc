"""The MPI world of a data-parallel run: who this process is, waiting without hanging, failing loudly.

mpi4py is imported only when MPI is used (``want_mpi``); ``World`` holds the operations the trainer needs.
"""
import logging
import os
import pickle
import sys
import time
import traceback

import numpy

from ..errors import CaffeishError

log = logging.getLogger("caffeish")

#: Environment variables that launchers set to the number of processes (MPICH/Intel MPI/Slurm PMI,
#: Open MPI, MVAPICH2).
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: Seconds a collective may wait for its peers before the job is ended (``--mpi-timeout``).
DEFAULT_TIMEOUT = 600.0
#: Seconds a failing rank waits for rank 0 to report its error and end the job before it aborts itself.
FAIL_GRACE = 5.0
FAIL_TAG = 7001
#: Seconds between the last log line and MPI_Abort (Hydra drops output still in the pipe when it aborts).
OUTPUT_DRAIN = 0.3


def launched_size(environ=None):
    """How many processes the MPI launcher started (0 when not started by one)."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def want_mpi(flag, environ=None):
    """Whether to train with MPI: ``--mpi``/``--no-mpi`` (True/False) or, when None, launched with N > 1."""
    if flag is not None:
        return bool(flag)
    return launched_size(environ) > 1


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        size = launched_size()
        started = f"started by an MPI launcher with {size} processes, but " if size else ""
        raise CaffeishError(f"data-parallel training needs mpi4py: {started}it cannot be imported ({e}). "
                            "Install it with pip install 'caffeish[mpi]' (and an MPI: pip install mpich), "
                            "or pass --no-mpi to train each process on its own") from None
    return MPI


class _RankPrefix(logging.Filter):
    def __init__(self, rank, size):
        super().__init__()
        self.prefix = f"[rank {rank}/{size}] "

    def filter(self, record):
        if not getattr(record, "_rank_prefixed", False):
            record.msg = self.prefix + str(record.msg)
            record._rank_prefixed = True
        return True


class World:
    """This process's place in the job, and the few MPI operations the trainer needs.

    MPI is used only when the process was started by an MPI launcher with more than one process
    (``mpiexec -n N``, ``srun``; recognised by the variables the launchers set, before mpi4py is
    imported) or when ``--mpi`` asks for it; otherwise nothing here is imported and training is
    single-process as before.

    Every wait for a collective is a poll loop (``wait``): it answers failure notices from other ranks
    and gives up after ``timeout`` seconds (``--mpi-timeout``; 0 waits for ever) by ending the job, so a
    peer that hangs does not hang everyone.  A peer that dies is normally seen sooner: MPICH's Hydra and
    Open MPI's mpirun end the whole job when one process dies.  A rank whose code raises calls
    ``fail``: it logs the error, sends it to rank 0 (which logs "rank r of N failed: ..." and calls
    ``MPI_Abort``) and, should rank 0 not answer within a few seconds (it may be busy testing), aborts
    the job itself.  Either way ``mpiexec`` exits non-zero within seconds.
    """

    def __init__(self, timeout=DEFAULT_TIMEOUT, MPI=None):
        self.MPI = MPI or import_mpi()
        self.world = self.MPI.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.comm = self.world.Dup()     # collectives (gradients, broadcasts)
        self.notices = self.world.Dup()  # failure notices, point to point to rank 0
        local = self.world.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.timeout = float(timeout or 0)
        self.on_abort = []  # called before MPI_Abort (the NCCL communicator aborts itself there)
        self._failed = False

    @property
    def root(self):
        return self.rank == 0

    def quiet_other_ranks(self):
        """Rank 0 alone logs; the others log warnings and errors only, prefixed with their rank."""
        if self.root:
            return
        logger = logging.getLogger("caffeish")
        logger.setLevel(logging.WARNING)
        prefix = _RankPrefix(self.rank, self.size)
        logger.addFilter(prefix)

    # -- waiting --------------------------------------------------------------------------------------------------
    def wait(self, done, what, timeout=None):
        """Poll ``done()`` until it is true, answering failure notices; past the timeout, end the job."""
        if done():
            return
        limit = self.timeout if timeout is None else float(timeout or 0)
        start = time.monotonic()
        spin_until = start + 0.002
        while not done():
            self.check_notices()
            now = time.monotonic()
            if limit and now - start > limit:
                self.abort(f"{what} did not complete within {limit:g} s (--mpi-timeout): another rank is hung, "
                           "was stopped, or is much slower")
            if now > spin_until:
                time.sleep(0.0002)

    def wait_requests(self, requests, what, timeout=None):
        requests = [r for r in requests if r is not None]
        if requests:
            self.wait(lambda: self.MPI.Request.Testall(requests), what, timeout)

    def check_notices(self):
        """On rank 0: if another rank reported a failure, log it and end the job."""
        if not self.root or self.size == 1:
            return
        status = self.MPI.Status()
        if self.notices.Iprobe(source=self.MPI.ANY_SOURCE, tag=FAIL_TAG, status=status):
            message = self.notices.recv(source=status.Get_source(), tag=FAIL_TAG)
            self.abort(f"rank {status.Get_source()} of {self.size} failed: {message}")

    # -- collectives ------------------------------------------------------------------------------------------------
    def bcast_array(self, array, what="the broadcast from rank 0"):
        """Rank 0's values of a host array, in place, on every rank."""
        if self.size > 1:
            self.wait_requests([self.comm.Ibcast(array, root=0)], what)
        return array

    def bcast_object(self, obj, what="the broadcast from rank 0"):
        """Rank 0's ``obj`` (picklable), on every rank."""
        if self.size == 1:
            return obj
        data = numpy.frombuffer(pickle.dumps(obj), dtype=numpy.uint8) if self.root else None
        size = numpy.array([0 if data is None else data.size], dtype=numpy.int64)
        self.bcast_array(size, what)
        buf = data.copy() if self.root else numpy.empty(int(size[0]), dtype=numpy.uint8)
        self.bcast_array(buf, what)
        return obj if self.root else pickle.loads(buf.tobytes())

    def all_agree(self, flag, what="an agreement between the ranks"):
        """True on every rank when ``flag`` is true on every rank."""
        value = numpy.array([1 if flag else 0], dtype=numpy.int32)
        if self.size > 1:
            self.wait_requests([self.comm.Iallreduce(self.MPI.IN_PLACE, value, op=self.MPI.MIN)], what)
        return bool(value[0])

    def barrier(self, what="the barrier"):
        if self.size > 1:
            self.wait_requests([self.comm.Ibarrier()], what)

    # -- failing -------------------------------------------------------------------------------------------------------
    def fail(self, error):
        """This rank cannot go on: log why, have rank 0 report it, and end the whole job. Never returns."""
        if self._failed:  # an error while failing: stop at once
            self._abort_now(1)
        self._failed = True
        if isinstance(error, CaffeishError):
            text = f"{error}"
            log.error("caffeish: error: %s", text)
        elif isinstance(error, KeyboardInterrupt):
            text = "interrupted (KeyboardInterrupt)"
            log.error("%s", text)
        else:
            text = f"{type(error).__name__}: {error}"
            log.error("%s", "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip())
        if self.root or self.size == 1:
            self.abort(f"rank 0 of {self.size} failed: {text}")
        try:
            request = self.notices.isend(text, dest=0, tag=FAIL_TAG)
            deadline = time.monotonic() + FAIL_GRACE
            while time.monotonic() < deadline:  # rank 0 ends the job when it reads the notice
                request.Test()
                time.sleep(0.01)
        finally:
            self.abort(f"rank {self.rank} of {self.size} failed and rank 0 did not end the job within "
                       f"{FAIL_GRACE:g} s: {text}", log_it=False)

    def abort(self, message, log_it=True):
        """Log ``message`` (as an error) and end every process of the job with MPI_Abort. Never returns."""
        if log_it:
            log.error("%s. Ending the job (MPI_Abort).", message.rstrip("."))
        self._abort_now(1)

    def _abort_now(self, code):
        for hook in self.on_abort:
            try:
                hook()
            except Exception:  # pragma: no cover - best effort
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # pragma: no cover
                pass
        time.sleep(OUTPUT_DRAIN)  # the launcher forwards our last lines before MPI_Abort tears the job down
        self.world.Abort(code)
        os._exit(code)  # pragma: no cover - MPI_Abort does not return
