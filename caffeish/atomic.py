"""Atomic file writes: a snapshot or database is either the old complete one or the new complete one.

Temporary names carry the writer's process id (``.tmp-<pid>-...``), so the leftovers of a writer that
was killed (``kill -9``, a crash) can be told from a write in progress and removed by the next write in
the same directory: repeated crashes do not fill the disk.
"""
import contextlib
import errno
import os
import re
import tempfile

_TMP = re.compile(r"^\.tmp-(\d+)-[A-Za-z0-9_]+(\.[A-Za-z0-9.]*)?$")


def process_alive(pid):
    """False only when no process ``pid`` exists (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def remove_stale_temporaries(directory):
    """Remove the ``.tmp-<pid>-*`` files that processes no longer running left in ``directory``."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        m = _TMP.match(entry)
        if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass


def fsync_directory(directory):
    """Make a rename in ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask():
    """This process's umask (read without changing it where Linux tells it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=suffix, dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 -> what open() would have made
    except OSError:
        pass
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
