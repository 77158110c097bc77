"""Where a command writes what it made (export's CSV file, report's directory), checked up front.

A destination that cannot work is a usage error (exit 2) before the queue is read, naming the
option and the path. Nothing is created on the way: a CSV path whose directory is missing is a
typo more often than a wish for new directories, and it would otherwise vanish into one.
"""

from __future__ import annotations

import os
from pathlib import Path

from sweeper.errors import UsageError


def csv_file(path: str, option: str = "--csv") -> Path | None:
    """The file to write, or None for '-' (stdout). Its directory must exist and be writable."""
    if path == "-":
        return None
    target = Path(path).expanduser()
    folder = target.parent
    if target.is_dir():
        raise UsageError(
            f"{option} {path} is a directory; it takes the CSV file to write",
            hint=f"e.g. {option} {target / 'jobs.csv'}",
        )
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise UsageError(
            f"{option} {path}: the directory {folder} {what}",
            hint=f"create it first (mkdir -p {folder}), or write to an existing directory; '-' writes to stdout",
        )
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{option} {path}: {folder} is not writable here", hint="write the CSV somewhere else")
    return target


def report_dir(path: Path, option: str = "--out") -> Path:
    """The directory for report.md and its figures: new (it is created, parents too) or existing."""
    target = path.expanduser()
    if target.exists() and not target.is_dir():
        raise UsageError(
            f"{option} {path} is a file; the report is a directory (report.md and its PNG figures)",
            hint=f"give a new or existing directory, e.g. {option} {target.with_name(target.name + '-report')}",
        )
    existing = next((p for p in [target, *target.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a directory", hint="give another directory")
    if existing is not None and not os.access(existing, os.W_OK):
        raise UsageError(f"{option} {path}: {existing} is not writable here", hint="write the report somewhere else")
    return target
