"""What a user asks of the queue by hand: `retry` and `cancel` (one implementation, two changes), and
the preview of `enqueue --dry-run`.

A change names jobs by id prefix, or selects them by stage and sweep. A stage or sweep that does not
exist is an error (a typo would otherwise change nothing, silently); jobs the change left alone
come back with the reason, so the command can say why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.grid.spec import SweepSpec
from sweeper.store.db import ACTIVE, Database, OutagePolicy, open_db, sqlite_path
from sweeper.store.queue import EnqueueDiff, Queue
from sweeper.store.readmodel import resolve_job_id
from sweeper.store.selection import require_selection, why_untouched

# (queue, job ids, stage, sweep) -> the ids changed
Apply = Callable[[Queue, list[str], str | None, str | None], list[str]]


@dataclass(frozen=True)
class JobChange:
    """One kind of change: the jobs it takes, how it is applied, and how the command words it."""

    verb: str  # "retry"
    takes: tuple[str, ...]  # the statuses it applies to
    apply: Apply
    done: Callable[[int], str]  # how many were changed -> "retrying 3 job(s)"
    rule: str  # why a job outside `takes` was left alone


def retrying(*, failed_only: bool = False, from_scratch: bool = False) -> JobChange:
    """`sweeper retry`: failed (and, unless failed_only, cancelled) jobs back in the queue, failure counts reset.

    from_scratch: a job whose checkpoints were all refused as tampered starts over without them.
    """
    takes = ("failed",) if failed_only else ("failed", "cancelled")
    return JobChange(
        verb="retry",
        takes=takes,
        apply=lambda queue, ids, stage, sweep: queue.retry(
            ids, stage=stage, sweep=sweep, include_cancelled=not failed_only, from_scratch=from_scratch
        ),
        done=lambda n: f"retrying {n} job(s)",
        rule=f"retry takes {' or '.join(takes)} jobs",
    )


def rerunning_stale(state_dir: Path, tracking_uri: str | None, warn: Callable[[str], Any]) -> JobChange:
    """`sweeper retry --stale`: done or failed jobs whose hand-off changed since they ran, run again
    from scratch (their checkpoints and MLflow runs set aside first; sweeper/store/stale.py)."""
    from sweeper.store.stale import rerun_stale

    return JobChange(
        verb="retry",
        takes=("done", "failed"),
        apply=lambda queue, ids, stage, sweep: rerun_stale(queue, state_dir, ids, stage, sweep, tracking_uri, warn),
        done=lambda n: f"running {n} stale job(s) again",
        rule="retry --stale takes stale jobs that are done or failed",
    )


def cancelling() -> JobChange:
    """`sweeper cancel`: jobs that have not finished; a running one is dropped by its worker."""
    return JobChange(
        verb="cancel",
        takes=ACTIVE,
        apply=lambda queue, ids, stage, sweep: queue.cancel(ids, stage=stage, sweep=sweep),
        done=lambda n: f"cancelled {n} job(s)",
        rule="cancel takes jobs that have not finished",
    )


@dataclass
class ChangeResult:
    changed: list[str]
    untouched: list[str] = field(default_factory=list)  # "job abc is done", or why the selection held nothing


def change_jobs(
    database: Database, change: JobChange, job_ids: list[str], *, stage: str | None, sweep: str | None
) -> ChangeResult:
    """Resolve the id prefixes, check that --stage and --sweep name what exists, apply the change."""
    with database.read() as conn:
        ids = [resolve_job_id(conn, j) for j in job_ids]
    require_selection(database, sweep, stage)
    changed = change.apply(Queue(database), ids, stage, sweep)
    return ChangeResult(changed, why_untouched(database, ids, changed, change.takes, stage, sweep))


def preview_enqueue(db_url: str, spec: SweepSpec) -> EnqueueDiff:
    """What `enqueue` would add, change and leave, writing nothing (every job is new without a queue)."""
    path = sqlite_path(db_url)
    if db_url.startswith("sqlite") and (path is None or not path.exists()):
        return EnqueueDiff(sweep=spec.name, new=list(spec.jobs), dry_run=True)
    with open_db(db_url, create=False, outage=OutagePolicy.interactive(), readonly=True) as database:
        diff = Queue(database).diff(spec)
    diff.dry_run = True
    return diff
