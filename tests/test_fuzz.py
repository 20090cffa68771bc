"""Fuzzing: random nets from the schema, random solvers, byte-level mutations of real files.

Each case must either work or raise CaffeishError -- never another exception, never a hang (each
case runs under a time budget, ``fuzz_cases.CASE_SECONDS``), never an interpreter crash.  The
generators live in ``fuzz_cases`` (shared with bench/faults.py).

The example counts are bounded so this file runs in well under 40 s on 2 cores, with the examples
fixed (``derandomize``) so the suite is repeatable.  ``CAFFEISH_FUZZ_EXAMPLES=N`` runs N examples of each
kind with fresh random draws instead, for long local runs::

    CAFFEISH_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz.py
"""
import collections
import logging
import os
import warnings

import numpy
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fuzz_cases as fc  # noqa: E402

LONG_RUN = int(os.environ.get("CAFFEISH_FUZZ_EXAMPLES", "0") or 0)
#: Cases run per kind and outcome ("ok" / "error"), reported at the end of the module.
COUNTS = collections.Counter()


def fuzz_settings(examples):
    return settings(max_examples=LONG_RUN or examples, deadline=int(fc.CASE_SECONDS * 1000),
                    derandomize=not LONG_RUN, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz")
    (path / "junk.txt").write_text("garbage 1\n")
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def quiet(request):
    """Small memory limit (the guard refuses huge random shapes), no warnings or log noise, counts reported."""
    saved = os.environ.get("CAFFEISH_MEMORY_LIMIT")
    os.environ["CAFFEISH_MEMORY_LIMIT"] = str(256 << 20)
    logger = logging.getLogger("caffeish")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    errors = numpy.seterr(all="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    numpy.seterr(**errors)
    logger.setLevel(level)
    if saved is None:
        os.environ.pop("CAFFEISH_MEMORY_LIMIT", None)
    else:
        os.environ["CAFFEISH_MEMORY_LIMIT"] = saved
    request.config.caffeish_fuzz_counts = COUNTS  # printed at the end by conftest.pytest_terminal_summary


def check(kind, run, *args):
    with fc.time_budget():
        outcome = run(*args)
    assert outcome in ("ok", "error")
    COUNTS[f"{kind} {outcome}"] += 1


@fuzz_settings(1500)
@given(st.data())
def test_random_nets_build_and_run_or_fail_clearly(workdir, data):
    check("net", fc.run_net, fc.random_net(fc.HypothesisDraw(data), workdir))


@fuzz_settings(300)
@given(st.data())
def test_random_solvers_step_or_fail_clearly(workdir, data):
    check("solver", fc.run_solver, fc.random_solver(fc.HypothesisDraw(data), workdir))


@fuzz_settings(600)
@given(st.data())
def test_mutated_prototxt_parses_and_runs_or_fails_clearly(workdir, data):
    draw = fc.HypothesisDraw(data)
    check("prototxt", fc.run_prototxt, fc.mutate(draw, draw.choice(fc.SEED_NETS).encode()), workdir)


@pytest.fixture(scope="module")
def seeds(workdir):
    state_dir = os.path.join(workdir, "state")
    os.makedirs(state_dir)
    return {"caffemodel": fc.seed_caffemodel(), "binaryproto": fc.seed_binaryproto(), "datums": fc.seed_datums(),
            "solverstate": fc.seed_solverstate(state_dir), "state_dir": state_dir}


@fuzz_settings(300)
@given(st.data())
def test_mutated_caffemodel_loads_or_fails_clearly(workdir, seeds, data):
    check("caffemodel", fc.run_caffemodel, fc.mutate(fc.HypothesisDraw(data), seeds["caffemodel"]),
          fc.seed_net_param(), workdir)


@fuzz_settings(300)
@given(st.data())
def test_mutated_binaryproto_loads_or_fails_clearly(workdir, seeds, data):
    check("binaryproto", fc.run_binaryproto, fc.mutate(fc.HypothesisDraw(data), seeds["binaryproto"]), workdir)


@fuzz_settings(600)
@given(st.data())
def test_mutated_datum_decodes_or_fails_clearly(seeds, data):
    draw = fc.HypothesisDraw(data)
    check("datum", fc.run_datum, fc.mutate(draw, draw.choice(seeds["datums"])))


@fuzz_settings(250)
@given(st.data())
def test_mutated_solverstate_restores_or_fails_clearly(seeds, data):
    check("solverstate", fc.run_solverstate, fc.mutate(fc.HypothesisDraw(data), seeds["solverstate"]),
          seeds["state_dir"])


def test_a_hang_is_caught_by_the_time_budget():
    import time
    with pytest.raises(fc.CaseTimeout):
        with fc.time_budget(0.2):
            time.sleep(5)
