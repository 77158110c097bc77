"""Every statement that moves a job between states lives here, named after what it does.

    blocked -> pending -> running -> done
                  ^          |  \\-> failed   (exception, attempts exhausted; traceback kept)
                  |          v
                  +--- released (SIGTERM, lease expired, retry with backoff)      cancelled

A claim is one short transaction that hands out a lease: an owner, an expiry in database time and a
fresh random token. Every later write by the worker names that token (fencing): once the job has
been taken over, the old token matches nothing and the write is refused with LeaseLost. The rows a
job writes beside its own (checkpoints, artifacts: checkpoints.py) go through the same fence,
`Queue.in_lease`; `_owned` is the one ownership predicate and LEASE_CLEARED the one way a lease ends.

SQLite and PostgreSQL run the same statements. The only difference is how a write transaction
begins (see db.py): on SQLite, BEGIN IMMEDIATE serializes writers, so the FOR UPDATE SKIP LOCKED
clause (which SQLAlchemy leaves out on SQLite) is not needed there.

Settling (a stage's blocked jobs become pending once every upstream job is terminal) lives in
settle.py, a mixin of Queue: the transitions here call it, under its per-sweep lock, in their own
transaction.
"""

from __future__ import annotations

import functools
import json
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sweeper.config import mask_password
from sweeper.errors import LeaseLost, error_summary
from sweeper.grid.spec import JobSpec, StageSpec, SweepSpec
from sweeper.mappings import summary_line
from sweeper.store.db import (
    ACTIVE,
    INSERT_EVENT,
    TERMINAL,
    WAITING,
    Database,
    add_event,
    db_now,
    events,
    jobs,
    stages,
    sweeps,
    workers,
)
from sweeper.store.db import checkpoints as checkpoint_rows
from sweeper.store.quarantine import FROM_SCRATCH
from sweeper.store.settle import Settling
from sweeper.store.stale import CLEAR, stale_jobs


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str
    worker_id: str
    attempt: int


@dataclass
class ClaimedJob:
    id: str
    sweep: str
    stage: str
    kind: str
    label: str
    params: dict[str, Any]
    attempt: int
    failures: int
    interruptions: int
    tracking_run_id: str | None
    lease: Lease


@dataclass
class EnqueueDiff:
    sweep: str
    new: list[JobSpec] = field(default_factory=list)
    unchanged: list[JobSpec] = field(default_factory=list)
    gone: list[tuple[str, str, str, str]] = field(default_factory=list)  # id, stage, label, status
    # Unchanged jobs not started yet whose stage's priority was edited: (job, old priority).
    reprioritized: list[tuple[JobSpec, int]] = field(default_factory=list)
    dry_run: bool = False


T = TypeVar("T")


def _now() -> float:
    return time.time()


def _owned(job_id: Any, token: Any) -> sa.ColumnElement[bool]:
    """The lease-ownership predicate: the job is running under this token (values or bind parameters)."""
    return sa.and_(jobs.c.id == job_id, jobs.c.lease_token == token, jobs.c.status == "running")


# What every end of a lease writes (complete, fail, release, the reaper, cancel): no owner, no token.
LEASE_CLEARED: dict[str, Any] = {"lease_token": None, "lease_owner": None, "lease_expires_at": None}


def lease_lost(lease: Lease, consequence: str) -> LeaseLost:
    """The one LeaseLost message: whose lease, why it can be gone, and what was not done."""
    return LeaseLost(
        f"job {lease.job_id}: this worker's lease is gone (the job was taken over, cancelled or expired); {consequence}"
    )


# The hot path (claim, complete, heartbeat) runs prebuilt statements: building a SQLAlchemy
# statement costs more than executing it on SQLite, and a prebuilt one also keeps its cache key.


@functools.cache
def _claim_statement(with_stages: bool, with_sweep: bool) -> sa.Update:
    cond = [jobs.c.status == "pending", sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= db_now())]
    if with_stages:
        cond.append(jobs.c.stage.in_(sa.bindparam("p_stages", expanding=True)))
    if with_sweep:
        cond.append(jobs.c.sweep == sa.bindparam("p_sweep"))
    # On PostgreSQL, SKIP LOCKED lets concurrent claimers pass over each other's row instead of
    # queueing behind it. SQLAlchemy drops the clause on SQLite, where BEGIN IMMEDIATE serializes.
    next_job = (
        sa.select(jobs.c.id)
        .where(*cond)
        .order_by(jobs.c.priority.desc(), jobs.c.position)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("next_job")
    )
    return (
        jobs.update()
        .where(jobs.c.id == sa.select(next_job.c.id).scalar_subquery())
        .values(
            status="running",
            lease_owner=sa.bindparam("p_worker"),
            lease_token=sa.bindparam("p_token"),
            lease_expires_at=db_now() + sa.bindparam("p_ttl", type_=sa.Float),
            attempt=jobs.c.attempt + 1,
            started_at=sa.func.coalesce(jobs.c.started_at, db_now()),
            updated_at=db_now(),
            not_before=None,
            progress=None,
            progress_message=None,
        )
        .returning(
            jobs.c.id,
            jobs.c.sweep,
            jobs.c.stage,
            jobs.c.kind,
            jobs.c.label,
            jobs.c.params,
            jobs.c.resolved_params,
            jobs.c.attempt,
            jobs.c.failures,
            jobs.c.interruptions,
            jobs.c.tracking_run_id,
        )
    )


_OWNED = _owned(sa.bindparam("p_job"), sa.bindparam("p_token"))

_COMPLETE = (
    jobs.update()
    .where(_OWNED)
    .values(
        status="done",
        result=sa.bindparam("p_result", type_=jobs.c.result.type),
        finished_at=db_now(),
        updated_at=db_now(),
        progress=1.0,
        error=None,
        **LEASE_CLEARED,
    )
    .returning(jobs.c.sweep, jobs.c.stage)
)

_RENEW = (
    jobs.update()
    .where(_OWNED)
    .values(
        lease_expires_at=db_now() + sa.bindparam("p_ttl", type_=sa.Float),
        updated_at=db_now(),
        progress=sa.func.coalesce(sa.bindparam("p_progress", type_=sa.Float), jobs.c.progress),
        progress_message=sa.func.coalesce(sa.bindparam("p_message", type_=sa.Text), jobs.c.progress_message),
    )
    .returning(jobs.c.id)
)

_WORKER_BEAT = (
    workers.update()
    .where(workers.c.id == sa.bindparam("p_worker"))
    .values(last_heartbeat=sa.bindparam("p_now", type_=sa.Float), current_job=sa.bindparam("p_current"))
)

# Retry backoff doubles per failure up to this (then jitter): without a cap the 19th retry of
# `max_failures: 20` waited about 15 days.
MAX_RETRY_BACKOFF_S = 600.0


def _no_hook(point: str) -> None:
    """The default race hook: nothing."""


class Queue(Settling):
    """The job queue on one database. Safe to share between threads of one process."""

    def __init__(
        self,
        db: Database,
        *,
        retry_backoff_s: float = 5.0,
        reap_every_s: float = 1.0,
        max_retry_backoff_s: float = MAX_RETRY_BACKOFF_S,
        _settle_lock: bool = True,
    ) -> None:
        self.db = db
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.reap_every_s = reap_every_s
        self._last_reap = 0.0
        self._last_heal = 0.0
        # False only in benchmarks/claim_scaling.py and the race suite, to measure and show what the
        # settle lock costs and prevents. Never turn it off elsewhere.
        self._settle_lock = _settle_lock
        # Test hook for tests/races/: called with a point name between a transaction's read and
        # its write ("enqueue-read", "settle-read", "cancel-read", "retry-read", "reap-read", "complete-wrote",
        # "fail-read"), so that a test can run a competing transaction exactly there.
        self.race_hook: Callable[[str], None] = _no_hook
        self._stage_cache: dict[str, tuple[float | None, dict[str, StageSpec]]] = {}

    def _in_write(self, what: str, fn: Callable[[Connection], T]) -> T:
        """Run fn in one write transaction, retried through an outage (`what` names it in errors)."""

        def txn() -> T:
            with self.db.write() as conn:
                return fn(conn)

        return self.db.retrying(txn, what)

    def in_read(self, what: str, fn: Callable[[Connection], T]) -> T:
        """Run fn in one read transaction, retried through an outage like the writes are."""
        return self.db.in_read(what, fn)

    def in_lease(self, lease: Lease, what: str, fn: Callable[[Connection], T]) -> T:
        """Run fn in one write transaction while `lease` still owns its job: the fencing helper for
        the rows a job writes beside its own (checkpoints, artifacts: see checkpoints.py). Raises
        LeaseLost, and commits nothing fn wrote, once the job was taken over."""

        def txn(conn: Connection) -> T:
            self._fenced(conn, lease)
            return fn(conn)

        return self._in_write(what, txn)

    # -----------------------------------------------------------------------------------------
    # Enqueue

    def diff(self, spec: SweepSpec) -> EnqueueDiff:
        with self.db.read() as conn:
            return self._diff(conn, spec)

    def _diff(self, conn: Connection, spec: SweepSpec) -> EnqueueDiff:
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.stage, jobs.c.label, jobs.c.status, jobs.c.priority).where(
                jobs.c.sweep == spec.name
            )
        ).all()
        existing = {r.id: r for r in rows}
        diff = EnqueueDiff(sweep=spec.name)
        wanted = set()
        for job in spec.jobs:
            wanted.add(job.id)
            old = existing.get(job.id)
            if old is None:
                diff.new.append(job)
                continue
            diff.unchanged.append(job)
            # Priority is not part of a job's identity: editing it reorders what has not started yet.
            if old.priority != job.priority and old.status in WAITING:
                diff.reprioritized.append((job, old.priority))
        diff.gone = [(r.id, r.stage, r.label, r.status) for r in rows if r.id not in wanted]
        return diff

    def enqueue(self, spec: SweepSpec) -> EnqueueDiff:
        """Add the jobs of `spec` that are not in the queue yet; apply edited priorities. Idempotent."""

        def txn(conn: Connection) -> EnqueueDiff:
            # Before the diff: a second enqueue of the same grid waits here, then sees the
            # first one's jobs as unchanged instead of inserting them again.
            self._lock_sweeps(conn, [spec.name])
            diff = self._diff(conn, spec)
            self.race_hook("enqueue-read")
            self._upsert_sweep(conn, spec)
            now = _now()
            if diff.new:
                base = conn.execute(sa.select(sa.func.coalesce(sa.func.max(jobs.c.position), -1))).scalar_one() + 1
                needs = {s.name: bool(s.needs) for s in spec.stages}
                conn.execute(
                    jobs.insert(),
                    [
                        {
                            "id": j.id,
                            "sweep": j.sweep,
                            "stage": j.stage,
                            "kind": j.kind,
                            "label": j.label,
                            "params": j.params,
                            "resolved_params": None if needs[j.stage] else j.params,
                            "status": "blocked" if needs[j.stage] else "pending",
                            "priority": j.priority,
                            "position": base + i,
                            "max_failures": j.max_failures,
                            "max_interruptions": j.max_interruptions,
                            "attempt": 0,
                            "failures": 0,
                            "interruptions": 0,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i, j in enumerate(diff.new)
                    ],
                )
                conn.execute(
                    events.insert(),
                    [{"job_id": j.id, "ts": now, "type": "enqueued", "detail": j.label} for j in diff.new],
                )
            by_priority: dict[int, list[str]] = {}
            for job, _ in diff.reprioritized:
                by_priority.setdefault(job.priority, []).append(job.id)
            for priority, ids in by_priority.items():  # a statement per 500 jobs, not one per job
                for start in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id.in_(ids[start : start + 500]), jobs.c.status.in_(WAITING))
                        .values(priority=priority, updated_at=now)
                    )
            grown = {j.stage for j in diff.new}
            if grown:  # new jobs in a finished stage reopen it: its dependents must choose again
                self._reopen(
                    conn, spec.name, grown, f"enqueue added {len(diff.new)} job(s) to {', '.join(sorted(grown))}"
                )
            # A stage added to an already finished sweep can start at once.
            self._settle(conn, spec.name, {s.name for s in spec.stages})
            return diff

        return self._in_write("enqueue", txn)

    def _upsert_sweep(self, conn: Connection, spec: SweepSpec) -> None:
        now = _now()
        found = conn.execute(sa.select(sweeps.c.name).where(sweeps.c.name == spec.name)).first()
        values = {"description": spec.description, "spec_file": spec.file, "spec_text": spec.text, "updated_at": now}
        if found:
            conn.execute(sweeps.update().where(sweeps.c.name == spec.name).values(**values))
        else:
            conn.execute(sweeps.insert().values(name=spec.name, created_at=now, **values))
        have = {r.name for r in conn.execute(sa.select(stages.c.name).where(stages.c.sweep == spec.name))}
        for pos, stage in enumerate(spec.stages):
            row = {"kind": stage.kind, "config": stage.to_json(), "position": pos}
            if stage.name in have:
                conn.execute(
                    stages.update().where(stages.c.sweep == spec.name, stages.c.name == stage.name).values(**row)
                )
            else:
                conn.execute(stages.insert().values(sweep=spec.name, name=stage.name, **row))

    # -----------------------------------------------------------------------------------------
    # Claim, renew, finish

    def claim(
        self,
        worker_id: str,
        ttl_s: float,
        *,
        stages_filter: Sequence[str] | None = None,
        sweep: str | None = None,
    ) -> ClaimedJob | None:
        """Take the next runnable job (priority, then FIFO) and lease it to `worker_id`."""

        def txn(conn: Connection) -> ClaimedJob | None:
            if time.monotonic() - self._last_reap >= self.reap_every_s:
                self._reap_expired(conn)
                self._last_reap = time.monotonic()
            token = secrets.token_hex(16)
            params: dict[str, Any] = {"p_worker": worker_id, "p_token": token, "p_ttl": float(ttl_s)}
            if stages_filter:
                params["p_stages"] = list(stages_filter)
            if sweep:
                params["p_sweep"] = sweep
            statement = _claim_statement(bool(stages_filter), bool(sweep))
            row = conn.execute(statement, params).first()
            if row is None and time.monotonic() - self._last_heal >= self.reap_every_s:
                # Nothing to claim: the moment to look for a stage stuck blocked (see _heal).
                self._last_heal = time.monotonic()
                if self._heal(conn):
                    row = conn.execute(statement, params).first()
            if row is None:
                return None
            conn.execute(
                INSERT_EVENT,
                {
                    "job_id": row.id,
                    "ts": _now(),
                    "type": "claimed",
                    "worker": worker_id,
                    "attempt": row.attempt,
                    "detail": None,
                },
            )
            return ClaimedJob(
                id=row.id,
                sweep=row.sweep,
                stage=row.stage,
                kind=row.kind,
                label=row.label,
                params=row.resolved_params if row.resolved_params is not None else row.params,
                attempt=row.attempt,
                failures=row.failures,
                interruptions=row.interruptions,
                tracking_run_id=row.tracking_run_id,
                lease=Lease(row.id, token, worker_id, row.attempt),
            )

        return self._in_write("claim a job", txn)

    def reap_expired(self) -> int:
        """Make jobs whose lease expired claimable again (or failed, past their interruption limit)."""

        def txn(conn: Connection) -> int:
            reaped = self._reap_expired(conn)
            self._heal(conn)
            return reaped

        return self._in_write("reap expired leases", txn)

    def release_all_running(self) -> list[str]:
        """Put every running job back, as if each worker's lease had run out: an interruption each,
        their stages settled by the reaper. Only for a caller that knows no worker runs them: a
        mirrored session that holds the state lease (recovery.py). Returns the jobs' ids."""

        def txn(conn: Connection) -> list[str]:
            running = list(conn.execute(sa.select(jobs.c.id).where(jobs.c.status == "running")).scalars())
            conn.execute(jobs.update().where(jobs.c.status == "running").values(lease_expires_at=0.0))
            return running

        running = self._in_write("expire the leases of running jobs", txn)
        while self.reap_expired():
            pass
        return running

    def _reap_expired(self, conn: Connection) -> int:
        # A plain read (no row locks yet): a lease past its interruption limit ends the job, which
        # can unblock a stage, so its sweep's settle lock must be taken before any row lock (the
        # lock order everywhere is settle lock, then rows). The guarded UPDATE below re-checks
        # token and expiry on the row as it is then, so a lease renewed meanwhile is left alone.
        rows = conn.execute(
            sa.select(
                jobs.c.id,
                jobs.c.sweep,
                jobs.c.stage,
                jobs.c.lease_token,
                jobs.c.lease_owner,
                jobs.c.interruptions,
                jobs.c.max_interruptions,
                jobs.c.attempt,
            )
            .where(jobs.c.status == "running", jobs.c.lease_expires_at < db_now())
            .limit(200)
        ).all()
        if not rows:
            return 0
        self.race_hook("reap-read")
        self._lock_sweeps(conn, [r.sweep for r in rows if r.interruptions + 1 > r.max_interruptions])
        finished_stages: dict[str, set[str]] = {}
        for r in rows:
            exhausted = r.interruptions + 1 > r.max_interruptions
            values: dict[str, Any] = {
                "status": "failed" if exhausted else "pending",
                "interruptions": jobs.c.interruptions + 1,
                "updated_at": db_now(),
                **LEASE_CLEARED,
            }
            if exhausted:
                values["error"] = f"interrupted {r.interruptions + 1} times (limit {r.max_interruptions})"
                values["finished_at"] = db_now()
            done = conn.execute(
                jobs.update().where(_owned(r.id, r.lease_token), jobs.c.lease_expires_at < db_now()).values(**values)
            ).rowcount
            if not done:
                continue
            add_event(
                conn,
                r.id,
                "lease_lost",
                worker=r.lease_owner,
                attempt=r.attempt,
                detail=f"lease of {r.lease_owner} expired; job is claimable again"
                if not exhausted
                else values["error"],
            )
            if exhausted:
                finished_stages.setdefault(r.sweep, set()).add(r.stage)
        for sweep_name, names in finished_stages.items():
            self._settle(conn, sweep_name, names)
        return len(rows)

    def _fenced(self, conn: Connection, lease: Lease, **values: Any) -> sa.Row:
        """Update the job only while `lease` still owns it; otherwise raise LeaseLost."""
        row = conn.execute(
            jobs.update()
            .where(_owned(lease.job_id, lease.token))
            .values(updated_at=db_now(), **values)
            .returning(
                jobs.c.sweep,
                jobs.c.stage,
                jobs.c.failures,
                jobs.c.max_failures,
                jobs.c.interruptions,
                jobs.c.max_interruptions,
            )
        ).first()
        if row is None:
            raise lease_lost(lease, "dropping it")
        return row

    def renew(self, lease: Lease, ttl_s: float, progress: float | None = None, message: str | None = None) -> None:
        """Heartbeat: push the lease expiry forward and publish progress. Raises LeaseLost."""

        def txn(conn: Connection) -> None:
            owned = conn.execute(
                _RENEW,
                {
                    "p_job": lease.job_id,
                    "p_token": lease.token,
                    "p_ttl": float(ttl_s),
                    "p_progress": progress,
                    "p_message": message,
                },
            ).first()
            if owned is None:
                raise lease_lost(lease, "dropping it")
            conn.execute(_WORKER_BEAT, {"p_worker": lease.worker_id, "p_now": _now(), "p_current": lease.job_id})

        self._in_write("renew a lease", txn)

    def verify_lease(self, lease: Lease) -> None:
        """Raise LeaseLost unless `lease` still owns its job (a read, for a fenced side effect)."""

        def txn(conn: Connection) -> None:
            if conn.execute(sa.select(jobs.c.id).where(_owned(lease.job_id, lease.token))).first() is None:
                raise lease_lost(lease, "not going on")

        self.in_read("verify a lease", txn)

    def set_tracking_run(self, lease: Lease, run_id: str, uri: str | None = None) -> None:
        """Record the job's tracking run; `uri` (masked by the caller) goes into a `tracking` event."""

        def txn(conn: Connection) -> None:
            self._fenced(conn, lease, tracking_run_id=run_id)
            if uri is not None:
                detail = json.dumps({"uri": uri, "run_id": run_id})
                add_event(conn, lease.job_id, "tracking", worker=lease.worker_id, attempt=lease.attempt, detail=detail)

        self._in_write("record the tracking run", txn)

    def tracking_run(self, job_id: str) -> str | None:
        """The run recorded for the job (a read: a worker that lost the job asks whose run won)."""
        return self.in_read(
            "read the tracking run",
            lambda conn: conn.execute(sa.select(jobs.c.tracking_run_id).where(jobs.c.id == job_id)).scalar(),
        )

    def complete(self, lease: Lease, result: dict[str, Any]) -> None:
        def txn(conn: Connection) -> None:
            row = conn.execute(
                _COMPLETE,
                {"p_job": lease.job_id, "p_token": lease.token, "p_result": result},
            ).first()
            if row is None:
                raise lease_lost(lease, "its result is not recorded")
            add_event(
                conn, lease.job_id, "done", worker=lease.worker_id, attempt=lease.attempt, detail=_summary(result)
            )
            self.race_hook("complete-wrote")
            # Not locked yet: the settle takes the lock only near the end of a stage (see there).
            self._settle(conn, row.sweep, {row.stage}, locked=False)

        self._in_write("complete a job", txn)

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> str:
        """Count a failure. Returns the new status: 'pending' (retry after backoff) or 'failed'."""
        error = mask_password(error)  # a traceback may quote a connection URL; the queue may be shared

        def txn(conn: Connection) -> str:
            row = self._owned_row(conn, lease, jobs.c.sweep, jobs.c.failures, jobs.c.max_failures)
            self.race_hook("fail-read")
            failures = row.failures + 1
            summary = error_summary(error)
            if retry and failures < row.max_failures:
                delay = self.retry_delay(failures)
                detail = f"failure {failures}/{row.max_failures}, retry in {delay:.1f}s: {summary}"
                return self._end_attempt(
                    conn,
                    lease,
                    "pending",
                    "retried",
                    detail,
                    failures=failures,
                    error=error,
                    not_before=db_now() + delay,
                )
            why = "not retryable" if not retry else f"failure {failures}/{row.max_failures}"
            self._lock_sweeps(conn, [row.sweep])  # the job ends: its dependents may settle
            return self._end_attempt(
                conn, lease, "failed", "failed", f"{why}: {summary}", failures=failures, error=error
            )

        return self._in_write("record a failure", txn)

    def retry_delay(self, failures: int) -> float:
        """Seconds before a job may run again after its `failures`-th failure: doubling, capped, jittered."""
        base = self.retry_backoff_s * 2 ** min(failures - 1, 60)  # min(): 2**1000000 overflows a float
        return min(base * random.uniform(0.5, 1.5), self.max_retry_backoff_s)

    def release(self, lease: Lease, reason: str) -> str:
        """Give the job back without counting a failure (SIGTERM, Ctrl-C). Counts an interruption."""

        def txn(conn: Connection) -> str:
            row = self._owned_row(conn, lease, jobs.c.sweep, jobs.c.interruptions, jobs.c.max_interruptions)
            interruptions = row.interruptions + 1
            if interruptions > row.max_interruptions:
                self._lock_sweeps(conn, [row.sweep])  # the job ends: its dependents may settle
                error = f"interrupted {interruptions} times (limit {row.max_interruptions}); last: {reason}"
                return self._end_attempt(
                    conn, lease, "failed", "released", reason, interruptions=interruptions, error=error
                )
            return self._end_attempt(conn, lease, "pending", "released", reason, interruptions=interruptions)

        return self._in_write("release a job", txn)

    def _owned_row(self, conn: Connection, lease: Lease, *columns: sa.Column) -> sa.Row:
        """The job's row while `lease` still owns it; otherwise LeaseLost."""
        row = conn.execute(sa.select(*columns).where(_owned(lease.job_id, lease.token))).first()
        if row is None:
            raise lease_lost(lease, "nothing recorded")
        return row

    def _end_attempt(self, conn: Connection, lease: Lease, status: str, event: str, detail: str, **values: Any) -> str:
        """Close the lease with `status` (pending again, or failed), record why, settle dependents."""
        if status == "failed":
            values["finished_at"] = db_now()
        r = self._fenced(conn, lease, status=status, **LEASE_CLEARED, **values)
        add_event(conn, lease.job_id, event, worker=lease.worker_id, attempt=lease.attempt, detail=detail)
        if status == "failed":
            self._settle(conn, r.sweep, {r.stage})
        return status

    # -----------------------------------------------------------------------------------------
    # Workers

    def register_worker(self, worker_id: str, host: str, pid: int, threads: int | None) -> None:
        def txn(conn: Connection) -> None:
            now = _now()
            conn.execute(workers.delete().where(workers.c.id == worker_id))
            conn.execute(
                workers.insert().values(
                    id=worker_id,
                    host=host,
                    pid=pid,
                    threads=threads,
                    status="running",
                    started_at=now,
                    last_heartbeat=now,
                )
            )

        self._in_write("register the worker", txn)

    def worker_heartbeat(self, worker_id: str) -> None:
        """An idle worker's heartbeat: alive, and running nothing."""

        def txn(conn: Connection) -> None:
            conn.execute(_WORKER_BEAT, {"p_worker": worker_id, "p_now": _now(), "p_current": None})

        self._in_write("heartbeat", txn)

    def stop_worker(self, worker_id: str) -> None:
        def txn(conn: Connection) -> None:
            conn.execute(
                workers.update()
                .where(workers.c.id == worker_id)
                .values(status="stopped", current_job=None, last_heartbeat=_now())
            )

        self._in_write("unregister the worker", txn)

    # -----------------------------------------------------------------------------------------
    # Admin: retry and cancel

    def _select_ids(
        self, conn: Connection, ids: Sequence[str], statuses: Sequence[str], stage: str | None, sweep: str | None
    ) -> list[str]:
        cond: list[sa.ColumnElement[bool]] = [jobs.c.status.in_(list(statuses))]
        if ids:
            cond.append(jobs.c.id.in_(list(ids)))
        if stage:
            cond.append(jobs.c.stage == stage)
        if sweep:
            cond.append(jobs.c.sweep == sweep)
        # Lock the sweeps first, then read which jobs match: the read below then sees every status
        # change committed before this transaction held the lock.
        locked: set[str] = set()
        if conn.dialect.name == "postgresql" and self._settle_lock:
            locked = set(conn.execute(sa.select(jobs.c.sweep).where(*cond).distinct()).scalars())
            self._lock_sweeps(conn, locked)
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.sweep).where(*cond).order_by(jobs.c.position)).all()
        if locked:
            # A job of another sweep that matched only after the first read (rare): lock it too.
            self._lock_sweeps(conn, {r.sweep for r in rows} - locked)
        return [r.id for r in rows]

    def retry(
        self,
        ids: Sequence[str] = (),
        *,
        stage: str | None = None,
        sweep: str | None = None,
        include_cancelled: bool = True,
        from_scratch: bool = False,
    ) -> list[str]:
        """Give failed (and cancelled) jobs a fresh start with zeroed failure counts.

        from_scratch: the jobs may start over without the checkpoints that were refused and
        quarantined (quarantine.py); without it such a job fails again at once.
        """
        statuses = ("failed", "cancelled") if include_cancelled else ("failed",)

        def txn(conn: Connection) -> list[str]:
            picked = self._select_ids(conn, ids, statuses, stage, sweep)
            self.race_hook("retry-read")
            touched: dict[str, set[str]] = {}
            retried: list[str] = []
            for job_id in picked:
                row = conn.execute(
                    sa.select(jobs.c.sweep, jobs.c.stage, jobs.c.resolved_params).where(jobs.c.id == job_id)
                ).one()
                # A dependent job whose hand-off never resolved waits for its upstream again.
                status = "blocked" if row.resolved_params is None else "pending"
                # The status guard: a job that is no longer failed/cancelled (another retry
                # made it pending and a worker claimed it) must not be reset under its worker.
                changed = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status.in_(statuses))
                    .values(
                        status=status,
                        failures=0,
                        interruptions=0,
                        not_before=None,
                        finished_at=None,
                        updated_at=db_now(),
                    )
                ).rowcount
                if not changed:
                    continue
                retried.append(job_id)
                add_event(conn, job_id, "retried", detail="by user")
                if from_scratch:
                    add_event(conn, job_id, FROM_SCRATCH, detail="by user: refused checkpoints stay in quarantine")
                touched.setdefault(row.sweep, set()).add(row.stage)
            self._reopen_and_settle(conn, touched, _retried_why(retried))
            return retried

        return self._in_write("retry jobs", txn)

    def retry_stale(self, ids: Sequence[str] = (), *, stage: str | None = None, sweep: str | None = None) -> list[str]:
        """Run stale jobs (stale.py) again from scratch, on their upstream's current results.

        A done or failed stale job goes back to `blocked` with its resolution, result, error,
        counts, MLflow run id and checkpoint rows dropped; the settle below resolves it again at once when its
        upstream is terminal. Its own dependents are reopened in turn. A stale job still running
        or waiting is left alone: retry it once it has finished. The caller sets the jobs'
        checkpoint files and MLflow runs aside first (stale.rerun_stale).
        """
        statuses = ("done", "failed")

        def txn(conn: Connection) -> list[str]:
            picked = self._select_ids(conn, ids, statuses, stage, sweep)
            stale = stale_jobs(conn, ids=picked) if picked else {}
            self.race_hook("retry-read")
            touched: dict[str, set[str]] = {}
            rerun: list[str] = []
            for job_id in picked:
                if job_id not in stale:
                    continue
                row = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status.in_(statuses))
                    .values(
                        status="blocked",
                        resolved_params=None,
                        provenance=None,
                        result=None,
                        error=None,
                        failures=0,
                        interruptions=0,
                        not_before=None,
                        finished_at=None,
                        progress=None,
                        progress_message=None,
                        tracking_run_id=None,  # a new MLflow run (stale.supersede_tracking_runs)
                        updated_at=db_now(),
                    )
                    .returning(jobs.c.sweep, jobs.c.stage)
                ).first()
                if row is None:
                    continue
                conn.execute(checkpoint_rows.delete().where(checkpoint_rows.c.job_id == job_id))
                rerun.append(job_id)
                add_event(conn, job_id, CLEAR, detail=f"stale ({stale[job_id]}): runs again from scratch")
                touched.setdefault(row.sweep, set()).add(row.stage)
            self._reopen_and_settle(conn, touched, _retried_why(rerun))
            return rerun

        return self._in_write("retry stale jobs", txn)

    def _reopen_and_settle(self, conn: Connection, touched: dict[str, set[str]], why: str) -> None:
        """After jobs of `touched` stages became active again: reopen their dependents, settle them."""
        for sweep_name, names in touched.items():
            self._reopen(conn, sweep_name, names, why)
            for name in names:
                self._settle_stage(conn, sweep_name, name)

    def cancel(self, ids: Sequence[str] = (), *, stage: str | None = None, sweep: str | None = None) -> list[str]:
        """Cancel jobs that have not finished. A running job's worker loses its lease and drops it."""

        def txn(conn: Connection) -> list[str]:
            picked = self._select_ids(conn, ids, ACTIVE, stage, sweep)
            self.race_hook("cancel-read")
            touched: dict[str, set[str]] = {}
            cancelled: list[str] = []
            for job_id in picked:
                # The status guard: a job that finished since the read keeps its result (its
                # dependents may already have used it); PostgreSQL re-checks it on the row as
                # committed, after waiting for a running job's `complete`.
                row = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE))
                    .values(
                        status="cancelled",
                        finished_at=db_now(),
                        updated_at=db_now(),
                        **LEASE_CLEARED,
                    )
                    .returning(jobs.c.sweep, jobs.c.stage)
                ).first()
                if row is None:
                    continue
                cancelled.append(job_id)
                add_event(conn, job_id, "cancelled", detail="by user")
                touched.setdefault(row.sweep, set()).add(row.stage)
            for sweep_name, names in touched.items():
                self._settle(conn, sweep_name, names)
            return cancelled

        return self._in_write("cancel jobs", txn)


def _retried_why(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    return f"upstream job(s) {shown} retried"


def _summary(result: dict[str, Any]) -> str:
    return summary_line(result, limit=6)


__all__ = ["TERMINAL", "ClaimedJob", "EnqueueDiff", "Lease", "Queue", "add_event"]
