"""Settling: a stage's blocked jobs become pending (or fail) once every upstream job is terminal.

When a job ends (complete, fail, release, the reaper, cancel) or an admin command changes one
(retry), the stages that need its stage may be ready: if all their upstream jobs are terminal, and
enough of them succeeded (`require_all`), the blocked jobs get their hand-off params resolved
(handoff.py) and become pending; otherwise they fail with the reason. `_heal` settles stages an
older version or a manual edit left blocked.

Settling reads the states that *other* transactions write. At READ COMMITTED two workers
completing the last two upstream jobs each saw the other's job still running, and neither
unblocked the stage (write skew). So on PostgreSQL it is serialized per sweep by an advisory lock
(`_lock_sweeps`), held to the commit. Claims, the hot path, never take it, and `complete` takes it
only at the end of a stage. On SQLite, BEGIN IMMEDIATE already serializes every writer.

`Settling` is a mixin of `queue.Queue`: the queue's transitions call these methods inside their
own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sweeper.grid import handoff
from sweeper.grid.spec import StageSpec
from sweeper.store.db import ACTIVE, add_event, artifacts, db_now, jobs, stages, sweeps
from sweeper.store.stale import MARK, stale_jobs

_SWEEP_VERSION = sa.select(sweeps.c.updated_at).where(sweeps.c.name == sa.bindparam("p_sweep"))

# The settle lock: a transaction-scoped advisory lock per sweep (the two-int key space, apart from
# db.py's schema lock). Why not `SELECT ... FROM sweeps FOR UPDATE`: the first enqueue of a sweep
# has no row to lock yet (two of them raced into an IntegrityError), and a row lock on `sweeps`
# would also queue behind the FOR KEY SHARE locks that every INSERT into `jobs` takes through the
# foreign key. Why not SERIALIZABLE: every status change would need a retry loop, and claims
# (the hot path) would abort on serialization failures. A hash collision between two sweep names
# only makes them wait for each other.
_SETTLE_LOCK_CLASS = 727312
_LOCK_SWEEP = sa.text(f"SELECT pg_advisory_xact_lock({_SETTLE_LOCK_CLASS}, hashtext(:p_sweep))")


class Settling:
    """Dependency settling for `queue.Queue`, which sets these attributes in its __init__."""

    # False only in benchmarks/claim_scaling.py and the race suite (see Queue.__init__).
    _settle_lock: bool
    # Test hook for tests/races/ (see Queue.__init__); "settle-read" is called from here.
    race_hook: Callable[[str], None]
    _stage_cache: dict[str, tuple[float | None, dict[str, StageSpec]]]

    def _lock_sweeps(self, conn: Connection, names: Iterable[str]) -> None:
        """Take the settle lock of each sweep (PostgreSQL), in name order so two never deadlock.

        Every transaction that moves a job to a terminal state, or otherwise can unblock a stage,
        takes it before it reads other jobs' states to settle, and holds it to its commit. Without
        it, two workers completing the last two upstream jobs each saw the other's job still
        running at READ COMMITTED, and neither unblocked the stage (write skew). Claims never take
        it; `complete` takes it only at the end of a stage (see `_settle`). On SQLite, BEGIN
        IMMEDIATE already serializes every writer.

        Lock order: the admin commands, enqueue, fail/release and the reaper take it before any
        row lock. `complete` has written its own row when it asks for it; the one cycle that
        leaves, a cancel or reaper holding the lock and waiting for that very running row, is
        rare, and PostgreSQL breaks it within deadlock_timeout: the retried transaction then finds
        the job's new state.
        """
        if conn.dialect.name != "postgresql" or not self._settle_lock:
            return
        for name in sorted(set(names)):
            conn.execute(_LOCK_SWEEP, {"p_sweep": name})

    def _heal(self, conn: Connection) -> int:
        """Settle stages left blocked although all their upstream jobs are terminal. Returns how many.

        Such a stage cannot come from this version (see `_lock_sweeps`), but an older one or a
        manual edit could leave one, and then `sweeper work --wait` polled forever. Cheap: one
        read of the blocked (sweep, stage) pairs, and one for each pair's still active upstream.
        """
        pairs = conn.execute(sa.select(jobs.c.sweep, jobs.c.stage).where(jobs.c.status == "blocked").distinct()).all()
        healed = 0
        for sweep_name, stage_name in pairs:
            spec = self._stage_specs(conn, sweep_name).get(stage_name)
            if spec is None or not spec.needs:
                continue
            active = conn.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.sweep == sweep_name, jobs.c.stage.in_(spec.needs), jobs.c.status.in_(ACTIVE))
                .limit(1)
            ).first()
            if active is not None:
                continue
            self._lock_sweeps(conn, [sweep_name])
            self._settle(conn, sweep_name, set(spec.needs))
            healed += 1
        return healed

    def _stage_specs(self, conn: Connection, sweep: str) -> dict[str, StageSpec]:
        """The sweep's stages, cached until `enqueue` changes the sweep (its updated_at moves)."""
        version = conn.execute(_SWEEP_VERSION, {"p_sweep": sweep}).scalar_one_or_none()
        cached = self._stage_cache.get(sweep)
        if cached is not None and cached[0] == version:
            return cached[1]
        rows = conn.execute(
            sa.select(stages.c.name, stages.c.config).where(stages.c.sweep == sweep).order_by(stages.c.position)
        ).all()
        specs = {r.name: StageSpec.from_json(r.name, r.config) for r in rows}
        self._stage_cache[sweep] = (version, specs)
        return specs

    def _settle(self, conn: Connection, sweep: str, changed: set[str], *, locked: bool = True) -> None:
        """Unblock (or fail) the blocked jobs of stages that need `changed`, once all upstream is terminal.

        `locked=False` (complete, the hot path): the caller wrote its own job's row but does not
        hold the settle lock. While some upstream job is active and *not* being written by another
        transaction, there is nothing to settle, and sharing that job's row lock to our commit
        proves it: its own status change waits for our commit and its settle then sees our job
        finished. Only when every active upstream job is in flight (the end of a stage, where the
        write skew was) is the settle lock taken. So most completes never take it.
        """
        specs = self._stage_specs(conn, sweep)
        for dep in specs.values():
            if not (set(dep.needs) & changed) and dep.name not in changed:
                continue
            if not dep.needs:
                continue
            if not locked and conn.dialect.name == "postgresql" and self._settle_lock:
                quiet_active = conn.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.sweep == sweep, jobs.c.stage.in_(dep.needs), jobs.c.status.in_(ACTIVE))
                    .limit(1)
                    .with_for_update(read=True, skip_locked=True)
                ).first()
                if quiet_active is not None:
                    self.race_hook("settle-read")
                    continue
                self._lock_sweeps(conn, [sweep])
                locked = True
            blocked = conn.execute(
                sa.select(jobs.c.id, jobs.c.params)
                .where(jobs.c.sweep == sweep, jobs.c.stage == dep.name, jobs.c.status == "blocked")
                .order_by(jobs.c.position)
            ).all()
            if not blocked:
                continue
            # Cheap first: while any upstream job is still active (the common case on every complete
            # but the last), there is nothing to settle and no need to read every upstream row.
            still_active = conn.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.sweep == sweep, jobs.c.stage.in_(dep.needs), jobs.c.status.in_(ACTIVE))
                .limit(1)
            ).first()
            if still_active is not None:
                self.race_hook("settle-read")
                continue
            up = conn.execute(
                sa.select(
                    jobs.c.id,
                    jobs.c.stage,
                    jobs.c.status,
                    jobs.c.params,
                    jobs.c.resolved_params,
                    jobs.c.result,
                    jobs.c.position,
                ).where(jobs.c.sweep == sweep, jobs.c.stage.in_(dep.needs))
            ).all()
            self.race_hook("settle-read")
            if any(r.status in ACTIVE for r in up):
                continue
            outcomes = self._outcomes(conn, up)
            n_done = sum(1 for r in up if r.status == "done")
            ok = n_done == len(up) if dep.require_all else n_done > 0
            failed_any = False
            for job in blocked:
                if not ok:
                    counts = _status_counts(up)
                    rule = (
                        "all upstream jobs must succeed (require_all)"
                        if dep.require_all
                        else "no upstream job succeeded"
                    )
                    self._block_failed(conn, job.id, f"upstream {', '.join(dep.needs)} finished with {counts}: {rule}")
                    failed_any = True
                    continue
                try:
                    resolved, provenance = handoff.resolve_params(job.params, dep.inherit, outcomes)
                except handoff.HandOffError as exc:
                    self._block_failed(conn, job.id, f"hand-off could not be resolved: {exc}")
                    failed_any = True
                    continue
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.status == "blocked")
                    .values(status="pending", resolved_params=resolved, provenance=provenance, updated_at=db_now())
                )
                add_event(conn, job.id, "unblocked", detail=json.dumps(provenance, sort_keys=True))
            if failed_any:
                self._settle(conn, sweep, {dep.name})

    def _reopen(self, conn: Connection, sweep: str, changed: set[str], why: str) -> None:
        """Stages in `changed` have active jobs again (retry, or enqueue added some): their dependents'
        hand-offs were resolved from a stage that is no longer finished.

        Dependent jobs that have not started (pending, or failed by the settle itself: attempt 0)
        go back to `blocked` with their resolution dropped; `_settle` resolves them again, from
        every upstream job, when the stage is terminal once more. Those that already started keep
        their state and are marked stale (stale.py); `sweeper retry --stale` runs them again.
        Runs under the settle lock, in the caller's transaction. The guarded UPDATE decides
        against a concurrent claim: on PostgreSQL it waits for the claim's row lock and then sees
        the job running, which the read after it marks stale instead.
        """
        specs = self._stage_specs(conn, sweep)
        for dep in specs.values():
            reopened = set(dep.needs) & changed
            if not reopened:
                continue
            active = conn.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.sweep == sweep, jobs.c.stage.in_(reopened), jobs.c.status.in_(ACTIVE))
                .limit(1)
            ).first()
            if active is None:
                continue
            self.race_hook("reopen-read")
            not_started = sa.or_(jobs.c.status == "pending", jobs.c.status == "failed")
            back = (
                conn.execute(
                    jobs.update()
                    .where(jobs.c.sweep == sweep, jobs.c.stage == dep.name, jobs.c.attempt == 0, not_started)
                    .values(
                        status="blocked",
                        resolved_params=None,
                        provenance=None,
                        error=None,
                        finished_at=None,
                        not_before=None,
                        updated_at=db_now(),
                    )
                    .returning(jobs.c.id)
                )
                .scalars()
                .all()
            )
            for job_id in back:
                add_event(conn, job_id, "reblocked", detail=why)
            ran = (
                conn.execute(
                    sa.select(jobs.c.id).where(
                        jobs.c.sweep == sweep,
                        jobs.c.stage == dep.name,
                        jobs.c.attempt > 0,  # it was claimed, so it had resolved its hand-off
                        jobs.c.status != "cancelled",
                    )
                )
                .scalars()
                .all()
            )
            already = stale_jobs(conn, ids=ran) if ran else {}
            for job_id in ran:
                if job_id not in already:
                    add_event(conn, job_id, MARK, detail=why)
            if back:  # this stage is open again too: its own dependents resolved from it
                self._reopen(conn, sweep, {dep.name}, f"upstream stage '{dep.name}' reopened ({why})")

    def _settle_stage(self, conn: Connection, sweep: str, stage: str) -> None:
        specs = self._stage_specs(conn, sweep)
        spec = specs.get(stage)
        if spec and spec.needs:
            self._settle(conn, sweep, set(spec.needs))

    def _block_failed(self, conn: Connection, job_id: str, reason: str) -> None:
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status == "blocked")
            .values(status="failed", error=reason, finished_at=db_now(), updated_at=db_now())
        )
        add_event(conn, job_id, "failed", detail=reason)

    def _outcomes(self, conn: Connection, rows: Sequence[sa.Row]) -> list[handoff.Outcome]:
        ids = [r.id for r in rows if r.status == "done"]
        arts: dict[str, dict[str, dict[str, Any]]] = {}
        if ids:
            for a in conn.execute(
                sa.select(
                    artifacts.c.job_id, artifacts.c.name, artifacts.c.sha256, artifacts.c.size, artifacts.c.location
                ).where(artifacts.c.job_id.in_(ids))
            ):
                arts.setdefault(a.job_id, {})[a.name] = {
                    "sha256": a.sha256,
                    "size": a.size,
                    "location": a.location,
                    "store": "file" if a.location else "db",
                }
        return [
            handoff.Outcome(
                job_id=r.id,
                stage=r.stage,
                status=r.status,
                params=r.resolved_params if r.resolved_params is not None else r.params,
                result=r.result,
                artifacts=arts.get(r.id, {}),
                position=r.position,
            )
            for r in rows
        ]


def _status_counts(rows: Sequence[sa.Row]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
