"""Optional compiled C kernels (``conv.c``: direct convolution for unit strides, see its header), built from
source on first use with the system's C compiler and cached; ``library()`` loads them, ``status()`` says
what happened.

numpy stays the reference: every native kernel has a numpy path it must agree with (tests compare
them), and without a compiler -- or with ``CAFFEISH_NATIVE=0`` -- the numpy paths run.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

SOURCES = ("conv.c", "conv_impl.h")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-std=gnu11")
#: Seconds a compile may take before the numpy paths are used instead.
COMPILE_TIMEOUT = 120

_state = {"lib": None, "tried": False, "status": "not built yet"}
_lock = threading.Lock()


def enabled():
    """False when the user switched the native kernels off (``CAFFEISH_NATIVE=0``)."""
    return os.environ.get("CAFFEISH_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def status():
    """One line: the library in use, or why the numpy paths run."""
    if not enabled():
        return "off (CAFFEISH_NATIVE=0): numpy paths"
    library()
    return _state["status"]


def library():
    """The loaded ctypes library, or None (no compiler, build failed, or switched off)."""
    if not enabled():
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _state["lib"] = _load()
                _state["tried"] = True
    return _state["lib"]


def _compiler():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name.split()
    return None


def _cache_dir():
    if os.environ.get("CAFFEISH_CACHE_DIR"):
        return Path(os.environ["CAFFEISH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "caffeish"


def _cache_dirs():
    """Where to build: the cache directory, then (a read-only home) a per-user folder in the temp directory."""
    folders = [_cache_dir()]
    if not os.environ.get("CAFFEISH_CACHE_DIR"):
        user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
        folders.append(Path(tempfile.gettempdir()) / f"caffeish-{user}")
    return folders


def _cpu_signature():
    """The CPU's model and feature flags: a library built with -march=native only runs where they match."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor() + platform.machine()


def _load():
    """Build (if need be) and load the library; None, with the reason in ``_state["status"]``, if it cannot.

    Build: ``$CC`` (else ``cc``, ``gcc``, ``clang``) with ``-O3 -march=native``, into a per-user cache
    (``$CAFFEISH_CACHE_DIR``, else ``$XDG_CACHE_HOME/caffeish``, else ``~/.cache/caffeish``) under a name
    that hashes the sources, the compiler's version, the flags and this CPU's model and feature flags,
    so a changed source, compiler or machine builds afresh; written to a temporary name and renamed, so
    concurrent first uses never load a half-written library.
    """
    cc = _compiler()
    if cc is None:
        _state["status"] = "no C compiler found ($CC, cc, gcc, clang): numpy paths"
        return None
    here = Path(__file__).parent
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        _state["status"] = f"C compiler {' '.join(cc)} does not run ({e}): numpy paths"
        return None
    digest = hashlib.sha256()
    for part in [*(here / s for s in SOURCES)]:
        digest.update(part.read_bytes())
    for text in (version, " ".join(cc + list(FLAGS)), _cpu_signature()):
        digest.update(text.encode())
    name = f"caffeish_native_{digest.hexdigest()[:20]}.so"
    for folder in _cache_dirs():
        target = folder / name
        error = None if target.exists() else _build(cc, here, target)
        if error is None or not error.startswith("cache directory"):
            break  # built, or a compiler error that another folder would not mend
    if error:
        _state["status"] = f"could not build the native kernels ({error}): numpy paths"
        warnings.warn(f"caffeish: {_state['status']}", RuntimeWarning, stacklevel=3)
        return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        _state["status"] = f"could not load {target} ({e}): numpy paths"
        return None
    _declare(lib)
    _state["status"] = f"{target.name} ({lib.caffeish_native_vector_bytes() * 8}-bit vectors, {' '.join(cc)})"
    return lib


def _build(cc, here, target):
    """Compile into ``target`` atomically; an error message, or None."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.stem, suffix=".so.tmp", dir=target.parent)
        os.close(fd)
    except OSError as e:
        return f"cache directory {target.parent}: {e.strerror or e}"
    try:
        result = subprocess.run(cc + list(FLAGS) + ["-o", tmp, str(here / "conv.c")], capture_output=True,
                                text=True, timeout=COMPILE_TIMEOUT)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            return f"{' '.join(cc)} failed: {lines[-1] if lines else 'exit status %d' % result.returncode}"
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        return None
    except subprocess.TimeoutExpired:
        return f"{' '.join(cc)} took over {COMPILE_TIMEOUT} s"
    except OSError as e:
        return str(e)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib):
    p, lng = ctypes.c_void_p, ctypes.c_int64
    for sfx in ("f32", "f64"):
        getattr(lib, f"caffeish_conv_forward_{sfx}").argtypes = [p, p, p, p, p, lng, lng]
        getattr(lib, f"caffeish_conv_backward_weights_{sfx}").argtypes = [p, p, p, p, lng, lng, lng]
        getattr(lib, f"caffeish_conv_forward_{sfx}").restype = ctypes.c_int
        getattr(lib, f"caffeish_conv_backward_weights_{sfx}").restype = ctypes.c_int
    lib.caffeish_native_vector_bytes.restype = ctypes.c_int
