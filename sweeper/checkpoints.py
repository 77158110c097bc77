"""Checkpoint and artifact stores: files under the state directory, or blobs in the database.

A checkpoint is a dict of plain tensors and primitives, serialized with torch.save and loaded
with torch.load(weights_only=True), so a crafted pickle cannot run code. Its sha256 goes into the
database with it; restore verifies the bytes and falls back to the previous checkpoint when the
newest is torn or missing. File names carry the full sha256 too
(`<time_ns>.<sha256>.ckpt`), so a directory scan can verify a file without the database (used
when recovering a mirrored state directory).

Files are written atomically (files.py): temp file in the same directory, fsync, rename, fsync of
the directory. A crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files
from .errors import CheckpointError, LeaseLost
from .files import sha256_file
from .queue import Lease, Queue

FILE_MODE = 0o644
DIR_MODE = 0o755
SUFFIX = ".ckpt"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


# ---------------------------------------------------------------------------------------------
# Serialization


def encode(state: dict[str, Any]) -> bytes:
    import torch  # the worker has it loaded already; keep it out of the CLI's start-up path

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def decode(data: bytes, what: str) -> dict[str, Any]:
    """Load bytes written by `encode`, refusing anything but tensors and plain containers."""
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unsupported content"
        raise CheckpointError(
            f"{what} refused: it holds objects other than tensors and plain values ({reason[:200]})",
            hint="checkpoints are loaded with weights_only=True; a file that needs more may be malicious",
        ) from None
    except Exception as exc:
        raise CheckpointError(f"{what} is not a readable checkpoint: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class RestoredCheckpoint:
    state: dict[str, Any]
    sha256: str
    seq: int | None
    source: str  # "database", "directory scan"


class CheckpointStore:
    """Checkpoints of jobs, in files under `root` (mode 'files') or in the database ('db')."""

    def __init__(
        self, queue: Queue, root: Path, mode: str = "files", *, keep: int = 2, warn: Callable[[str], None] | None = None
    ) -> None:
        if mode not in ("files", "db"):
            raise ValueError(f"unknown checkpoint store {mode!r}")
        self.queue = queue
        self.root = root
        self.mode = mode
        self.keep = keep
        self.warn = warn or (lambda msg: None)

    def job_dir(self, sweep: str, job_id: str) -> Path:
        return self.root / "checkpoints" / sweep / job_id

    def save(self, lease: Lease, sweep: str, state: dict[str, Any]) -> int:
        """Serialize, store and record a checkpoint. Raises LeaseLost if the job was taken over."""
        data = encode(state)
        digest = sha256_bytes(data)
        location: str | None = None
        blob: bytes | None = None
        path: Path | None = None
        if self.mode == "files":
            path = self.job_dir(sweep, lease.job_id) / f"{time.time_ns():020d}.{digest}{SUFFIX}"
            atomic_write(path, data)
            location = str(path.relative_to(self.root))
        else:
            blob = data
        try:
            seq, pruned = self.queue.record_checkpoint(
                lease, sha256=digest, size=len(data), location=location, blob=blob, keep=self.keep
            )
        except LeaseLost:
            if path is not None:
                path.unlink(missing_ok=True)  # a zombie leaves nothing behind
            raise
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
        for old in pruned:
            (self.root / old).unlink(missing_ok=True)
        return seq

    def restore(self, sweep: str, job_id: str, *, scan: bool = False) -> RestoredCheckpoint | None:
        """The newest checkpoint whose bytes match its sha256, or None.

        With scan=True, files in the job's checkpoint directory that the database does not know
        (written after the last database snapshot was taken) are considered too; the newest valid
        one wins.
        """
        candidates: list[tuple[int, str, str, Callable[[], bytes | None], int | None]] = []
        for rec in self.queue.list_checkpoints(job_id):
            if rec.location:
                path = self.root / rec.location
                candidates.append((_time_of(path), rec.sha256, "database", _reader(path), int(rec.name)))
            else:
                candidates.append(
                    (
                        int(rec.created_at * 1e9),
                        rec.sha256,
                        "database",
                        lambda rid=rec.id: self.queue.read_blob("checkpoints", rid),
                        int(rec.name),
                    )
                )
        if scan:
            known = {c[1] for c in candidates}
            for path, digest in scan_checkpoint_dir(self.job_dir(sweep, job_id)):
                if digest not in known:
                    candidates.append((_time_of(path), digest, "directory scan", _reader(path), None))
        candidates.sort(key=lambda c: c[0], reverse=True)
        for _, digest, source, read, seq in candidates:
            data = read()
            if data is None:
                self.warn(f"checkpoint {digest[:12]} of job {job_id} is missing; trying the previous one")
                continue
            if sha256_bytes(data) != digest:
                self.warn(
                    f"checkpoint {digest[:12]} of job {job_id} fails its sha256 (torn write?); trying the previous one"
                )
                continue
            return RestoredCheckpoint(decode(data, f"checkpoint {digest[:12]} of job {job_id}"), digest, seq, source)
        return None


def _reader(path: Path) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        try:
            return path.read_bytes()
        except OSError:
            return None

    return read


def _time_of(path: Path) -> int:
    """Checkpoint files are named <time_ns>.<sha256>.ckpt."""
    try:
        return int(path.name.split(".", 1)[0])
    except ValueError:
        return 0


def scan_checkpoint_dir(directory: Path) -> list[tuple[Path, str]]:
    """(path, sha256 from the name) for every checkpoint file in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        parts = path.name.split(".")
        if len(parts) == 3 and path.name.endswith(SUFFIX) and len(parts[1]) == 64:
            found.append((path, parts[1]))
    return sorted(found, key=lambda p: _time_of(p[0]), reverse=True)


# ---------------------------------------------------------------------------------------------
# Artifacts


class ArtifactStore:
    """Output files of jobs, recorded with their sha256 so another machine can verify them."""

    def __init__(self, queue: Queue, root: Path, mode: str = "files") -> None:
        self.queue = queue
        self.root = root
        self.mode = mode

    def put(self, lease: Lease, sweep: str, src: Path, name: str) -> dict[str, Any]:
        src = Path(src)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read artifact {src}: {exc.strerror or exc}") from None
        digest = sha256_bytes(data)
        location: str | None = None
        blob: bytes | None = None
        staged: Path | None = None
        if self.mode == "files":
            # Staged next to its place, recorded under the lease, and only then renamed into place:
            # a zombie (a worker frozen past its lease that wakes up) is refused by the record
            # before its file could replace the one that the attempt which took the job over
            # recorded.
            dest = self.root / "artifacts" / sweep / lease.job_id / name
            staged = stage(dest, data)
            location = str(dest.relative_to(self.root))
        else:
            blob = data
        try:
            self.queue.record_artifact(lease, name=name, sha256=digest, size=len(data), location=location, blob=blob)
        except BaseException:
            if staged is not None:
                staged.unlink(missing_ok=True)
            raise
        if staged is not None:
            commit_staged(staged, dest)
        return {"sha256": digest, "size": len(data), "location": location, "store": self.mode}

    def fetch(self, job_id: str, name: str, info: dict[str, Any] | None = None) -> Path:
        """A local, verified copy of an upstream job's artifact."""
        rec = next((a for a in self.queue.list_artifacts([job_id]) if a.name == name), None)
        if rec is None:
            raise CheckpointError(f"job {job_id} recorded no artifact named '{name}'")
        if info and info.get("sha256") and info["sha256"] != rec.sha256:
            raise CheckpointError(f"artifact '{name}' of job {job_id} changed since the hand-off was resolved")
        if rec.location:
            path = self.root / rec.location
            if not path.exists():
                raise CheckpointError(
                    f"artifact '{name}' of job {job_id} is a file at {path}, which this machine does not have",
                    hint="with several machines, store artifacts in the database: sweeper work --store db",
                )
        else:
            path = self.root / "cache" / "artifacts" / rec.sha256 / name
            if not path.exists() or sha256_file(path) != rec.sha256:
                data = self.queue.read_blob("artifacts", rec.id)
                if data is None:
                    raise CheckpointError(f"artifact '{name}' of job {job_id} has no stored bytes")
                atomic_write(path, data)
        if sha256_file(path) != rec.sha256:
            raise CheckpointError(
                f"artifact '{name}' of job {job_id} at {path} fails its sha256 check",
                hint="the file was modified or truncated; re-run the upstream job",
            )
        return path
