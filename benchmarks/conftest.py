"""Collects one row per benchmark and prints them as a table at the end of the run."""

from __future__ import annotations

ROWS: list[dict] = []


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    tr = terminalreporter
    keys = list(ROWS[0])
    tr.write_sep("=", "linly-engine kernel benchmarks")
    tr.write_line(" | ".join(keys))
    for row in ROWS:
        tr.write_line(" | ".join(str(row[k]) for k in keys))
