"""Forcing one interleaving of two queue transactions, and the invariants every round checks.

`Queue.race_hook` is called at named points between a transaction's read and its write. A test
parks transaction A at such a point and starts the competitor B in a thread, then lets A go on
only once B has got as far as it can:
  * PostgreSQL: B finished, or reached its own hook point, or waits on a lock that A holds
    (seen in pg_stat_activity); no sleeps, no luck;
  * SQLite: B has asked for the write lock while A holds it. BEGIN IMMEDIATE makes B wait for A's
    whole transaction, which is the serialization the queue relies on there; a probe on B's
    connection (`probe_write_lock`) proves that B got that far: just before B's BEGIN IMMEDIATE it
    tries the lock without waiting and must be answered "database is locked". So every SQLite
    round really runs B's write against A's open transaction, not merely B's thread start.
"""

from __future__ import annotations

import sqlite3
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from sweeper.grid.spec import SweepSpec, parse_spec
from sweeper.store.db import ACTIVE, Database, open_database
from sweeper.store.queue import Queue

WAIT_S = 60.0  # a forced interleaving that does not happen within this is a failure, not a skip


def two_stage_grid(sweep: str, upstream: int = 2, max_failures: int = 3) -> SweepSpec:
    """Stage `a` (`upstream` noop jobs) -> stage `b` (needs a): the shape of the issue's reproduction."""
    return parse_spec(
        textwrap.dedent(f"""\
        sweep: {sweep}
        stages:
          a: {{kind: noop, max_failures: {max_failures}, grid: {{value: {list(range(upstream))}}}}}
          b: {{kind: noop, needs: [a], grid: {{value: [0]}}}}
        """),
        "grid.yaml",
    )


class Workers:
    """Queue objects on their own engines, as separate worker processes would have."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dbs: list[Database] = []

    def queue(self, **kwargs: Any) -> Queue:
        db = open_database(self.url)
        self.dbs.append(db)
        if db.dialect == "sqlite":
            probe_write_lock(db.engine)
        return Queue(db, retry_backoff_s=0.0, **kwargs)

    def close(self) -> None:
        for db in self.dbs:
            db.dispose()


@dataclass
class Competitor:
    """A transaction run in a thread while another is parked at a hook point."""

    fn: Callable[[], Any]
    started: threading.Event = field(default_factory=threading.Event)
    at_point: threading.Event = field(default_factory=threading.Event)
    # SQLite, set by let_competitor_run: B's connection found the write lock held (by the parked A)
    # when it asked for it. A Competitor used only as a thread (no parked A) is not probed.
    probe_lock: bool = False
    waits_on_lock: threading.Event = field(default_factory=threading.Event)
    lock_was_free: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            self.started.set()
            try:
                self.result = self.fn()
            except BaseException as exc:  # reported by the test, never swallowed
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        _PROBED[self.thread] = self
        self.thread.start()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the competing transaction did not finish"
        _PROBED.pop(self.thread, None)
        assert not self.lock_was_free, "SQLite: the competitor found the write lock free while A was parked"


# Competitor threads whose SQLite writes are probed (see probe_write_lock).
_PROBED: dict[threading.Thread, Competitor] = {}


def probe_write_lock(engine: sa.Engine) -> None:
    """On a competitor's thread, check that its BEGIN IMMEDIATE will wait for the parked transaction.

    Just before the queue's own BEGIN IMMEDIATE (db.py), the same connection tries one with a busy
    timeout of 0: SQLite answers "database is locked" at once while another connection holds the
    write lock. That answer sets `waits_on_lock`; the real BEGIN IMMEDIATE then waits as usual.
    """

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _probe(conn, cursor, statement, parameters, context, executemany):
        comp = _PROBED.get(threading.current_thread())
        if comp is None or not comp.probe_lock or statement != "BEGIN IMMEDIATE" or comp.waits_on_lock.is_set():
            return
        raw = cursor.connection
        (timeout_ms,) = raw.execute("PRAGMA busy_timeout").fetchone()
        raw.execute("PRAGMA busy_timeout=0")
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            comp.waits_on_lock.set()
        else:
            raw.execute("ROLLBACK")
            comp.lock_was_free = True
        finally:
            raw.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")


class LockWatch:
    """Counts sessions of one PostgreSQL database that wait on a lock (row, advisory, ...)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.conn = self.engine.connect()

    def waiting(self) -> int:
        return self.conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        ).scalar_one()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


def let_competitor_run(comp: Competitor, watch: LockWatch | None) -> None:
    """Block (inside A's hook) until B is as far as it can get while A holds its place."""
    comp.probe_lock = watch is None
    comp.start()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if watch is None:  # SQLite: B asked for the write lock A holds (or finished without writing)
            if comp.waits_on_lock.is_set() or comp.done.is_set():
                return
        elif comp.done.is_set() or comp.at_point.is_set() or watch.waiting() > 0:
            return
        time.sleep(0.002)
    raise AssertionError("the competing transaction neither finished nor waited on a lock")


def park_at(point: str, then: Callable[[], None]) -> Callable[[str], None]:
    """A race hook that runs `then` the first time `point` is reached."""
    fired = threading.Event()

    def hook(name: str) -> None:
        if name == point and not fired.is_set():
            fired.set()
            then()

    return hook


def mark_at(point: str, event: threading.Event) -> Callable[[str], None]:
    def hook(name: str) -> None:
        if name == point:
            event.set()

    return hook


# ---------------------------------------------------------------------------------------------
# Invariants


def violations(db: Database, spec: SweepSpec) -> list[str]:
    """What must hold after every round, read from the queue itself."""
    found: list[str] = []
    with db.read() as conn:
        rows = conn.execute(
            sa.text("SELECT id, stage, status, lease_token FROM jobs WHERE sweep = :s"), {"s": spec.name}
        ).all()
        done_events = dict(
            conn.execute(
                sa.text(
                    "SELECT e.job_id, count(*) FROM events e JOIN jobs j ON j.id = e.job_id "
                    "WHERE j.sweep = :s AND e.type = 'done' GROUP BY e.job_id"
                ),
                {"s": spec.name},
            ).all()
        )
    by_id = {r.id: r for r in rows}
    expected = {j.id for j in spec.jobs}
    if set(by_id) != expected:
        found.append(f"lost jobs {sorted(expected - set(by_id))}, unexpected {sorted(set(by_id) - expected)}")
    for stage in spec.stages:
        if not stage.needs:
            continue
        blocked = [r for r in rows if r.stage == stage.name and r.status == "blocked"]
        upstream_active = [r for r in rows if r.stage in stage.needs and r.status in ACTIVE]
        if blocked and not upstream_active:
            found.append(f"stage {stage.name} is blocked while all of {stage.needs} is terminal")
    for r in rows:
        n = done_events.get(r.id, 0)
        if n > 1:
            found.append(f"job {r.id} done {n} times")
        if n and r.status != "done":
            found.append(f"job {r.id} finished as done but is now {r.status}")
        if r.status == "done" and n != 1:
            found.append(f"job {r.id} is done with {n} done events")
        if (r.status == "running") != (r.lease_token is not None):
            found.append(f"job {r.id} is {r.status} with lease token {r.lease_token!r}")
    return found


def status_of(db: Database, job_id: str) -> sa.Row:
    with db.read() as conn:
        return conn.execute(
            sa.text("SELECT status, failures, interruptions, attempt, lease_token FROM jobs WHERE id = :j"),
            {"j": job_id},
        ).one()


def events_of(db: Database, job_id: str, type_: str) -> int:
    with db.read() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM events WHERE job_id = :j AND type = :t"), {"j": job_id, "t": type_}
        ).scalar_one()
