"""The queue as the views read it: sweeps, stages with their job counts, and a job's params.

`sweeper status` (dashboard.py), `report` and `export` (results.py), `show` (show.py) and the
mirrored session's recovery notes (recovery.py) read through these few functions, so that a
stage's counts, its needs and the params a job ran with mean the same thing in every view. The
worker's "what is left" (`work_summary`) and the job-id prefixes the CLI accepts
(`resolve_job_id`) are reads too, so they live here rather than with the queue's transitions. Each
function takes an open read connection, so a view stays one consistent read. Nothing here
writes, and nothing imports the queue, torch or mlflow: `sweeper status` imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sweeper.errors import JobNotFound, UsageError
from sweeper.grid.spec import StageSpec
from sweeper.store.db import ACTIVE, STATUSES, db_now, events, jobs, stages, sweeps


def no_jobs() -> dict[str, int]:
    """Counts with every state present: a stage shows its zeros too."""
    return {s: 0 for s in STATUSES}


@dataclass(frozen=True)
class SweepRecord:
    name: str
    description: str
    spec_file: str | None
    created_at: float


def read_sweeps(conn: sa.Connection, sweep: str | None = None) -> list[SweepRecord]:
    """The sweeps (only `sweep`, when given) in the order they were created."""
    cond = [sweeps.c.name == sweep] if sweep else []
    return [
        SweepRecord(r.name, r.description or "", r.spec_file, r.created_at)
        for r in conn.execute(
            sa.select(sweeps.c.name, sweeps.c.description, sweeps.c.spec_file, sweeps.c.created_at)
            .where(*cond)
            .order_by(sweeps.c.created_at)
        )
    ]


def stage_counts(conn: sa.Connection, sweep: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """(sweep, stage) -> how many of its jobs are in each state: one GROUP BY on the stage index."""
    cond = [jobs.c.sweep == sweep] if sweep else []
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in conn.execute(
        sa.select(jobs.c.sweep, jobs.c.stage, jobs.c.status, sa.func.count())
        .where(*cond)
        .group_by(jobs.c.sweep, jobs.c.stage, jobs.c.status)
    ):
        counts.setdefault((r[0], r[1]), no_jobs())[r[2]] = r[3]
    return counts


@dataclass(frozen=True)
class StageRecord:
    """A stage as it was enqueued (its StageSpec: needs, description, ...) and its jobs' states."""

    sweep: str
    name: str
    kind: str
    spec: StageSpec
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_stages(conn: sa.Connection, sweep: str | None = None) -> list[StageRecord]:
    """Every stage (of `sweep`), in sweep creation order and then grid-file order, with its counts."""
    counts = stage_counts(conn, sweep)
    cond = [stages.c.sweep == sweep] if sweep else []
    return [
        StageRecord(
            r.sweep, r.name, r.kind, StageSpec.from_json(r.name, r.config), counts.get((r.sweep, r.name), no_jobs())
        )
        for r in conn.execute(
            sa.select(stages.c.sweep, stages.c.name, stages.c.kind, stages.c.config)
            .select_from(stages.join(sweeps, stages.c.sweep == sweeps.c.name))
            .where(*cond)
            .order_by(sweeps.c.created_at, stages.c.sweep, stages.c.position)
        )
    ]


@dataclass(frozen=True)
class JobParams:
    """A job's params as the grid file wrote them and as hand-offs resolved them."""

    written: dict[str, Any]
    resolved: dict[str, Any] | None  # None until every upstream job has finished (a blocked job)
    provenance: dict[str, str]  # resolved path -> the upstream job id its value came from

    @property
    def ran_with(self) -> dict[str, Any]:
        """What the job runs with: resolved when it has hand-offs, else as written."""
        return self.resolved if self.resolved is not None else self.written

    @classmethod
    def of(cls, row: Any) -> JobParams:
        """From a jobs row that has the params, resolved_params and provenance columns."""
        return cls(row.params or {}, row.resolved_params, row.provenance or {})


def newest_event_detail(conn: sa.Connection, type_: str) -> dict[str, Any] | None:
    """The newest queue-wide event of `type_` (no job id): {ts, **its JSON detail}, or None.

    A detail that is not JSON (written by hand, or cut short) comes back as {"summary": text}.
    """
    row = conn.execute(
        sa.select(events.c.ts, events.c.detail)
        .where(events.c.type == type_, events.c.job_id.is_(None))
        .order_by(events.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    try:
        detail = json.loads(row.detail or "{}")
    except ValueError:
        detail = {"summary": row.detail}
    return {"ts": row.ts, **detail}


@dataclass
class WorkSummary:
    """What is left for a worker with these filters."""

    pending_now: int
    pending_later: int
    next_ready_in: float | None
    running: int
    blocked: int


def work_summary(
    conn: sa.Connection, *, stages_filter: Sequence[str] | None = None, sweep: str | None = None
) -> WorkSummary:
    """What is left for a worker with these filters: whether to claim again, wait, or exit."""
    cond: list[sa.ColumnElement[bool]] = []
    if stages_filter:
        cond.append(jobs.c.stage.in_(list(stages_filter)))
    if sweep:
        cond.append(jobs.c.sweep == sweep)
    now = conn.execute(sa.select(db_now())).scalar_one()
    rows = conn.execute(
        sa.select(jobs.c.status, sa.func.count(), sa.func.min(jobs.c.not_before))
        .where(jobs.c.status.in_(ACTIVE), *cond)
        .group_by(jobs.c.status)
    ).all()
    later = conn.execute(
        sa.select(sa.func.count(), sa.func.min(jobs.c.not_before)).where(
            jobs.c.status == "pending", jobs.c.not_before > now, *cond
        )
    ).first()
    counts = {r[0]: r[1] for r in rows}
    pending_later = later[0] if later else 0
    next_in = max(0.0, later[1] - now) if later and later[1] is not None else None
    return WorkSummary(
        pending_now=counts.get("pending", 0) - pending_later,
        pending_later=pending_later,
        next_ready_in=next_in,
        running=counts.get("running", 0),
        blocked=counts.get("blocked", 0),
    )


def failed_job_ids(
    conn: sa.Connection, *, stages_filter: Sequence[str] | None = None, sweep: str | None = None
) -> list[str]:
    """The failed jobs a worker with these filters leaves behind, in queue order (for its last line)."""
    cond = [jobs.c.status == "failed"]
    if stages_filter:
        cond.append(jobs.c.stage.in_(list(stages_filter)))
    if sweep:
        cond.append(jobs.c.sweep == sweep)
    return list(conn.execute(sa.select(jobs.c.id).where(*cond).order_by(jobs.c.position)).scalars())


def resolve_job_id(conn: sa.Connection, prefix: str) -> str:
    """Accept a unique prefix of a job id, as git does for commits."""
    prefix = prefix.strip()
    if len(prefix) < 4:
        raise UsageError(f"job id '{prefix}' is too short", hint="give at least 4 characters of the id")
    # startswith(autoescape): `_` and `%` in what the user typed are characters, not wildcards.
    ids = (
        conn.execute(sa.select(jobs.c.id).where(jobs.c.id.startswith(prefix, autoescape=True)).limit(3)).scalars().all()
    )
    if not ids:
        raise JobNotFound(f"no job with id '{prefix}'", hint="`sweeper status` lists job ids")
    if len(ids) > 1:
        raise UsageError(f"job id '{prefix}' is ambiguous ({', '.join(ids)}, ...)", hint="give more characters")
    return ids[0]
