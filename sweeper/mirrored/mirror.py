"""Mirrored mode: the live SQLite database on local disk, consistent snapshots on the network mount.

SQLite on a network filesystem is unsafe (mounts.py says which ones). When the queue database
would live on one, every command works on a local copy instead, under
`$SWEEPER_MIRROR_DIR/sweeper-<hash>` (default: the system temp dir), and:

- on start, the local copy is restored from the newest snapshot in `<dir>/snapshots/` whose
  sha256 (part of its file name) matches its bytes; one that does not is skipped with a warning;
- snapshots are taken with SQLite's online backup API (a consistent copy while writers carry on),
  written to a temp file on the mount, fsynced and renamed into place as
  `<stem>.<time_ns>.<sha256>.<session>.db`. The checksum lives in the name, so a snapshot is one
  file: a network mount cannot publish it without its checksum, or the other way round. The
  session that wrote it is in the name too (older versions wrote `<stem>.<time_ns>.<sha256>.db`);
- a session never buries or deletes another session's snapshot: before every push it checks that
  the lease still names it and that no snapshot appeared on the mount that it did not write since it
  took the lease (either means two sessions at once: it stops without pushing, SnapshotConflict).
  It deletes only its own older snapshots and the ones its starting point superseded, keeping 2;
- the lease names the newest snapshots, and a released lease the final ones: a new session waits
  (up to SWEEPER_SNAPSHOT_SYNC_WAIT_S, 120 s) for that snapshot or a newer one to reach it through
  Drive instead of restoring an older one;
- a `sweeper work` session snapshots from a background thread after every job state change and
  checkpoint (it watches the events table, so writes of worker processes count too) and at least
  every `snapshot_every_s` while anything changes; short commands (enqueue, retry, cancel) push
  one snapshot when they finish; a clean exit pushes a final one;
- a lease file (statelease.py) keeps a second machine off the same state.

MLflow's default store (`sqlite:///<state>/mlflow.db`) has the same problem and gets the same
treatment: its live file is local and it is snapshotted alongside the queue, but at most every
`snapshot_every_s` (and at exit): it grows with every metric point, and every snapshot is a new
file to upload (Drive keeps the deleted ones in its trash). Losing its last seconds costs a few
metric points in the MLflow UI, not work.

Tuning: SWEEPER_SNAPSHOT_EVERY_S (30), SWEEPER_SNAPSHOT_MIN_GAP_S (1), SWEEPER_STATE_LEASE_S (180).

Checkpoints, artifacts and result records are written to the mount directly (each atomically);
recovery.py explains how they cover writes that missed the last snapshot.

Fault injection for tests: SWEEPER_TEST_SNAPSHOT_DELAY_S makes every snapshot write pause (in
chunks) for that many seconds, as a slow network mount would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from sweeper.config import Settings, default_tracking_uri
from sweeper.errors import StateLocked, UsageError
from sweeper.files import atomic_write, commit, move_aside, sha256_file
from sweeper.mirrored.mounts import Verdict, check, should_mirror
from sweeper.mirrored.statelease import DEFAULT_LEASE_S, Holder, LeaseHeld, LeaseWait, StateLease
from sweeper.store.db import sqlite_path

SNAPSHOT_DIR = "snapshots"
KEEP = 2
CHUNK = 1 << 16
DEFAULT_SNAPSHOT_EVERY_S = 30.0
DEFAULT_MIN_GAP_S = 1.0  # Drive uploads every new file: do not push more than once a second
DEFAULT_SYNC_WAIT_S = 120.0  # how long a new session waits for the snapshot the lease names


class SnapshotConflict(StateLocked):
    """A snapshot that this session did not write appeared after it took the lease."""


class SnapshotNotSynced(StateLocked):
    """The snapshot the last session's lease names has not reached this machine yet."""


Access = Literal["read", "write", "work"]
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _copy(src: Path, dst: Path, *, delay_s: float = 0.0) -> str:
    """Copy src to dst (fsynced) and return the sha256 of the bytes copied."""
    h = hashlib.sha256()
    size = src.stat().st_size
    pause = delay_s / max(1, -(-size // CHUNK)) if delay_s else 0.0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for chunk in iter(lambda: fin.read(CHUNK), b""):
            h.update(chunk)
            fout.write(chunk)
            if pause:
                fout.flush()
                time.sleep(pause)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def _install(tmp: Path, dest: Path) -> None:
    """Replace the local database `dest` by `tmp`, dropping its -wal/-shm (they belong to the old file)."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{dest}{suffix}")
    commit(tmp, dest)


def backup(src: Path, dest: Path) -> None:
    """A consistent copy of the live database `src` into a new file `dest` (SQLite backup API).

    One backup step reads every page inside one read transaction, so the copy is a single moment
    of the database even while workers write (in WAL mode they are not blocked by it).
    """
    source = sqlite3.connect(f"file:{src}?mode=rw", uri=True, timeout=60)
    try:
        target = sqlite3.connect(str(dest))
        try:
            # `dest` is a scratch file: its durability comes from the fsync of the copy on the mount.
            # Without this, SQLite fsyncs it twice, which costs more than everything else together.
            target.execute("PRAGMA synchronous=OFF")
            source.backup(target)
            # A self-contained file in rollback mode: nothing else is needed to read it.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        source.close()


# ---------------------------------------------------------------------------------------------
# Snapshots of one database file


@dataclass(frozen=True)
class Snapshot:
    path: Path
    time_ns: int
    sha256: str
    session: str = ""  # the session that wrote it ("" in names written before sessions were named)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def taken_at(self) -> float:
        return self.time_ns / 1e9


class SnapshotChain:
    """The snapshots of `remote` (a database file that must not be live on its mount)."""

    def __init__(self, remote: Path, *, keep: int = KEEP) -> None:
        self.remote = remote
        self.dir = remote.parent / SNAPSHOT_DIR
        self.stem = remote.stem
        self.keep = keep

    def parse(self, name: str) -> Snapshot | None:
        """The snapshot a file name describes, None for any other file."""
        parts = name.rsplit(".", 4)
        if len(parts) == 5 and parts[0] == self.stem and parts[4] == "db" and _is_tag(parts[3]):
            ns, digest, session = parts[1], parts[2], parts[3]
        else:
            parts = name.rsplit(".", 3)
            if len(parts) != 4 or parts[0] != self.stem or parts[3] != "db":
                return None
            ns, digest, session = parts[1], parts[2], ""
        if ns.isdigit() and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            return Snapshot(self.dir / name, int(ns), digest, session)
        return None

    def list(self) -> list[Snapshot]:
        """Snapshots by name, newest first (their checksums are not verified here)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = [snap for snap in map(self.parse, names) if snap is not None]
        return sorted(found, key=lambda s: s.time_ns, reverse=True)

    def push(
        self,
        local: Path,
        scratch: Path,
        *,
        unless_sha: str | None = None,
        session: str = "",
        known: frozenset[str] | set[str] = frozenset(),
        superseded_ns: int = -1,
    ) -> Snapshot | None:
        """Snapshot the live `local` database, as `session`. None when its content equals `unless_sha`.

        Every snapshot on the mount must be one `session` wrote or one in `known` (there when it took
        the lease); any other one was pushed by another session since, and pushing over it would
        bury it: SnapshotConflict. Old snapshots are deleted only if `session` wrote them or they
        are `known` and no newer than `superseded_ns` (what the session started from).
        """
        token = secrets.token_hex(4)
        copy = scratch / f".{self.stem}.{token}.backup"
        try:
            backup(local, copy)
            digest = sha256_file(copy)
            if digest == unless_sha:
                return None
            self.dir.mkdir(parents=True, exist_ok=True)
            existing = self.list()
            foreign = [s for s in existing if s.name not in known and not (session and s.session == session)]
            if foreign:
                raise SnapshotConflict(
                    f"snapshot {foreign[0].path} was written by "
                    + (f"session {foreign[0].session}" if foreign[0].session else "an older sweeper")
                    + " after this session took the lease: two sessions have worked on this state at once",
                    hint="this session stops without pushing, so that neither buries the other's snapshot. Run the "
                    "command again: it continues from the newest snapshot (checkpoints and results on the mount "
                    "are recovered). To run several machines at once, use a PostgreSQL queue",
                )
            # Names order snapshots; never go below the newest one, even with a clock behind.
            ns = max(time.time_ns(), existing[0].time_ns + 1 if existing else 0)
            tag = f".{session}" if session else ""
            final = self.dir / f"{self.stem}.{ns:020d}.{digest}{tag}.db"
            tmp = self.dir / f".{self.stem}.{token}.tmp"
            try:
                _copy(copy, tmp, delay_s=_test_delay())
                commit(tmp, final)  # renamed into place, and the directory synced
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            mine = [
                s
                for s in existing
                if (session and s.session == session) or (s.name in known and s.time_ns <= superseded_ns)
            ]
            for old in mine[self.keep - 1 :]:
                with contextlib.suppress(OSError):
                    os.unlink(old.path)
            return Snapshot(final, ns, digest, session)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(copy)

    def restore(self, dest: Path, warn: Log, *, at_least_ns: int = 0) -> Snapshot | None:
        """Copy the newest snapshot that passes its checksum (and is not older than at_least_ns)
        to `dest`; None when there is none."""
        for snap in self.list():
            if snap.time_ns < at_least_ns:
                break
            tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.restore")
            try:
                digest = _copy(snap.path, tmp)
            except OSError as exc:
                warn(f"warning: cannot read snapshot {snap.path}: {exc.strerror or exc}; trying the previous one")
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                continue
            if digest != snap.sha256:
                warn(
                    f"warning: snapshot {snap.path} fails its sha256 check (cut short by a crash, or not fully "
                    "uploaded yet); skipping it and using the previous one"
                )
                os.unlink(tmp)
                continue
            _install(tmp, dest)
            return snap
        return None

    def clean_temp(self) -> None:
        """Remove temp files of snapshot writes that a crash cut short (call while holding the lease)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                if name.startswith(f".{self.stem}.") and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(self.dir / name)


def _is_tag(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def _test_delay() -> float:
    try:
        return float(os.environ.get("SWEEPER_TEST_SNAPSHOT_DELAY_S") or 0.0)
    except ValueError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# The local side


def local_dir_for(remote_db: Path) -> Path:
    """Where the live copy of `remote_db` lives on this machine: <base>/sweeper-<hash of its path>."""
    base = Path(os.path.abspath(Path(os.environ.get("SWEEPER_MIRROR_DIR") or tempfile.gettempdir()).expanduser()))
    digest = hashlib.sha256(str(remote_db).encode()).hexdigest()[:12]
    return base / f"sweeper-{digest}"


def private_dir(path: Path) -> Path:
    """Create `path` for this user only, and refuse one that someone else could have planted
    (its name is predictable, and it usually sits in the shared /tmp)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise UsageError(
            f"{path}, the local copy of the mirrored state, is not a private directory of this user",
            hint="remove it, or set SWEEPER_MIRROR_DIR to a directory of your own",
        )
    return path


@dataclass
class MirroredDb:
    name: str  # "queue" or "mlflow"
    remote: Path  # where the file would be on the mount
    local: Path  # the live file on local disk
    chain: SnapshotChain
    restored: Snapshot | None = None  # what this session started from (None: a local copy or nothing)
    # MLflow's store grows with every metric point and matters less for recovery than the queue:
    # it is pushed at most this often (and at exit), which keeps uploads and Drive's trash small.
    min_interval_s: float = 0.0
    last_push: float = float("-inf")  # time.monotonic() of its last push
    # The snapshots on the mount when this session took the lease: any other one that appears later
    # and that this session did not write was pushed by another session (see SnapshotChain.push).
    known: frozenset[str] = frozenset()
    base_ns: int = -1  # time_ns of the snapshot this session started from: older known ones may go

    @property
    def url(self) -> str:
        return f"sqlite:///{self.local}"


class Origin:
    """`origin.json` in the local dir: the snapshot each local file last matched (pushed or restored).

    If the newest snapshot on the mount is still that one, nobody else has worked on the state
    since, and the local file (which may hold changes a crash kept from being pushed) is kept.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, name: str) -> dict[str, str]:
        return self.read().get(name) or {}

    def set(self, name: str, snap: Snapshot | None) -> None:
        with self._lock:
            data = self.read()
            data[name] = {"snapshot": snap.name, "sha256": snap.sha256} if snap else {}
            atomic_write(self.path, json.dumps(data, indent=1).encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# A session


@dataclass
class StateSession:
    """What a command works with. Not mirrored: the settings as given."""

    settings: Settings
    mirrored: bool = False
    verdict: Verdict | None = None
    lineage: str | None = None
    notes: list[str] = field(default_factory=list)  # where the data came from (status prints them)


class MirroredState:
    """One command's use of mirrored state: prepare the local copies, push snapshots, hand back."""

    def __init__(
        self,
        settings: Settings,
        verdict: Verdict,
        *,
        log: Log = _stderr,
        lease_s: float = DEFAULT_LEASE_S,
        snapshot_every_s: float = DEFAULT_SNAPSHOT_EVERY_S,
        min_gap_s: float = DEFAULT_MIN_GAP_S,
        on_lost: Callable[[], None] | None = None,
        sync_wait_s: float = DEFAULT_SYNC_WAIT_S,
    ) -> None:
        remote_queue = verdict.path  # the queue file, absolute (see plan())
        self.settings = settings
        self.verdict = verdict
        self.log = log
        self.local_dir = private_dir(local_dir_for(remote_queue))
        self.origin = Origin(self.local_dir / "origin.json")
        self.dbs = [MirroredDb("queue", remote_queue, self.local_dir / remote_queue.name, SnapshotChain(remote_queue))]
        remote_mlflow = sqlite_path(settings.tracking_uri)
        if remote_mlflow is not None and settings.tracking_uri == default_tracking_uri(settings.state_dir):
            self.dbs.append(
                MirroredDb(
                    "mlflow",
                    remote_mlflow,
                    self.local_dir / remote_mlflow.name,
                    SnapshotChain(remote_mlflow),
                    min_interval_s=snapshot_every_s,
                )
            )
        self.lease = StateLease(
            remote_queue.with_suffix(".lease"), self.local_dir / "lease.lock", command="?", duration_s=lease_s
        )
        self.snapshot_every_s = snapshot_every_s
        self.min_gap_s = min_gap_s
        self.sync_wait_s = sync_wait_s
        self.on_lost = on_lost
        self.lost = False
        self.exclusive = False
        self.tag = ""  # the session whose lease covers this command's pushes (its own or the one it shares)
        self.started = False  # a command refused (or interrupted while waiting) pushes nothing at close
        self.access: Access = "read"
        self._push_lock = threading.Lock()
        self._temp: list[Path] = []
        self.snapshotter: Snapshotter | None = None
        self.session = StateSession(settings, mirrored=True, verdict=verdict)

    @property
    def queue(self) -> MirroredDb:
        return self.dbs[0]

    # -- start -------------------------------------------------------------------------------

    def start(
        self, access: Access, command: str, *, take_over: bool = False, wait: LeaseWait | None = None
    ) -> StateSession:
        """Set up the local copies. With `wait`, a live lease of another session is waited out
        (with a countdown) instead of refused."""
        self.access = access
        self.lease.me = replace(self.lease.me, command=command)
        if access == "read":
            self._start_read()
        else:
            while True:
                try:
                    self._start_write(access, take_over)
                    break
                except LeaseHeld as exc:
                    if wait is None:
                        raise
                    wait.pause(exc.holder, what="continues" if access == "work" else f"runs `sweeper {command}`")
            if wait is not None:
                wait.done(f"the state lease is free: session {self.lease.me.session} took it")
        self.started = True
        tracking_uri = self.dbs[1].url if len(self.dbs) > 1 else self.settings.tracking_uri
        self.session.settings = replace(self.settings, db_url=self.queue.url, tracking_uri=tracking_uri)
        return self.session

    def _start_read(self) -> None:
        with self.lease.lock:
            holder = self.lease.read()
            live_here = holder is not None and holder.is_live() and holder.on_this_machine()
            if holder is not None and holder.is_live() and not live_here:
                self.session.notes.append(
                    f"{holder.describe()} is working on this state; this view is as of its last snapshot"
                )
            for db in self.dbs:
                if live_here or self._local_is_current(db):
                    continue
                # A private copy, so that reading never disturbs the local copy of a later session.
                tmp = self.local_dir / f".view-{secrets.token_hex(4)}-{db.local.name}"
                snap = db.chain.restore(tmp, self.log)
                if snap is not None:
                    self._temp.append(tmp)
                    db.local, db.restored = tmp, snap
                elif db.local.exists():
                    continue
                elif db.remote.exists():  # a database used in place before mirrored mode
                    backup(db.remote, tmp)
                    self._temp.append(tmp)
                    db.local = tmp
                else:
                    db.local = db.remote  # nothing anywhere: let the open fail with its usual message
        q = self.queue
        if q.restored is not None:
            taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(q.restored.taken_at))
            self.session.notes.append(
                f"mirrored state: snapshot {q.restored.name[:40]}... taken {taken} "
                f"({time.time() - q.restored.taken_at:.0f}s ago) in {q.chain.dir}"
            )
        elif q.local != q.remote:
            self.session.notes.append(f"mirrored state: live copy {q.local} (snapshots in {q.chain.dir})")

    def _local_is_current(self, db: MirroredDb, at_least_ns: int = 0) -> bool:
        """The local file exists and the newest snapshot is the one it last matched (and not older
        than what the last lease names)."""
        if not db.local.exists():
            return False
        snaps = db.chain.list()
        mark = self.origin.get(db.name).get("snapshot")
        if not snaps:
            return not mark and not at_least_ns  # never pushed (a first session that crashed early)
        return mark == snaps[0].name and snaps[0].time_ns >= at_least_ns

    def _start_write(self, access: Access, take_over: bool) -> None:
        previous = None
        with self.lease.lock:
            holder = self.lease.read()
            if access == "write" and holder is not None and holder.is_live() and holder.on_this_machine():
                # A short command next to a live session on this machine: share its local copy; its
                # pushes are made in that session's name (and checked against its lease).
                self.session.notes.append(f"sharing the local copy of {holder.describe()}")
                self.tag = holder.session
                for db in self.dbs:
                    db.known = frozenset(s.name for s in db.chain.list())
            else:
                previous = self.lease.acquire(take_over=take_over)
                if take_over and previous is not None and previous.is_live():
                    self.log(f"taking over the state from {previous.describe()} (--take-over)")
                self.exclusive = True
                self.tag = self.lease.me.session
                predecessor = self.lease.predecessor
                try:
                    for db in self.dbs:
                        db.chain.clean_temp()
                        required = predecessor.snapshots.get(db.name) if predecessor else None
                        self._prepare(db, required, take_over=take_over)
                except BaseException:
                    self.lease.release()  # nothing was pushed: hand the lease back as it was found
                    raise
                # Name the starting point at once: a crash before the first push still tells the
                # next session which snapshot to wait for.
                self.lease.renew(self.newest_snapshots())
            self._open_queue(previous if self.exclusive else None)

    def newest_snapshots(self) -> dict[str, str]:
        """The snapshot each local file last matched (pushed by any process of this session, or
        restored): what the lease names."""
        marks = self.origin.read()
        return {db.name: marks[db.name]["snapshot"] for db in self.dbs if (marks.get(db.name) or {}).get("snapshot")}

    def _prepare(self, db: MirroredDb, required: str | None, *, take_over: bool = False) -> None:
        """Make db.local the state to continue from (called while holding the lease).

        `required` is the snapshot the last session's lease names: restore it or a newer one. Drive
        can show a file written on another machine a minute late, so wait for it (up to sync_wait_s)
        rather than restore an older snapshot, whose next push would bury the newer one."""
        need = db.chain.parse(required) if required else None
        at_least = need.time_ns if need is not None else 0
        deadline = time.monotonic() + self.sync_wait_s
        warned: set[str] = set()

        def warn_once(line: str) -> None:
            if line not in warned:
                warned.add(line)
                self.log(line)

        while True:
            if self._local_is_current(db, at_least):
                break
            snap = db.chain.restore(db.local, warn_once, at_least_ns=at_least)
            if snap is not None:
                db.restored = snap
                self.origin.set(db.name, snap)
                break
            if need is None:
                self._prepare_without_snapshot(db)
                break
            if time.monotonic() >= deadline:
                present = any(s.name == need.name for s in db.chain.list())
                if not (present or take_over):
                    raise SnapshotNotSynced(
                        f"the last session's lease names {db.name} snapshot {need.name}, which has not reached "
                        f"{db.chain.dir} after {self.sync_wait_s:g}s",
                        hint="Google Drive has not synced it to this machine yet: run the command again in a minute. "
                        "Starting from an older snapshot would bury the newer one; if that snapshot is gone for "
                        "good, --take-over starts from the newest intact one",
                    )
                # A damaged file holds no state to lose (a slow upload would have healed by now); it is
                # kept on the mount, and the newest intact snapshot is used.
                self.log(
                    f"warning: {db.name} snapshot {need.name[:40]}..., named by the last session's lease, "
                    + ("still fails its sha256 check" if present else "never arrived (--take-over)")
                    + f" after {self.sync_wait_s:g}s; continuing from the newest intact snapshot"
                )
                need, at_least = None, 0
                continue
            warn_once(
                f"waiting for {db.name} snapshot {need.name[:40]}... (named by the last session's lease) to reach "
                f"{db.chain.dir} intact; Drive can take a minute"
            )
            time.sleep(min(1.0, self.sync_wait_s / 10))
        mark = db.chain.parse(self.origin.get(db.name).get("snapshot") or "")
        db.base_ns = mark.time_ns if mark is not None else -1
        db.known = frozenset(s.name for s in db.chain.list())

    def _prepare_without_snapshot(self, db: MirroredDb) -> None:
        """No snapshot is required and none is usable: start from what there is, or refuse."""
        if db.chain.list():
            # Every snapshot failed its checksum. Starting empty would bury them under new ones.
            if db.local.exists():
                self.log(f"warning: no {db.name} snapshot in {db.chain.dir} is intact; keeping the local copy")
                return
            if db.name == "queue":
                raise UsageError(
                    f"no snapshot of the queue in {db.chain.dir} passes its sha256 check",
                    hint="if Drive is still syncing, wait a minute and run the command again; to start over, "
                    "move that directory away",
                )
            self.log(f"warning: no {db.name} snapshot in {db.chain.dir} is intact; starting an empty one")
            self.origin.set(db.name, None)
            return
        if db.local.exists():
            # Snapshots existed once (the origin names one) but are all gone or unreadable.
            aside = db.local.with_name(f"{db.local.name}.orphaned-{int(time.time())}")
            self.log(
                f"warning: no valid {db.name} snapshot in {db.chain.dir}; starting from an empty database "
                f"(the old local copy is kept at {aside})"
            )
            move_aside(db.local, aside)
        if db.remote.exists():
            # A database used directly on the mount before mirrored mode: import it once.
            self.log(f"importing {db.remote} into mirrored mode (snapshots will go to {db.chain.dir})")
            tmp = db.local.with_name(f".{db.local.name}.import")
            backup(db.remote, tmp)
            _install(tmp, db.local)
        self.origin.set(db.name, None)

    def _open_queue(self, previous: Holder | None) -> None:
        """Create the schema, fix the lineage and, for a new exclusive session, recover orphans."""
        from sweeper.mirrored.recovery import ensure_lineage, release_orphans
        from sweeper.store.db import open_database

        db = open_database(self.queue.url, create=True)
        try:
            self.session.lineage = ensure_lineage(db)
            if self.exclusive:
                unclean = previous is not None
                snap = self.queue.restored
                rec = release_orphans(
                    db,
                    snapshot=snap.name if snap else None,
                    snapshot_time=snap.taken_at if snap else None,
                    previous=previous.who() if previous is not None else None,
                    unclean=unclean,
                )
                if rec is not None:
                    self.log(f"recovery: {rec.summary()}")
        finally:
            db.dispose()

    # -- while running -----------------------------------------------------------------------

    def push(self, *, force: bool = False) -> list[Snapshot]:
        """Snapshot every mirrored database that changed since its last snapshot (MLflow's store
        only if its min_interval_s has passed, unless force).

        Raises StateLocked when the lease no longer names this session, or SnapshotConflict when
        another session pushed a snapshot: then nothing is written."""
        if self.lost:
            return []
        pushed = []
        with self._push_lock:
            checked = False
            for db in self.dbs:
                if not db.local.exists() or db.local == db.remote:
                    continue
                if not force and time.monotonic() - db.last_push < db.min_interval_s:
                    continue
                if not checked:  # one read of the lease file per push, not per database
                    self.lease.check(self.tag)
                    checked = True
                snap = db.chain.push(
                    db.local,
                    self.local_dir,
                    unless_sha=self.origin.get(db.name).get("sha256"),
                    session=self.tag,
                    known=db.known,
                    superseded_ns=db.base_ns,
                )
                db.last_push = time.monotonic()
                if snap is not None:
                    self.origin.set(db.name, snap)
                    pushed.append(snap)
        return pushed

    def start_snapshotter(self) -> None:
        self.snapshotter = Snapshotter(self, every_s=self.snapshot_every_s, min_gap_s=self.min_gap_s)
        self.snapshotter.start()

    def renew_lease(self) -> None:
        self.lease.renew(self.newest_snapshots())

    def mark_lost(self, exc: StateLocked) -> None:
        if self.lost:
            return
        self.lost = True
        self.log(f"error: {exc.message}; {exc.hint}")
        if self.on_lost is not None:
            self.on_lost()

    # -- end ---------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self.snapshotter is not None:
                self.snapshotter.stop()
            if self.started and self.access != "read" and not self.lost:
                try:
                    self.push(force=True)
                except StateLocked as exc:
                    self.lost = True  # not on_lost: the command is ending anyway
                    self.log(f"error: {exc.message}; {exc.hint}")
                except (OSError, sqlite3.Error) as exc:
                    self.log(
                        f"error: the final snapshot to {self.queue.chain.dir} failed: {exc}. The live copy is "
                        f"still at {self.queue.local}; run the command again on this machine to push it"
                    )
                    return  # keep the lease: the state on the mount is behind this machine's copy
            if self.exclusive and not self.lost:
                self.lease.release(self.newest_snapshots())
        finally:
            for tmp in self._temp:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        os.unlink(f"{tmp}{suffix}")


class _ChangeWatch:
    """Cheap change detection on the live files: PRAGMA data_version moves on every commit made by
    another connection (any process); the events table grows on every job state change."""

    def __init__(self, dbs: list[MirroredDb]) -> None:
        self.dbs = dbs
        self.conns: dict[str, sqlite3.Connection] = {}
        self.seen: dict[str, int] = {}
        self.pushed: dict[str, int] = {}
        self.last_event = -1

    def _version(self, db: MirroredDb) -> int | None:
        conn = self.conns.get(db.name)
        if conn is None:
            if not db.local.exists():
                return None
            conn = sqlite3.connect(f"file:{db.local}?mode=rw", uri=True, timeout=5, check_same_thread=False)
            self.conns[db.name] = conn
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def poll(self) -> tuple[bool, bool]:
        """(a job changed state since the last poll, anything changed since the last push)."""
        state_change = changed = False
        for db in self.dbs:
            try:
                version = self._version(db)
            except sqlite3.Error:
                continue
            if version is None:
                continue
            if version != self.seen.get(db.name):
                self.seen[db.name] = version
                if db.name == "queue":
                    try:
                        row = self.conns[db.name].execute("SELECT max(id) FROM events").fetchone()
                    except sqlite3.Error:
                        row = None
                    newest = int(row[0]) if row and row[0] is not None else -1
                    if self.last_event >= 0 and newest > self.last_event:
                        state_change = True
                    self.last_event = newest
            if self.seen.get(db.name) != self.pushed.get(db.name):
                changed = True
        return state_change, changed

    def mark_pushed(self, names: list[str] | None = None) -> None:
        for name, version in self.seen.items():
            if names is None or name in names:
                self.pushed[name] = version

    def close(self) -> None:
        for conn in self.conns.values():
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def lower_thread_priority() -> None:
    """Nice the calling thread (Linux: per thread) below the training threads: on a 2-core VM a
    snapshot must not take a core away from torch."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Snapshotter(threading.Thread):
    """Pushes snapshots after job state changes (at most every min_gap_s) and at least every
    every_s while anything changes; renews the state lease. Never runs on the training thread."""

    POLL_S = 0.25

    def __init__(self, state: MirroredState, *, every_s: float, min_gap_s: float) -> None:
        super().__init__(name="sweeper-snapshotter", daemon=True)
        self.state = state
        self.every_s = every_s
        self.min_gap_s = min_gap_s
        self._halt = threading.Event()
        self.pushes = 0
        self.failures = 0

    def run(self) -> None:
        lower_thread_priority()
        watch = _ChangeWatch(self.state.dbs)
        watch.poll()
        watch.mark_pushed()
        lease = self.state.lease
        next_renew = time.monotonic() + lease.renew_every_s
        last_push = time.monotonic()
        pending = False
        warned = False
        try:
            while not self._halt.is_set():
                if self._halt.wait(self.POLL_S):
                    return
                now = time.monotonic()
                if self.state.exclusive and now >= next_renew:
                    try:
                        self.state.renew_lease()
                        next_renew = now + lease.renew_every_s
                    except StateLocked as exc:
                        self.state.mark_lost(exc)
                        return
                    except OSError as exc:
                        self.state.log(f"warning: cannot renew the state lease ({exc}); retrying")
                        next_renew = now + min(5.0, lease.renew_every_s)
                state_change, changed = watch.poll()
                pending = pending or state_change
                due = (pending and now - last_push >= self.min_gap_s) or (changed and now - last_push >= self.every_s)
                if not due:
                    continue
                started = time.monotonic()
                try:
                    self.state.push()
                    self.pushes += 1
                    warned = False
                except StateLocked as exc:
                    self.state.mark_lost(exc)
                    return
                except (OSError, sqlite3.Error) as exc:
                    self.failures += 1
                    if not warned:
                        self.state.log(f"warning: snapshot to {self.state.queue.chain.dir} failed ({exc}); retrying")
                        warned = True
                    continue
                pending = False
                last_push = now
                watch.mark_pushed([db.name for db in self.state.dbs if db.last_push >= started])
        finally:
            watch.close()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=60)


# ---------------------------------------------------------------------------------------------
# The entry point for commands


def plan(settings: Settings, mode: str = "auto", mounts_file: str | None = None) -> Verdict | None:
    """The verdict when the queue must be mirrored, None when it can be used in place."""
    queue_file = sqlite_path(settings.db_url)
    if queue_file is None:
        if mode == "on":
            raise UsageError(
                "--mirror on works with a SQLite queue only",
                hint="a PostgreSQL queue is shared by every machine already; drop --mirror",
            )
        return None
    verdict = should_mirror(queue_file.parent, mode, mounts_file)
    if not verdict.unsafe:
        return None
    return replace(verdict, path=verdict.path / queue_file.name)


@contextmanager
def open_state(
    settings: Settings,
    *,
    command: str,
    access: Access,
    mirror: str = "auto",
    take_over: bool = False,
    log: Log = _stderr,
    lease_s: float | None = None,
    snapshot_every_s: float | None = None,
    min_gap_s: float | None = None,
    on_lost: Callable[[], None] | None = None,
    wait: bool = False,
    fail_fast: str = "--no-wait fails at once",
) -> Iterator[StateSession]:
    """The settings a command should use, with mirrored mode set up and torn down around it.

    access: "read" (status: never takes the lease), "write" (enqueue, retry, cancel: take it or
    share a live session on this machine, push one snapshot at the end), or "work" (take it, push
    snapshots from a background thread, push a final one and release it at the end).
    wait: when another live session holds the lease, wait for it to run out (printing a countdown
    through `log`; `fail_fast` says how not to wait) instead of refusing with StateLocked.
    """
    verdict = plan(settings, mirror)
    if verdict is None:
        _warn_unsafe_tracking(settings, log)
        yield StateSession(settings)
        return
    snapshot_every_s = snapshot_every_s or _env_seconds("SWEEPER_SNAPSHOT_EVERY_S", DEFAULT_SNAPSHOT_EVERY_S)
    state = MirroredState(
        settings,
        verdict,
        log=log,
        lease_s=lease_s or _env_seconds("SWEEPER_STATE_LEASE_S", DEFAULT_LEASE_S),
        snapshot_every_s=snapshot_every_s,
        min_gap_s=min_gap_s if min_gap_s is not None else _env_seconds("SWEEPER_SNAPSHOT_MIN_GAP_S", DEFAULT_MIN_GAP_S),
        on_lost=on_lost,
        sync_wait_s=_env_seconds("SWEEPER_SNAPSHOT_SYNC_WAIT_S", DEFAULT_SYNC_WAIT_S),
    )
    try:
        waiter = LeaseWait(log, fail_fast=fail_fast) if wait else None
        session = state.start(access, command, take_over=take_over, wait=waiter)
        if access == "work":
            log(
                f"mirrored mode: {verdict.reason}; live database {state.queue.local}, "
                f"snapshots in {state.queue.chain.dir} after every job state change and at least every "
                f"{snapshot_every_s:g}s"
            )
            state.start_snapshotter()
        yield session
    finally:
        state.close()


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise UsageError(f"{name}={text!r} is not a number of seconds", hint=f"unset it for the default ({default:g})")
    return value


def _warn_unsafe_tracking(settings: Settings, log: Log) -> None:
    """MLflow's SQLite store on a network mount with a queue that is not mirrored (PostgreSQL)."""
    path = sqlite_path(settings.tracking_uri)
    if path is None or sqlite_path(settings.db_url) is not None:
        return
    verdict = check(path.parent)
    if verdict.unsafe:
        log(
            f"warning: the MLflow store {path} is a SQLite file on a network mount ({verdict.reason}); "
            "with several machines use an MLflow tracking server (--mlflow-uri http://...)"
        )
