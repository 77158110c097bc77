"""Checkpoint and artifact stores: files under the state directory, or blobs in the database.

A checkpoint is a dict of plain tensors and primitives, serialized with torch.save and loaded
with torch.load(weights_only=True), so a crafted pickle cannot run code. Its sha256 goes into the
database with it; restore verifies the bytes and falls back to the previous checkpoint when the
newest is torn, missing or cannot be decoded. File names carry the sequence number and the full
sha256 (`seq-<seq>.<sha256>.ckpt`), so a directory scan can order and verify a file without the
database (used when recovering a mirrored state directory).

Checkpoints are ordered by `seq`, never by a clock: the machines that write one job's checkpoints
in turn need not agree on the time. A new checkpoint's seq is one more than every seq the job has
in the database or in its directory, so a file written after the last database snapshot (mirrored
mode) still sorts after everything the database knows.

Every path built from a queue row (sweep, job id, artifact name, stored location) is checked by
statepaths.py first: a row cannot make a worker write, read or delete outside the state directory.

Files are written atomically (statefiles.py, over files.py): temp file in the same directory, fsync,
rename, fsync of the directory. A crash leaves either the old file or the new one, never half of one.

The stores see the database and a Fence, not the Queue: a worker passes `Queue.in_lease` as the
fence for its writes; a reader (the report) passes none and can only read.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sweeper.errors import CheckpointError, LeaseLost, RefusedCheckpoint, UnsafePath
from sweeper.files import sha256_file
from sweeper.store import quarantine
from sweeper.store.db import Database, add_event
from sweeper.store.db import artifacts as artifact_rows
from sweeper.store.db import checkpoints as checkpoint_rows
from sweeper.store.encoding import decode, encode
from sweeper.store.statefiles import atomic_write, commit_staged, stage
from sweeper.store.statepaths import check_name, check_sha256, inside, stored, under

if TYPE_CHECKING:
    from sweeper.store.queue import Lease

T = TypeVar("T")


class Fence(Protocol):
    """Run fn in one write transaction while `lease` still owns its job; raise LeaseLost (and commit
    nothing) once it was taken over. `Queue.in_lease` is the one implementation."""

    def __call__(self, lease: Lease, what: str, fn: Callable[[Connection], T], /) -> T: ...


SUFFIX = ".ckpt"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# The rows: what the database knows of each checkpoint and artifact. Writes go through the job's
# lease (the Fence, Queue.in_lease), so a zombie records nothing; reads ride out an outage like the writes do:
# a database restart while a job restores must not count as the job's failure.


@dataclass
class StoredBlob:
    """A checkpoint or artifact row (without its bytes unless asked)."""

    id: int
    job_id: str
    name: str
    sha256: str
    size: int
    location: str | None
    created_at: float
    attempt: int | None = None


_LIST_CHECKPOINTS = (
    sa.select(
        checkpoint_rows.c.id,
        checkpoint_rows.c.job_id,
        checkpoint_rows.c.seq,
        checkpoint_rows.c.sha256,
        checkpoint_rows.c.size,
        checkpoint_rows.c.location,
        checkpoint_rows.c.created_at,
        checkpoint_rows.c.attempt,
    )
    .where(checkpoint_rows.c.job_id == sa.bindparam("p_job"))
    .order_by(checkpoint_rows.c.seq.desc())
)


def record_checkpoint(
    fence: Fence,
    lease: Lease,
    *,
    sha256: str,
    size: int,
    location: str | None,
    blob: bytes | None,
    keep: int = 2,
    at_least: int = 1,
) -> tuple[int, list[str]]:
    """Record a checkpoint under the lease. Returns (seq, locations of pruned older files).

    seq is one more than the job's newest, and at least `at_least` (the store names files
    by seq, and may have seen newer files than the database knows: see the module docstring).
    """
    t = checkpoint_rows

    def txn(conn: Connection) -> tuple[int, list[str]]:
        newest = conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(t.c.seq), 0)).where(t.c.job_id == lease.job_id)
        ).scalar_one()
        seq = max(newest + 1, at_least)
        conn.execute(
            t.insert().values(
                job_id=lease.job_id,
                seq=seq,
                sha256=sha256,
                size=size,
                location=location,
                blob=blob,
                attempt=lease.attempt,
                created_at=time.time(),
            )
        )
        # A quarantined row (its location under quarantine/) is evidence: never pruned, never counted.
        kept = sa.or_(t.c.location.is_(None), ~t.c.location.like(f"{quarantine.AREA}/%"))
        old = conn.execute(
            sa.select(t.c.id, t.c.location)
            .where(t.c.job_id == lease.job_id, kept)
            .order_by(t.c.seq.desc())
            .offset(keep)
        ).all()
        if old:
            conn.execute(t.delete().where(t.c.id.in_([o.id for o in old])))
        add_event(
            conn,
            lease.job_id,
            "checkpointed",
            worker=lease.worker_id,
            attempt=lease.attempt,
            detail=f"seq {seq}, {size} bytes",
        )
        return seq, [o.location for o in old if o.location]

    return fence(lease, "record a checkpoint", txn)


def list_checkpoints(db: Database, job_id: str) -> list[StoredBlob]:
    """The job's checkpoint rows, newest (highest seq) first; `name` is the seq."""
    rows = db.in_read("list checkpoints", lambda conn: conn.execute(_LIST_CHECKPOINTS, {"p_job": job_id}).all())
    return [StoredBlob(r.id, r.job_id, str(r.seq), r.sha256, r.size, r.location, r.created_at, r.attempt) for r in rows]


def read_blob(db: Database, table: sa.Table, row_id: int) -> bytes | None:
    """The bytes stored in the database for row `row_id` of `table` (checkpoint_rows or artifact_rows)."""
    return db.in_read(
        f"read stored {table.name}",
        lambda conn: conn.execute(sa.select(table.c.blob).where(table.c.id == row_id)).scalar_one_or_none(),
    )


def record_artifact(
    fence: Fence, lease: Lease, *, name: str, sha256: str, size: int, location: str | None, blob: bytes | None
) -> None:
    """Record (or replace) the job's artifact `name` under the lease."""
    t = artifact_rows

    def txn(conn: Connection) -> None:
        conn.execute(t.delete().where(t.c.job_id == lease.job_id, t.c.name == name))
        conn.execute(
            t.insert().values(
                job_id=lease.job_id,
                name=name,
                sha256=sha256,
                size=size,
                location=location,
                blob=blob,
                created_at=time.time(),
            )
        )

    fence(lease, "record an artifact", txn)


def list_artifacts(db: Database, job_ids: Iterable[str]) -> list[StoredBlob]:
    """The artifact rows of these jobs, by job and name."""
    ids = list(job_ids)
    if not ids:
        return []
    t = artifact_rows
    rows = db.in_read(
        "list artifacts",
        lambda conn: conn.execute(
            sa.select(t.c.id, t.c.job_id, t.c.name, t.c.sha256, t.c.size, t.c.location, t.c.created_at)
            .where(t.c.job_id.in_(ids))
            .order_by(t.c.job_id, t.c.name)
        ).all(),
    )
    return [StoredBlob(r.id, r.job_id, r.name, r.sha256, r.size, r.location, r.created_at) for r in rows]


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class RestoredCheckpoint:
    state: dict[str, Any]
    sha256: str
    seq: int | None
    source: str  # "database", "directory scan"


class CheckpointStore:
    """Checkpoints of jobs, in files under `root` (mode 'files') or in the database ('db').
    Saving needs the fence of the job's lease; restoring does not."""

    def __init__(
        self,
        db: Database,
        root: Path,
        mode: str = "files",
        *,
        fence: Fence | None = None,
        keep: int = 2,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if mode not in ("files", "db"):
            raise ValueError(f"unknown checkpoint store {mode!r}")
        self.db = db
        self.fence = fence
        self.root = root
        self.mode = mode
        self.keep = keep
        self.warn = warn or (lambda msg: None)

    def job_dir(self, sweep: str, job_id: str) -> Path:
        """The job's checkpoint directory. Raises UnsafePath for names that would lead outside."""
        return under(self.root, "checkpoints", sweep, job_id)

    def _next_seq(self, sweep: str, job_id: str) -> int:
        known = [int(rec.name) for rec in list_checkpoints(self.db, job_id)]
        if self.mode == "files":
            known += [seq for _, _, seq in scan_checkpoint_dir(self.job_dir(sweep, job_id)) if seq is not None]
        return max(known, default=0) + 1

    def save(self, lease: Lease, sweep: str, state: dict[str, Any]) -> int:
        """Serialize, store and record a checkpoint. Raises LeaseLost if the job was taken over."""
        fence = _writer(self.fence, "checkpoint")
        data = encode(state)
        digest = sha256_bytes(data)
        location: str | None = None
        blob: bytes | None = None
        path: Path | None = None
        # Only the lease holder records checkpoints of a job (fenced), so the seq read here is the
        # one the database assigns, unless the lease is lost, when the record is refused anyway.
        next_seq = self._next_seq(sweep, lease.job_id)
        if self.mode == "files":
            path = self.job_dir(sweep, lease.job_id) / f"seq-{next_seq:09d}.{digest}{SUFFIX}"
            atomic_write(path, data)
            location = str(path.relative_to(self.root).as_posix())
        else:
            blob = data
        try:
            seq, pruned = record_checkpoint(
                fence,
                lease,
                sha256=digest,
                size=len(data),
                location=location,
                blob=blob,
                keep=self.keep,
                at_least=next_seq,
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
            try:
                stored(self.root, old, "checkpoints", lease.job_id, sweep).unlink(missing_ok=True)
            except UnsafePath as exc:
                self.warn(f"not deleting an old checkpoint: {exc.message}")
        return seq

    def restore(self, sweep: str, job_id: str, *, scan: bool = False) -> RestoredCheckpoint | None:
        """The newest checkpoint (by seq) whose bytes match their sha256 and decode, or None.

        A checkpoint that is missing, torn or stored at an unsafe location is skipped with a
        warning, and the previous one is tried. One whose bytes match its sha256 but that is not a
        torch.save dict of plain values is refused as possibly malicious: moved to quarantine/
        (quarantine.py), its row kept and flagged, an event recorded, and the previous one tried.
        When no checkpoint is left and one was refused (now, or in an earlier attempt that no
        `retry --from-scratch` has acknowledged), this raises RefusedCheckpoint naming the file:
        a job must not quietly start over when someone tampered with its checkpoints.

        With scan=True, files in the job's checkpoint directory that the database does not know
        (written after the last database snapshot was taken) are considered too.
        """
        candidates: list[_Candidate] = []
        for rec in list_checkpoints(self.db, job_id):
            seq = int(rec.name)
            if quarantine.is_quarantined(rec.location):
                continue  # refused before: kept as evidence, never loaded
            name = f"seq-{seq:09d}.{rec.sha256}{SUFFIX}"
            path: Path | None = None
            if rec.location:
                try:
                    path = stored(self.root, rec.location, "checkpoints", job_id, sweep)
                except UnsafePath as exc:
                    self.warn(f"skipping checkpoint seq {seq}: {exc.message}")
                    continue
                read = _reader(path)
            else:
                read = functools.partial(read_blob, self.db, checkpoint_rows, rec.id)
            name = path.name if path is not None else name  # a file keeps its own name in quarantine/
            candidates.append(_Candidate((seq, 1, 0), rec.sha256, "database", read, seq, rec.id, path, name))
        if scan:
            known = {c.sha256 for c in candidates}
            for path, digest, file_seq in scan_checkpoint_dir(self.job_dir(sweep, job_id)):
                if digest in known:
                    continue
                try:
                    inside(self.root, path, f"checkpoint file {path.name} of job {job_id}")
                except UnsafePath as exc:
                    self.warn(f"skipping a checkpoint file: {exc.message}")
                    continue
                # A file named before seqs were (<time_ns>.<sha256>.ckpt) sorts after every
                # numbered one; among themselves such files keep their old order.
                order = (file_seq, 0, 0) if file_seq is not None else (-1, 0, _legacy_time(path))
                candidates.append(
                    _Candidate(order, digest, "directory scan", _reader(path), file_seq, None, path, path.name)
                )
        candidates.sort(key=lambda c: c.order, reverse=True)
        refused: list[RefusedCheckpoint] = []
        for c in candidates:
            what = f"checkpoint {c.sha256[:12]} of job {job_id}"
            data = c.read()
            if data is None:
                self.warn(f"{what} is missing; trying the previous one")
                continue
            if sha256_bytes(data) != c.sha256:
                self.warn(f"{what} fails its sha256 (torn write?); trying the previous one")
                continue
            try:
                state = decode(data, what)
            except RefusedCheckpoint as exc:
                refused.append(self._quarantine(sweep, job_id, c, data, exc.reason))
                self.warn(f"{refused[-1].message}; trying the previous one")
                continue
            return RestoredCheckpoint(state, c.sha256, c.seq, c.source)
        if refused:
            first = refused[0]
            raise RefusedCheckpoint(
                first.what,
                first.reason,
                sha256=first.sha256,
                quarantine=first.quarantine,
                job_id=job_id,
                more=len(refused) - 1,
            )
        earlier = quarantine.pending_refusal(self.db, job_id)
        if earlier is not None:
            raise RefusedCheckpoint(
                f"job {job_id}: its checkpoints",
                f"refused in an earlier attempt ({earlier})",
                job_id=job_id,
            )
        return None

    def _quarantine(self, sweep: str, job_id: str, c: _Candidate, data: bytes, reason: str) -> RefusedCheckpoint:
        """Keep a refused checkpoint aside (quarantine.py) and say what was kept where."""
        # A blob is named as its file would be (seq-<seq>.<sha256>.ckpt): the name it gets in quarantine/.
        what = f"checkpoint {c.name} of job {job_id}" + (" (a database blob)" if c.path is None else "")
        try:
            dest = quarantine.keep(self.root, sweep, job_id, c.name, path=c.path, data=data)
            place = dest.relative_to(self.root).as_posix()
        except (OSError, CheckpointError) as exc:  # never lose the refusal itself over this
            place = None
            self.warn(f"could not move {what} to quarantine: {getattr(exc, 'message', exc)}")
        detail = f"{what}: {reason}; sha256 {c.sha256}" + (f"; kept in {place}" if place else "")
        quarantine.record(self.db, job_id, c.row_id if place else None, place or "", detail)
        return RefusedCheckpoint(what, reason, sha256=c.sha256, quarantine=place, job_id=job_id)


def _writer(fence: Fence | None, what: str) -> Fence:
    if fence is None:  # a mistake in sweeper's code, not the user's: a reader's store was asked to write
        raise TypeError(f"this {what} store has no fence: it was opened to read only")
    return fence


@dataclass(frozen=True)
class _Candidate:
    order: tuple[int, int, int]  # (seq, recorded in the database, legacy file time): larger is newer
    sha256: str
    source: str
    read: Callable[[], bytes | None]
    seq: int | None
    row_id: int | None = None  # its checkpoint row; None for a file found by the directory scan
    path: Path | None = None  # its file; None for a database blob
    name: str = ""  # its file name (the one it would have, for a blob)


def _reader(path: Path) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        try:
            return path.read_bytes()
        except OSError:
            return None

    return read


def _legacy_time(path: Path) -> int:
    try:
        return int(path.name.split(".", 1)[0])
    except ValueError:
        return 0


def scan_checkpoint_dir(directory: Path) -> list[tuple[Path, str, int | None]]:
    """(path, sha256, seq) from the names of the checkpoint files in `directory`, newest first.

    seq is None for a file named by an older version (`<time_ns>.<sha256>.ckpt`).
    """
    if not directory.is_dir():
        return []
    found: list[tuple[Path, str, int | None]] = []
    for path in directory.iterdir():
        parts = path.name.split(".")
        if len(parts) != 3 or not path.name.endswith(SUFFIX) or len(parts[1]) != 64:
            continue
        head = parts[0]
        # At most 9 digits: a seq goes into a 32-bit INTEGER column on PostgreSQL.
        if head.startswith("seq-") and head[4:].isdigit() and len(head) <= 4 + 9:
            found.append((path, parts[1], int(head[4:])))
        elif head.isdigit():
            found.append((path, parts[1], None))
    return sorted(found, key=lambda p: (p[2] if p[2] is not None else -1, _legacy_time(p[0])), reverse=True)


# ---------------------------------------------------------------------------------------------
# Artifacts


class ArtifactStore:
    """Output files of jobs, recorded with their sha256 so another machine can verify them.
    Putting one needs the fence of the job's lease; fetching does not (the report has none)."""

    def __init__(self, db: Database, root: Path, mode: str = "files", *, fence: Fence | None = None) -> None:
        self.db = db
        self.fence = fence
        self.root = root
        self.mode = mode

    def put(self, lease: Lease, sweep: str, src: Path, name: str) -> dict[str, Any]:
        fence = _writer(self.fence, "artifact")
        src = Path(src)
        check_name(name, f"artifact name of job {lease.job_id}")
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
            dest = under(self.root, "artifacts", sweep, lease.job_id, name)
            staged = stage(dest, data)
            location = dest.relative_to(self.root).as_posix()
        else:
            blob = data
        try:
            record_artifact(fence, lease, name=name, sha256=digest, size=len(data), location=location, blob=blob)
        except BaseException:
            if staged is not None:
                staged.unlink(missing_ok=True)
            raise
        if staged is not None:
            commit_staged(staged, dest)
        return {"sha256": digest, "size": len(data), "location": location, "store": self.mode}

    def fetch(self, job_id: str, name: str, info: dict[str, Any] | None = None) -> Path:
        """A local, verified copy of an upstream job's artifact."""
        rec = next((a for a in list_artifacts(self.db, [job_id]) if a.name == name), None)
        if rec is None:
            raise CheckpointError(f"job {job_id} recorded no artifact named '{name}'")
        if info and info.get("sha256") and info["sha256"] != rec.sha256:
            raise CheckpointError(f"artifact '{name}' of job {job_id} changed since the hand-off was resolved")
        if rec.location:
            path = stored(self.root, rec.location, "artifacts", job_id)
            if not path.exists():
                raise CheckpointError(
                    f"artifact '{name}' of job {job_id} is a file at {path}, which this machine does not have",
                    hint="with several machines, store artifacts in the database: sweeper work --store db",
                )
        else:
            digest = check_sha256(rec.sha256, f"artifact '{name}' of job {job_id}")
            cache = self.root / "cache" / "artifacts" / digest / check_name(name, f"artifact name of job {job_id}")
            path = inside(self.root, cache, f"the cached copy of artifact '{name}' of job {job_id}")
            if not path.exists() or sha256_file(path) != rec.sha256:
                data = read_blob(self.db, artifact_rows, rec.id)
                if data is None:
                    raise CheckpointError(f"artifact '{name}' of job {job_id} has no stored bytes")
                atomic_write(path, data)
        if sha256_file(path) != rec.sha256:
            raise CheckpointError(
                f"artifact '{name}' of job {job_id} at {path} fails its sha256 check",
                hint="the file was modified or truncated; re-run the upstream job",
            )
        return path
