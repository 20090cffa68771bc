"""The bad-input corpus (tests/bad_inputs/cases.json) through the real CLI.

Every case must end as one ``caffeish: error: ...`` paragraph holding the expected fragments (the file,
line, layer, blob or record at fault and what would fix it), exit status 1 and no traceback.  To keep
this fast the cases run in one subprocess, one after the other, each through ``caffeish.cli.main`` with
its own stdout/stderr (redirected at the file-descriptor level) and environment; an exception escaping
``main`` is reported with its traceback.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "bad_inputs"
CASES = json.loads((CORPUS / "cases.json").read_text())["cases"]

DRIVER = r'''
import json, os, signal, sys, tempfile, traceback
from caffeish.cli import main

cases = json.load(sys.stdin)
results = []
for case in cases:
    tmp = tempfile.mkdtemp(prefix="caffeish-bad-")
    args = [a.replace("{tmp}", tmp) for a in case["args"]]
    saved_env = {k: os.environ.get(k) for k in case.get("env", {})}
    os.environ.update(case.get("env", {}))
    out = tempfile.TemporaryFile()
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1); os.dup2(out.fileno(), 2)
    signal.alarm(60)
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    except BaseException:
        rc = "escaped"
        traceback.print_exc()
    finally:
        signal.alarm(0)
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(saved[0]); os.close(saved[1])
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out.seek(0)
    results.append({"rc": rc, "output": out.read().decode("utf-8", "replace")})
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CAFFEISH_MEMORY_LIMIT", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(CASES), cwd=CORPUS, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(got) == len(CASES)
    return dict(zip((c["name"] for c in CASES), got))


def test_corpus_files_are_small_and_present():
    named = {a for c in CASES for a in c["args"] if "." in a and "/" not in a and not a.startswith("-")}
    present = {p.name for p in CORPUS.iterdir()}
    missing = {n for n in named - present if not n.startswith("no_such") and n != "."}
    assert not missing, missing
    assert all(p.stat().st_size < 64 * 1024 for p in CORPUS.iterdir())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_is_one_clear_error(results, case):
    got = results[case["name"]]
    output = got["output"]
    assert got["rc"] == 1, f"exit {got['rc']}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("caffeish: error: ")]
    assert len(errors) == 1, output[-3000:]
    for fragment in case["expect"]:
        assert fragment in errors[0], f"{fragment!r} not in:\n{errors[0]}"
