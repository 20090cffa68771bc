#!/usr/bin/env bash
# The GPU checks in one go, for a fresh GPU machine with cupy and torch already installed:
#   bench/gpu_check.sh [OUT]      (OUT, or $OUT, or ./gpu_out: where the logs and gpu_bench.json go)
# 1. pip install --no-deps -e .  2. the GPU tests  3. bench/gpu.py --json OUT/gpu_bench.json
# Each step has a time limit, so that the whole fits in about 10 minutes; a step that fails or runs out of
# time is reported and the next one still runs.  The exit status is that of the first failing step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-./gpu_out}}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
status=0

step() {  # step NAME SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo "== $name (at most ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start))s; log: $OUT/$name.log"
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

step install 120 "$PY" -m pip install --no-deps -e .
step device_query 60 "$PY" -m caffeish device-query
step tests 300 "$PY" -m pytest -q tests/gpu tests/cuda tests/parallel/test_multi_device.py tests/test_backend.py \
    tests/data/test_prefetch.py -rs --junitxml="$OUT/tests.xml"
step bench 240 "$PY" bench/gpu.py --json "$OUT/gpu_bench.json"
echo "== done: exit $status; logs in $OUT"
exit "$status"
