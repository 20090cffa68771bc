#!/usr/bin/env bash
# The GPU checks in one go, for a fresh GPU machine with cupy and torch already installed:
#   bench/gpu_check.sh [OUT]      (OUT, or $OUT, or ./gpu_out: where the logs and gpu_bench.json go)
# 1. the package's runtime dependencies (and pytest), installed where missing -- never cupy or torch; on a
#    machine without a package index, point pip at local wheels (PIP_FIND_LINKS=DIR PIP_NO_INDEX=1)
# 2. pip install --no-deps -e . (optional: the checkout is on PYTHONPATH anyway)  3. device-query
# 4. the GPU tests  5. bench/gpu.py --json OUT/gpu_bench.json
# Each step has a time limit, and all of them together at most BUDGET seconds (default 570), so that the
# whole fits in about 10 minutes; a step that fails or runs out of time is reported and the next one still
# runs.  The exit status is that of the first failing step (the optional install aside).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-./gpu_out}}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
BUDGET="${BUDGET:-570}"
# the checkout itself is what is tested, installed or not
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

step() {  # step [--optional] NAME SECONDS COMMAND...
    local optional=0
    if [ "$1" = "--optional" ]; then optional=1; shift; fi
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 5 ]; then
        echo "== $name: skipped, the time budget of ${BUDGET}s is spent"
        if [ "$optional" -eq 0 ] && [ "$status" -eq 0 ]; then status=124; fi
        return
    fi
    echo "== $name (at most ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start))s; log: $OUT/$name.log"
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    if [ "$rc" -ne 0 ] && [ "$optional" -eq 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

# pyproject.toml's [project] dependencies (pip leaves the ones already satisfied alone, without asking an index)
mapfile -t DEPS < <("$PY" - <<'EOF'
import re
text = open("pyproject.toml", encoding="utf-8").read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
print("\n".join(re.findall(r'^\s*"([^"]+)"', block, re.M)))
EOF
)
step deps 120 "$PY" -m pip install --disable-pip-version-check --retries 1 --timeout 15 "${DEPS[@]}" "pytest>=8"
step --optional install 60 "$PY" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
step device_query 60 "$PY" -m caffeish device-query
# the kernels' own tests first: they are quick, and tell the most if the layer parity tests run out of time
step tests 300 "$PY" -m pytest -q tests/cuda tests/test_backend.py tests/layers/data/test_prefetch.py \
    tests/parallel/test_multi_device.py tests/gpu -rs --durations=15 --junitxml="$OUT/tests.xml"
step bench 240 "$PY" bench/gpu.py --json "$OUT/gpu_bench.json"
echo "== done: exit $status after ${SECONDS}s; logs in $OUT"
exit "$status"
