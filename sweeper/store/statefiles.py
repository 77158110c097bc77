"""Writing files into the state directory: atomically, with the state's file modes, and with an
error that says what to do (free space, permissions) when the filesystem refuses.

Checkpoints, artifacts, quarantined files, reports and exports are all written through here; the
crash-safety itself (temp file, fsync, rename, fsync of the directory) is files.py's.
"""

from __future__ import annotations

from pathlib import Path

from sweeper import files
from sweeper.errors import CheckpointError

FILE_MODE = 0o644
DIR_MODE = 0o755


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a mix."""
    commit_staged(stage(path, data), path)


def stage(path: Path, data: bytes) -> Path:
    """Write `data` to a synced temporary file next to `path`; commit_staged() puts it in place."""
    try:
        ensure_dir(path.parent)
        return files.stage(path, data, mode=FILE_MODE)
    except OSError as exc:  # a read-only or full filesystem refuses the file itself
        raise _cannot_write(path, exc) from None


def commit_staged(tmp: Path, path: Path) -> None:
    try:
        files.commit(tmp, path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="check free space and permissions of the state directory",
    )
