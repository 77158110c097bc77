"""Stale dependents: jobs that ran on a hand-off whose upstream stage has changed since.

When `retry` (or an enqueue that adds jobs) reopens an upstream stage, settle.py's `_reopen`
sends the dependents that have not started back to `blocked` (they resolve again when the stage
settles) and marks those that already ran with a `stale` event: their result came from an
upstream choice that may no longer be the best. A later `retried` event clears the mark, so the
state lives in the job's history and needs no column of its own: a job is stale when its newest
`stale` event is newer than its newest `retried` one. `sweeper retry --stale` runs them again.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sweeper.errors import UnsafePath, UsageError
from sweeper.store.db import events, jobs
from sweeper.store.statepaths import under

MARK = "stale"  # the event that marks a job stale; its detail says which stage reopened and why
CLEAR = "retried"  # the event that clears the mark (any retry starts the job over on fresh input)


def stale_jobs(
    conn: Connection,
    *,
    ids: Iterable[str] | None = None,
    sweep: str | None = None,
    stage: str | None = None,
) -> dict[str, str]:
    """Stale job id -> why (the detail of its newest `stale` event), within the given filters."""
    marked = (
        sa.select(events.c.job_id, sa.func.max(events.c.id).label("mark"))
        .where(events.c.type == MARK)
        .group_by(events.c.job_id)
        .subquery()
    )
    cleared = (
        sa.select(events.c.job_id, sa.func.max(events.c.id).label("clear"))
        .where(events.c.type == CLEAR)
        .group_by(events.c.job_id)
        .subquery()
    )
    cond = [marked.c.mark > sa.func.coalesce(cleared.c.clear, 0)]
    if ids is not None:
        cond.append(marked.c.job_id.in_(list(ids)))
    if sweep or stage:
        cond.append(marked.c.job_id.in_(_ids_of(sweep, stage)))
    rows = conn.execute(
        sa.select(marked.c.job_id, events.c.detail)
        .select_from(marked.outerjoin(cleared, cleared.c.job_id == marked.c.job_id))
        .join(events, events.c.id == marked.c.mark)
        .where(*cond)
    ).all()
    return {r.job_id: r.detail or "" for r in rows}


def stale_in_history(history: Iterable[tuple[str, str | None]]) -> str | None:
    """Why a job is stale, from its events (type, detail) oldest first; None when it is not.

    The rule of `stale_jobs`, for a job whose events are already read (`sweeper show`).
    """
    why: str | None = None
    for type_, detail in history:
        if type_ == MARK:
            why = detail or "its upstream stage changed"
        elif type_ == CLEAR:
            why = None
    return why


def _ids_of(sweep: str | None, stage: str | None) -> sa.Select:
    cond = []
    if sweep:
        cond.append(jobs.c.sweep == sweep)
    if stage:
        cond.append(jobs.c.stage == stage)
    return sa.select(jobs.c.id).where(*cond)


def stale_counts(conn: Connection, sweep: str | None = None) -> dict[tuple[str, str], int]:
    """(sweep, stage) -> how many of its jobs are stale, for `sweeper status` and the report."""
    stale = stale_jobs(conn, sweep=sweep)
    if not stale:
        return {}
    counts: dict[tuple[str, str], int] = {}
    for r in conn.execute(sa.select(jobs.c.sweep, jobs.c.stage).where(jobs.c.id.in_(list(stale)))):
        counts[(r.sweep, r.stage)] = counts.get((r.sweep, r.stage), 0) + 1
    return counts


def forget_checkpoint_files(state_dir: Path, jobs_by_sweep: Sequence[tuple[str, str]]) -> None:
    """Delete the checkpoint directories of (sweep, job id) pairs about to run again from scratch.

    Called *before* `Queue.retry_stale` commits, while the jobs are done or failed and no worker
    writes there: a rerun on changed input must not resume from the old run's checkpoint (the
    database rows go in the same transaction as the reset; the files are what a mirrored session's
    directory scan would otherwise find).
    """
    for sweep, job_id in jobs_by_sweep:
        try:
            directory = under(state_dir, "checkpoints", sweep, job_id)
        except UnsafePath:
            continue  # a name that leads outside the state directory: nothing of ours to delete
        shutil.rmtree(directory, ignore_errors=True)


def rerun_stale(
    queue: Any, state_dir: Path, ids: Sequence[str] = (), stage: str | None = None, sweep: str | None = None
) -> list[str]:
    """`sweeper retry --stale`: the stale done or failed jobs (of `ids`, or within stage/sweep) run again.

    Their checkpoint files go first, while no worker can write there (see forget_checkpoint_files);
    then `Queue.retry_stale` resets them in one transaction. Returns the ids it reset.
    """
    from sweeper.store.results import require_selection

    require_selection(queue.db, sweep, stage)
    with queue.db.read() as conn:
        stale = stale_jobs(conn, ids=ids or None, sweep=sweep, stage=stage)
        if ids and not stale:
            raise UsageError(
                f"{'this job is' if len(ids) == 1 else 'these jobs are'} not stale",
                hint="`sweeper status` counts the stale jobs per stage; `sweeper show JOB` says why one is",
            )
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.sweep).where(jobs.c.id.in_(list(stale)), jobs.c.status.in_(("done", "failed")))
        ).all()
    forget_checkpoint_files(state_dir, [(r.sweep, r.id) for r in rows])
    return queue.retry_stale([r.id for r in rows], stage=stage, sweep=sweep) if rows else []
