"""Stale dependents: jobs that ran on a hand-off whose upstream stage has changed since.

When `retry` (or an enqueue that adds jobs) reopens an upstream stage, settle.py's `_reopen`
sends the dependents that have not started back to `blocked` (they resolve again when the stage
settles) and marks those that already ran with a `stale` event: their result came from an
upstream choice that may no longer be the best. `sweeper retry --stale` runs them again and
records a `rerun` event, which clears the mark. So the state lives in the job's history and
needs no column (no schema change): a job is stale when its newest `stale` event is newer than
its newest `rerun` one.
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
from sweeper.store.selection import require_selection
from sweeper.store.statepaths import under

MARK = "stale"  # the event that marks a job stale; its detail says which stage reopened and why
# The event that clears the mark: `retry --stale` starts the job over on its upstream's current
# results. Not `retried`: a plain retry (or a failure's automatic one) runs on the same old input.
CLEAR = "rerun"


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


def supersede_tracking_runs(tracking_uri: str | None, jobs_by_sweep: Sequence[tuple[str, str]]) -> str | None:
    """Retag the MLflow runs of (sweep, job id) pairs about to run again, so the rerun opens a run of its own.

    A worker continues the run tagged with its job id (one run per job across attempts, its
    logged steps never repeated); a rerun on changed input is a new run. The old runs keep their
    history, tagged `sweeper.superseded` and with `job_id` set to `<id>/stale`. Called before the
    queue transaction, while the jobs are done or failed. Returns a warning when the store could
    not be reached (the rerun then continues the old run), None otherwise.
    """
    if not tracking_uri or not jobs_by_sweep:
        return None
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        return None  # no MLflow store: nothing was tracked
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        for sweep, job_id in jobs_by_sweep:
            exp = client.get_experiment_by_name(sweep)
            if exp is None:
                continue
            for run in client.search_runs([exp.experiment_id], filter_string=f"tags.job_id = '{job_id}'"):
                client.set_tag(run.info.run_id, "sweeper.superseded", "true")
                client.set_tag(run.info.run_id, "job_id", f"{job_id}/stale")
    except Exception as exc:  # the queue is what matters; MLflow only gets a second run or not
        return f"could not mark the old MLflow runs as superseded ({type(exc).__name__}: {exc})"
    return None


def rerun_stale(
    queue: Any,
    state_dir: Path,
    ids: Sequence[str] = (),
    stage: str | None = None,
    sweep: str | None = None,
    tracking_uri: str | None = None,
    warn: Any = None,
) -> list[str]:
    """`sweeper retry --stale`: the stale done or failed jobs (of `ids`, or within stage/sweep) run again.

    Their checkpoint files and MLflow runs are set aside first, while no worker can write there
    (forget_checkpoint_files, supersede_tracking_runs); then `Queue.retry_stale` resets them in
    one transaction. Returns the ids it reset.
    """
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
    pairs = [(r.sweep, r.id) for r in rows]
    forget_checkpoint_files(state_dir, pairs)
    problem = supersede_tracking_runs(tracking_uri, pairs)
    if problem and warn is not None:
        warn(problem)
    return queue.retry_stale([r.id for r in rows], stage=stage, sweep=sweep) if rows else []
