"""The schema and the engine: one set of tables for SQLite and PostgreSQL.

Times are stored as float seconds since the epoch and always taken from the *database* clock
(`db_now()`), so leases mean the same thing to workers whose own clocks disagree.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from sweeper.config import mask_password
from sweeper.errors import DatabaseUnavailable, SchemaMismatch, UsageError
from sweeper.mappings import finite

SCHEMA_VERSION = 1

T = TypeVar("T")

metadata = sa.MetaData()

meta = sa.Table(
    "sweeper_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

sweeps = sa.Table(
    "sweeps",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("spec_file", sa.Text),
    sa.Column("spec_text", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

stages = sa.Table(
    "stages",
    metadata,
    sa.Column("sweep", sa.String(200), sa.ForeignKey("sweeps.name"), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(300), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),  # StageSpec.to_json(): needs, inherit, ...
    sa.Column("position", sa.Integer, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # identity hash of sweep/stage/kind/params
    sa.Column("sweep", sa.String(200), sa.ForeignKey("sweeps.name"), nullable=False),
    sa.Column("stage", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(300), nullable=False),
    sa.Column("label", sa.Text, nullable=False, default=""),
    sa.Column("params", sa.JSON, nullable=False),  # as written in the grid file
    sa.Column("resolved_params", sa.JSON),  # after hand-offs; what the job runs with
    sa.Column("provenance", sa.JSON),  # resolved path -> upstream job id
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("position", sa.Integer, nullable=False),  # FIFO order within a priority
    sa.Column("attempt", sa.Integer, nullable=False, default=0),  # number of claims so far
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("max_failures", sa.Integer, nullable=False),
    sa.Column("interruptions", sa.Integer, nullable=False, default=0),
    sa.Column("max_interruptions", sa.Integer, nullable=False),
    sa.Column("not_before", sa.Float),  # retry backoff: not claimable before this time
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("progress", sa.Float),
    sa.Column("progress_message", sa.Text),
    sa.Column("result", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("tracking_run_id", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),  # first claim
    sa.Column("finished_at", sa.Float),
    sa.Index("ix_jobs_lease", "status", "lease_expires_at"),
    sa.Index("ix_jobs_stage", "sweep", "stage", "status"),
)

# Matches the claim's ORDER BY priority DESC, position: the next job is the first index entry.
sa.Index("ix_jobs_claim", jobs.c.status, jobs.c.priority.desc(), jobs.c.position)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("threads", sa.Integer),
    sa.Column("status", sa.String(16), nullable=False),  # running | stopped
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat", sa.Float, nullable=False),
    sa.Column("current_job", sa.String(32)),
    sa.Index("ix_workers_status", "status", "last_heartbeat"),
)

# Append-only history: enqueued, claimed, lease_lost, released, checkpointed, done, failed,
# retried, cancelled, blocked_failed, unblocked.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), index=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("attempt", sa.Integer),
    sa.Column("detail", sa.Text),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("location", sa.Text),  # file path relative to the state dir; NULL when in `blob`
    sa.Column("blob", sa.LargeBinary),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("job_id", "seq", name="uq_checkpoints_job_seq"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), nullable=False, index=True),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("location", sa.Text),
    sa.Column("blob", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),
)

TERMINAL = ("done", "failed", "cancelled")
ACTIVE = ("blocked", "pending", "running")
WAITING = ("blocked", "pending")  # not started yet: a re-enqueue may still change their priority
STATUSES = ("blocked", "pending", "running", "done", "failed", "cancelled")


class db_now(FunctionElement):
    """The database's clock in float epoch seconds."""

    type = sa.Float()
    inherit_cache = True


@compiles(db_now, "sqlite")
def _sqlite_now(element, compiler, **kw):  # millisecond resolution
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _pg_now(element, compiler, **kw):
    return "extract(epoch from clock_timestamp())::float8"


# Prebuilt: the claim (queue.py, the hot path) appends with it too.
INSERT_EVENT = events.insert()


def add_event(
    conn: Connection,
    job_id: str | None,
    type_: str,
    *,
    worker: str | None = None,
    attempt: int | None = None,
    detail: str | None = None,
) -> None:
    """Append to the job's history (`sweeper show`), in the caller's transaction."""
    conn.execute(
        INSERT_EVENT,
        {"job_id": job_id, "ts": time.time(), "type": type_, "worker": worker, "attempt": attempt, "detail": detail},
    )


def json_dumps(value: object) -> str:
    """JSON for the database. NaN and infinities become null: they are not JSON, PostgreSQL refuses
    them (a job whose loss diverged could not complete) and SQLite's JSON functions fail on them."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Engines


def sqlite_path(url: str | sa.URL | None) -> Path | None:
    """The file of a SQLite URL; None for other databases, in-memory ones and what is not a URL."""
    if isinstance(url, str):
        if not url.startswith("sqlite"):
            return None
        try:
            url = sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError):
            return None
    if url is None or url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _sqlite_engine(url: sa.URL, *, create: bool = True, readonly: bool = False) -> Engine:
    path = sqlite_path(url)
    if path is not None and create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. --state names a file, or a directory we may not write
            raise UsageError(
                f"cannot create the directory of the queue database {url.database}: {exc.strerror or exc}",
                hint="point --state (or --db sqlite:///...) at a directory you can write",
            ) from None
    if readonly and path is not None:
        return _sqlite_readonly_engine(path)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, json_serializer=json_dumps)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control away from pysqlite so that we can say BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute("PRAGMA busy_timeout=60000")  # wait for the write lock instead of failing
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives process crashes
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Every write transaction takes the write lock up front. A deferred transaction that
        # reads and then writes can fail with SQLITE_BUSY without waiting (lock upgrade
        # deadlock); BEGIN IMMEDIATE waits on busy_timeout instead. Read-only work opts out.
        if conn.get_execution_options().get("sweeper_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def writable(path: Path) -> bool:
    """Whether this process may write the SQLite file `path` and create its -wal/-shm next to it.

    os.access asks the kernel, so a read-only mount says no even to root (chmod does not stop root).
    """
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _sqlite_readonly_engine(path: Path) -> Engine:
    """The queue opened for reading only, on a state directory this process may not write.

    SQLite opens a database in WAL mode read-only only where its -wal and -shm files exist or can
    be created. Without a -wal file in a directory nobody can write, no writer can be at work (it
    would need that file), so the file is opened as immutable: no locks, no -shm.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if not os.path.exists(f"{path}-wal") and not os.access(path.parent, os.W_OK):
        uri += "&immutable=1"
    engine = sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False),
        json_serializer=json_dumps,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # as in _sqlite_engine: transactions are ours to begin

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN")

    return engine


def _pg_engine(url: sa.URL) -> Engine:
    return sa.create_engine(
        url,
        json_serializer=json_dumps,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=4,
        connect_args={"connect_timeout": 5, "application_name": "sweeper"},
    )


def make_engine(url: str, *, create: bool = True, readonly: bool = False) -> Engine:
    """`create`: a SQLite file's directory may be made; `readonly`: open a SQLite file read-only."""
    try:
        parsed = sa.make_url(url)
    except Exception:
        raise UsageError(
            f"not a database URL: {mask_password(url)!r}",
            hint="use sqlite:///path/to/queue.db or postgresql://user@host:5432/dbname",
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, create=create, readonly=readonly)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return _pg_engine(parsed)
    raise UsageError(
        f"unsupported database '{backend}' in {mask_password(url)}",
        hint="sweeper supports sqlite:/// (one machine) and postgresql:// (several machines)",
    )


# ---------------------------------------------------------------------------------------------
# Transient errors: lock contention and connection loss are retried with backoff.


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        text = str(exc.orig if hasattr(exc, "orig") else exc).lower()
        permanent = (
            "no such table",
            "syntax error",
            "no such column",
            "does not exist",
            "password authentication failed",
            "unable to open database",
        )
        return not any(p in text for p in permanent)
    return False


# A connection that fails for one of these reasons will not work on a retry: the URL or the
# server's setup is wrong. They fail at once with what to check (connect_problem).
_NO_HOST = (
    "failed to resolve host",
    "could not translate host name",
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
)
_NO_LOGIN = ("password authentication failed", "no pg_hba.conf entry", "authentication failed", "no password supplied")


def connect_problem(
    exc: BaseException, url: sa.URL, display_url: str, *, first_contact: bool
) -> DatabaseUnavailable | None:
    """The error to stop at once with when `exc` is a misconfiguration, not an outage; else None.

    A host name that does not resolve is judged only on the first contact of the process: once
    the database answered, the name resolved, and a failure to resolve it again is the network's
    (a laptop waking up, a VPN reconnecting), an outage to wait out like a refused connection.
    """
    text = str(getattr(exc, "orig", None) or exc)
    low = text.lower()
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    prefix = f"cannot use database {display_url}"
    reason = _first_line(exc)
    if "FATAL:" in reason:  # psycopg: 'connection failed: connection to server at ... failed: FATAL:  ...'
        reason = reason.split("FATAL:", 1)[1].strip()
    if first_contact and any(p in low for p in _NO_HOST):
        return DatabaseUnavailable(
            f"{prefix}: the host name '{url.host}' does not resolve ({reason})",
            hint="check the host in --db (or SWEEPER_DB) for a typo; a name on a private network or VPN "
            "resolves only on machines connected to it",
        )
    if 'database "' in low and "does not exist" in low:
        return DatabaseUnavailable(
            f"{prefix}: {reason} on {where}",
            hint=f"create it once (createdb -h {url.host or 'localhost'} -p {url.port or 5432} "
            f"-U {url.username or 'postgres'} {url.database}, or CREATE DATABASE), or fix the database name "
            "at the end of the URL",
        )
    if ('role "' in low and "does not exist" in low) or any(p in low for p in _NO_LOGIN):
        return DatabaseUnavailable(
            f"{prefix}: the server at {where} refused user '{url.username}': {reason}",
            hint="check the user and password in the URL (percent-encode @ : / in a password), or "
            "PGPASSWORD / ~/.pgpass; the server's pg_hba.conf must let this machine in as that user",
        )
    return None


@dataclass
class OutagePolicy:
    """How long a worker keeps retrying a database that does not answer."""

    limit_s: float = 120.0
    first_delay_s: float = 0.05
    # A retry against a server that is down costs one refused connection: retry every second, so
    # that workers are back within a second of the database (a longer sleep after a short
    # PostgreSQL restart outlived the leases of the jobs being run).
    max_delay_s: float = 1.0
    log: Callable[[str], None] | None = None
    # While an outage lasts, a line with the reason and the time left at least this often: a
    # worker that sits silent for two minutes looks hung.
    remind_every_s: float = 10.0

    @classmethod
    def interactive(cls) -> OutagePolicy:
        """status, show, export, report, enqueue, retry, cancel: someone waits at the prompt.

        A refused or dropped connection is retried for 3 s (a PostgreSQL restart takes 1-2 s),
        then the command says what did not answer; running it again is cheap. Workers wait out
        outages (120 s by default) because giving up costs a running job its lease.
        """
        return cls(limit_s=3.0)


@dataclass
class Database:
    url: str
    engine: Engine
    outage: OutagePolicy
    # One "unreachable" line and one "back" line per outage for the whole process, however many
    # threads (job, heartbeat) were waiting on it.
    _outage_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _outage_announced: bool = field(default=False, repr=False)
    # What the reminder thread says while an outage lasts: the latest reason, when it began, when
    # the first caller that met it gives up.
    _outage_reason: str = field(default="", repr=False)
    _outage_since: float = field(default=0.0, repr=False)
    _outage_deadline: float = field(default=0.0, repr=False)
    _outage_over: threading.Event | None = field(default=None, repr=False)
    # Whether the database ever answered this process: until then a name that does not resolve
    # is a typo, afterwards a network that went away (connect_problem).
    reached: bool = field(default=False, repr=False)
    readonly: bool = False  # a SQLite queue opened read-only (open_database(readonly=True))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        return mask_password(self.url)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One short write transaction (BEGIN IMMEDIATE on SQLite)."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(sweeper_readonly=True)
            with conn.begin():
                yield conn

    def in_read(self, what: str, fn: Callable[[Connection], T]) -> T:
        """Run fn in one read transaction, retried through an outage like the writes are."""

        def txn() -> T:
            with self.read() as conn:
                return fn(conn)

        return self.retrying(txn, what)

    def retrying(self, fn: Callable[[], T], what: str) -> T:
        """Run fn, retrying transient errors with exponential backoff up to the outage limit."""
        delay = self.outage.first_delay_s
        deadline = None
        while True:
            try:
                result = fn()
                self.reached = True
                if self._outage_announced:
                    self._announce_back()
                return result
            except sa.exc.DBAPIError as exc:
                problem = connect_problem(exc, self.engine.url, self.display_url, first_contact=not self.reached)
                if problem is not None:
                    raise problem from None
                if self.readonly and "readonly database" in str(exc).lower():
                    raise UsageError(
                        f"cannot {what}: the queue {self.display_url} is open read-only (its directory is not "
                        "writable here)",
                        hint="make the state directory writable, or copy it somewhere writable and point --state there",
                    ) from None
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.outage.limit_s
                if now >= deadline:
                    if _disk_full(exc):
                        raise DatabaseUnavailable(
                            f"database {self.display_url} could not be written for {self.outage.limit_s:.0f}s "
                            f"while trying to {what}: {_first_line(exc)}",
                            hint="free space on the disk that holds the queue database; the jobs resume "
                            "from their checkpoints when a worker starts again",
                        ) from None
                    refused = "refused" in str(exc).lower()
                    url = self.engine.url
                    raise DatabaseUnavailable(
                        f"database {self.display_url} did not answer for {self.outage.limit_s:.0f}s "
                        f"while trying to {what}: {_first_line(exc)}",
                        hint=f"nothing accepts connections at {url.host or 'localhost'}:{url.port or 5432}: "
                        "check that the database server is running there and that the port is right"
                        if refused
                        else "check that the database server is running and reachable",
                    ) from None
                locked = "locked" in str(exc).lower() or "busy" in str(exc).lower()
                if not locked:
                    self._announce_down(what, exc, deadline)
                time.sleep(delay)
                delay = min(delay * 2, self.outage.max_delay_s)

    def _announce_down(self, what: str, exc: BaseException, deadline: float) -> None:
        with self._outage_lock:
            self._outage_reason = _first_line(exc)
            if self._outage_announced:
                return
            self._outage_announced = True
            self._outage_since, self._outage_deadline = time.monotonic(), deadline
            over = self._outage_over = threading.Event()
        if self.outage.log:
            problem = "database cannot be written" if _disk_full(exc) else "database unreachable"
            self.outage.log(
                f"{problem} while trying to {what} ({_first_line(exc)}); retrying for up to {self.outage.limit_s:.0f}s"
            )
            threading.Thread(target=self._remind, args=(over,), name="sweeper-outage", daemon=True).start()

    def _remind(self, over: threading.Event) -> None:
        """Every remind_every_s while the outage lasts: how long so far, why, and the time left."""
        assert self.outage.log is not None
        while not over.wait(self.outage.remind_every_s):
            with self._outage_lock:
                if not self._outage_announced:
                    return
                now = time.monotonic()
                since, left, reason = now - self._outage_since, self._outage_deadline - now, self._outage_reason
            if left <= 0:
                return  # the caller that met the outage first gives up now, with its own message
            self.outage.log(f"database still unreachable after {since:.0f}s ({reason}); giving up in {left:.0f}s")

    def _announce_back(self) -> None:
        with self._outage_lock:
            if not self._outage_announced:
                return
            self._outage_announced = False
            if self._outage_over is not None:
                self._outage_over.set()
        if self.outage.log:
            self.outage.log(f"database is back ({self.display_url}); carrying on")

    def dispose(self) -> None:
        if self._outage_over is not None:
            self._outage_over.set()
        self.engine.dispose()


def _disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100): transient, but not an unreachable server."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return "disk is full" in text or "no space left" in text


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return mask_password(text.splitlines()[0] if text else type(exc).__name__)


# ---------------------------------------------------------------------------------------------
# Schema version


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    # version n -> n + 1. Add an entry (and bump SCHEMA_VERSION) when the schema changes.
}


def _schema_lock(conn: Connection) -> None:
    """Serialize schema creation between processes that start at the same moment."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(727311)"))
    # SQLite: BEGIN IMMEDIATE already holds the write lock.


def open_database(
    url: str, *, create: bool = True, outage: OutagePolicy | None = None, readonly: bool = False
) -> Database:
    """Connect, then create the schema, migrate an older one, or refuse a newer one.

    `create=False`: the queue must exist (nothing is created, not even its directory).
    `readonly`: the caller only reads (status, show, export, report); a SQLite queue in a
    directory this process may not write is then opened read-only instead of refused.
    """
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        missing = "" if path.parent.is_dir() else f": the directory {path.parent} does not exist"
        raise UsageError(
            f"no queue database at {path}{missing}",
            hint="run `sweeper enqueue GRID.yaml` first, or point --db/--state at the queue",
        )
    if path is not None and path.parent.is_dir() and not writable(path):
        if not readonly:
            raise UsageError(
                f"the state directory {path.parent} is not writable here, so its queue can only be read",
                hint="`sweeper status`, `show`, `export` and `report` work on it; to enqueue, work, retry or "
                "cancel, make the directory writable (a read-only mount? its permissions?) or copy it somewhere "
                "writable and point --state there",
            )
    else:
        readonly = False  # a directory we can write: the usual engine, which readers share with workers
    engine = make_engine(url, create=create, readonly=readonly)
    db = Database(url=url, engine=engine, outage=outage or OutagePolicy(), readonly=readonly)

    def current_version() -> int | None:
        """The schema version in a read transaction, or None when there is no sweeper schema yet."""
        try:
            with db.read() as conn:
                value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            if is_transient(exc) and "no such table" not in str(exc) and "does not exist" not in str(exc):
                raise
            return None
        return int(value) if value is not None else None

    def ensure() -> None:
        # The common case (the schema is there and current) needs no write lock: commands such as
        # `status` must not wait behind busy workers just to open the queue.
        if current_version() == SCHEMA_VERSION:
            return
        with db.write() as conn:
            _schema_lock(conn)
            insp = sa.inspect(conn)
            names = set(insp.get_table_names())
            if meta.name not in names:
                if names & {t.name for t in metadata.sorted_tables}:
                    raise SchemaMismatch(
                        f"{db.display_url} has tables but no sweeper schema version",
                        hint="point --db at a database of its own for sweeper",
                    )
                if not create:
                    raise UsageError(
                        f"no sweeper queue in {db.display_url}", hint="run `sweeper enqueue GRID.yaml` first"
                    )
                metadata.create_all(conn)
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            found = int(conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar_one())
            if found > SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"{db.display_url} uses schema version {found}, written by a newer sweeper; "
                    f"this sweeper understands version {SCHEMA_VERSION}",
                    hint="upgrade sweeper (pip install -U sweeper) on this machine",
                )
            while found < SCHEMA_VERSION:
                MIGRATIONS[found](conn)
                found += 1
                conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(found)))

    try:
        db.retrying(ensure, "open the queue")
    except sa.exc.DBAPIError as exc:
        raise DatabaseUnavailable(f"cannot use database {db.display_url}: {_first_line(exc)}") from None
    return db


@contextmanager
def open_db(
    url: str, *, create: bool = True, outage: OutagePolicy | None = None, readonly: bool = False
) -> Iterator[Database]:
    """open_database() for the length of a `with` block: its connections are closed at the end."""
    db = open_database(url, create=create, outage=outage, readonly=readonly)
    try:
        yield db
    finally:
        db.dispose()
