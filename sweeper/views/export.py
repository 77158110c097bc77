"""`sweeper export --csv FILE`: every job as one row, params and metrics flattened into columns.

The columns follow MLflow's own CSV download, so tools built for it (Google Facets, pandas,
a spreadsheet) read it as they are:

    id, sweep, stage, kind, status, label, attempt, failures, interruptions,
    started_at, finished_at, duration_s, error,        # ISO times (UTC); error: its summary line
    params.<dotted key>...,                             # what the job ran with: its effective params,
                                                        # the kind's defaults included (resolved
                                                        # hand-offs become the upstream job id)
    metrics.<dotted key>...                             # the job's result

Lists of scalars are written as JSON; tables inside results (lists of records, such as pruning
triplets) are left out: `sweeper show JOB --json` has them.

A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and tab or CR before one) as a
formula: `=HYPERLINK(...)` from a job's result would be a live link, `+cmd|...` a command. So a
text cell starting with one of those gets a `'` in front, as OWASP advises; a number stays a
number (`-0.5` is no formula, and a spreadsheet must sort it as one). Control characters in
text become visible escapes (views/safe_text.py). The values as they are: `--json` views, or
the Python results API.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from sweeper.errors import error_summary
from sweeper.store.results import JobRecord, flatten
from sweeper.views.safe_text import visible

FIXED = (
    "id",
    "sweep",
    "stage",
    "kind",
    "status",
    "label",
    "attempt",
    "failures",
    "interruptions",
    "started_at",
    "finished_at",
    "duration_s",
    "error",
)


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _cell(v: Any) -> Any:
    return "" if v is None else v


def spreadsheet_safe(v: Any) -> Any:
    """A cell a spreadsheet shows as a value, never runs: formulas defused, control characters visible.

    Numbers (and text that is just a number, like "-0.5") are left alone: a spreadsheet reads
    them as numbers, not formulas, and a `'` would turn them into text.
    """
    if not isinstance(v, str) or not v:
        return v
    if v.startswith(FORMULA_START) and not _NUMBER.match(v):
        v = "'" + v
    return visible(v, lines=True)


def rows(records: Iterable[JobRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """(header, rows): the fixed columns, then params.* and metrics.* in order of first appearance."""
    out: list[dict[str, Any]] = []
    params: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for j in records:
        row: dict[str, Any] = {
            "id": j.id,
            "sweep": j.sweep,
            "stage": j.stage,
            "kind": j.kind,
            "status": j.status,
            "label": j.label,
            "attempt": j.attempt,
            "failures": j.failures,
            "interruptions": j.interruptions,
            "started_at": _iso(j.started_at),
            "finished_at": _iso(j.finished_at),
            "duration_s": round(j.duration_s, 3) if j.duration_s is not None else "",
            "error": error_summary(j.error),
        }
        for k, v in j.flat_recorded().items():
            params.setdefault(k)
            row[f"params.{k}"] = _cell(v)
        for k, v in flatten(j.result).items():
            metrics.setdefault(k)
            row[f"metrics.{k}"] = _cell(v)
        out.append(row)
    header = [*FIXED, *(f"params.{k}" for k in params), *(f"metrics.{k}" for k in metrics)]
    return header, out


def write_csv_file(records: Iterable[JobRecord], path: Path) -> int:
    """Write the CSV to `path` atomically (a reader never sees half a file); returns the number of jobs."""
    from sweeper.store.statefiles import atomic_write  # CheckpointError, with a hint, when it cannot

    buf = io.StringIO()
    n = write_csv(records, buf)
    atomic_write(path, buf.getvalue().encode("utf-8"))
    return n


def write_csv(records: Iterable[JobRecord], stream: IO[str]) -> int:
    """Write the CSV; returns the number of jobs written."""
    header, data = rows(records)
    writer = csv.DictWriter(stream, fieldnames=header, restval="", lineterminator="\n")
    writer.writerow({h: spreadsheet_safe(h) for h in header})
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in data)
    return len(data)
