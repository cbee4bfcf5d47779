"""Reading text, JSONL and TSV records with every bad line reported by file and line.

``on_error="skip"`` skips a bad line and records why; ``"raise"`` stops at the first one.
Nothing is dropped silently: the report lists every skip, and its counts go into the
dataset's meta.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence


class DataError(ValueError):
    """A bad record with on_error="raise"."""


@dataclass
class Report:
    """What was read and what was skipped, and why."""

    read: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"

    def skip(self, path: Path, line: int, reason: str, on_error: str) -> None:
        msg = f"{path}:{line}: {reason}"
        if on_error == "raise":
            raise DataError(msg)
        self.skipped.append(msg)

    def summary(self, limit: int = 20) -> dict[str, Any]:
        return {"read": self.read, "skipped": len(self.skipped), "examples": self.skipped[:limit]}


def lines(path: Path, report: Report, on_error: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-empty line; undecodable lines are reported."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                report.skip(path, no, f"not UTF-8 ({e.reason} at byte {e.start})", on_error)
                continue
            if not text.strip():
                report.skip(path, no, "empty line" if not text else "blank line (whitespace only)", on_error)
                continue
            yield no, text


def json_records(path: Path, fields: Sequence[str], report: Report, on_error: str,
                 optional: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON objects, one per line, that have every field in ``fields`` as a string
    (``optional`` fields may be absent or null)."""
    for no, text in lines(path, report, on_error):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            report.skip(path, no, f"broken JSON ({e.msg} at column {e.colno})", on_error)
            continue
        if not isinstance(obj, dict):
            report.skip(path, no, "not a JSON object", on_error)
            continue
        missing = [f for f in fields if not isinstance(obj.get(f), str)]
        if missing:
            report.skip(path, no, f"missing or non-string field(s): {', '.join(missing)}", on_error)
            continue
        bad = [f for f in optional if obj.get(f) is not None and not isinstance(obj.get(f), str)]
        if bad:
            report.skip(path, no, f"non-string field(s): {', '.join(bad)}", on_error)
            continue
        report.read += 1
        yield no, obj


def records(path: Path, report: Report, on_error: str) -> Iterator[tuple[int, Any]]:
    """Any JSON value per line (the caller checks the shape)."""
    for no, text in lines(path, report, on_error):
        try:
            yield no, json.loads(text)
        except json.JSONDecodeError as e:
            report.skip(path, no, f"broken JSON ({e.msg} at column {e.colno})", on_error)
