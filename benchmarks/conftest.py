"""Collects one row per benchmark and prints them as a table at the end of the run."""

from __future__ import annotations

import os

# numpy's OpenBLAS starts one spinning worker per core and keeps them busy for a while
# after import (6 % of samples in one 2-core profile here): on a 2-core machine that is
# CPU taken from the engine being measured. Nothing benchmarked here uses numpy's BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
