"""File utilities: checksums, atomic writes, moving a database aside. The one place that renames.

An atomic write is: temp file in the same directory, fsync, os.replace, fsync of the directory. A
crash leaves either the old file or the new one, never half of one, and once it returns the new
one survives a power cut. Checkpoints, artifacts, result records, the state lease, the mirror's
snapshots and its origin file are all written this way.

Errors are plain OSError: callers that speak to users turn them into their own (checkpoints.py
raises CheckpointError with a hint).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

CHUNK = 1 << 20
SQLITE_COMPANIONS = ("-wal", "-shm")  # a SQLite file's write-ahead log and shared memory


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. Best effort: some filesystems cannot open or sync a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (FUSE mounts) refuse fsync on directories
    finally:
        os.close(fd)


def stage(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to a synced temporary file next to `path`; commit() puts it in place.

    The temp name starts with '.', so directory scans that skip hidden files skip it. `mode`: the
    file's permissions (default: what open() gives, i.e. 0o666 less the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def commit(tmp: Path, path: Path) -> None:
    """Rename the finished file `tmp` to `path` (same directory) and make the rename durable."""
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a mix."""
    commit(stage(path, data, mode=mode), path)


def move_aside(path: Path, aside: Path, companions: tuple[str, ...] = SQLITE_COMPANIONS) -> None:
    """Rename `path` to `aside`, taking its companion files (`<path>-wal` ...) along first."""
    for suffix in companions:
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    os.replace(path, aside)
