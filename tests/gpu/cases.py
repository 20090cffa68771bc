"""The layer cases of the gradient checks (tests/layers), collected for the CPU/GPU parity tests.

Every test marked ``@checks_gradient`` is run once per parametrization with ``gradient_check.recording_cases``
on: each ``check_gradient`` call it makes is recorded (layer parameter, bottoms, weights), not checked.
Tests that need pytest fixtures are left out (``LEFT_OUT`` says which and why).
"""
import functools
import importlib
import inspect
import pathlib

from _pytest.mark.structures import ParameterSet

from caffeish import backend

import gradient_check

LAYER_TESTS = pathlib.Path(__file__).resolve().parent.parent / "layers"


def _calls(fn):
    """``[(id, kwargs)]``: one entry per parametrization of test function ``fn``."""
    combos = [("", {})]
    for mark in reversed(getattr(fn, "pytestmark", [])):
        if mark.name != "parametrize":
            continue
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        expanded = []
        for cid, kwargs in combos:
            for i, value in enumerate(mark.args[1]):
                values = value.values if isinstance(value, ParameterSet) else value if len(names) > 1 else (value,)
                expanded.append((f"{cid}{'-' if cid else ''}{i}", {**kwargs, **dict(zip(names, values))}))
        combos = expanded
    return combos


@functools.lru_cache(maxsize=None)
def collect():
    """``(cases, left_out)``: every recorded GradientCase (``case.test`` names its test) and the tests not run."""
    cases, left_out = [], {}
    mode = backend.mode()
    backend.set_mode_cpu()
    try:
        for path in sorted(LAYER_TESTS.rglob("test_*.py"), key=lambda p: p.name):
            module = importlib.import_module(".".join(path.relative_to(LAYER_TESTS.parent).with_suffix("").parts))
            for name, fn in sorted(vars(module).items()):
                if not (name.startswith("test_") and callable(fn) and getattr(fn, "gradient_checks", None)):
                    continue
                for cid, kwargs in _calls(fn):
                    missing = [p for p in inspect.signature(fn).parameters if p not in kwargs]
                    test = f"{path.stem}::{name}[{cid}]" if cid else f"{path.stem}::{name}"
                    if missing:
                        left_out[test] = f"needs the fixture(s) {', '.join(missing)}"
                        continue
                    with gradient_check.recording_cases() as recorded:
                        try:
                            fn(**kwargs)
                        except Exception as e:  # reported by tests/gpu/test_layer_parity.py's coverage test
                            left_out[test] = f"raised {type(e).__name__}: {e}"
                            continue
                    for k, case in enumerate(recorded):
                        case.test = f"{test}#{k}" if len(recorded) > 1 else test
                    cases.extend(recorded)
    finally:
        if mode == backend.GPU:
            backend.set_mode_gpu()
    return cases, left_out


def case_id(case):
    return f"{case.param.type}-{case.test}"
