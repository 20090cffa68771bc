#!/usr/bin/env bash
# CI: an MPI and mpi4py in the project's virtual environment, for tests/parallel (data-parallel training).
# PyPI wheels first (mpich + mpi4py: no compiler, a few seconds); Debian's MPICH and an mpi4py built
# against it otherwise.  mpiexec ends up beside the venv's python, where tests/parallel looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || make install VENV="$VENV"
PY="$VENV/bin/python"
if ! "$PY" -m pip install -q "mpi4py>=4" mpich; then
    echo "install_mpi: the PyPI wheels did not install; trying Debian's MPICH" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q mpich libmpich-dev
    "$PY" -m pip install -q --no-binary mpi4py "mpi4py>=4"
fi
"$PY" - <<'PY'
from mpi4py import MPI
print("install_mpi:", MPI.Get_library_version().splitlines()[0].strip(), "| mpi4py", __import__("mpi4py").__version__)
PY
