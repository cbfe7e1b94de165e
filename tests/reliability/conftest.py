"""The fault-injection suite prints the figures its tests measured at the end of the run."""
from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    from tests.reliability.helpers import FIGURES

    if FIGURES:
        terminalreporter.write_sep("=", "reliability figures (measured by the tests that ran)")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"  {name:<26} {value:>8,}")
