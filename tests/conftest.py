import os
import sys

# Tests import their shared helpers (gradient_check, helpers) as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))


def pytest_terminal_summary(terminalreporter, config):
    """The number of fuzz cases run (tests/test_fuzz.py), by kind and outcome."""
    counts = getattr(config, "caffeish_fuzz_counts", None)
    if counts:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        terminalreporter.write_line(f"fuzz cases run: {sum(counts.values())} ({detail})")
