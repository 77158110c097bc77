"""What a user asks of the queue by hand: `retry` and `cancel` (one implementation, two changes), and
the preview of `enqueue --dry-run`.

A change names jobs by id prefix, or selects them by stage and sweep. A stage or sweep that does not
exist is an error (a typo would otherwise change nothing, silently); jobs the change left alone
come back with the reason, so the command can say why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sweeper.grid.spec import SweepSpec
from sweeper.store.db import ACTIVE, Database, open_db, sqlite_path
from sweeper.store.queue import EnqueueDiff, Queue
from sweeper.store.readmodel import resolve_job_id
from sweeper.store.results import require_stage, require_sweep, why_untouched

# (queue, job ids, stage, sweep) -> the ids changed
Apply = Callable[[Queue, list[str], str | None, str | None], list[str]]


@dataclass(frozen=True)
class JobChange:
    """One kind of change: the jobs it takes, how it is applied, and how the command words it."""

    verb: str  # "retry"
    takes: tuple[str, ...]  # the statuses it applies to
    apply: Apply
    done: str  # "retrying 3 job(s)"
    rule: str  # why a job outside `takes` was left alone


def retrying(*, failed_only: bool = False) -> JobChange:
    """`sweeper retry`: failed (and, unless failed_only, cancelled) jobs back in the queue, failure counts reset."""
    takes = ("failed",) if failed_only else ("failed", "cancelled")
    return JobChange(
        verb="retry",
        takes=takes,
        apply=lambda queue, ids, stage, sweep: queue.retry(
            ids, stage=stage, sweep=sweep, include_cancelled=not failed_only
        ),
        done="retrying",
        rule=f"retry takes {' or '.join(takes)} jobs",
    )


def cancelling() -> JobChange:
    """`sweeper cancel`: jobs that have not finished; a running one is dropped by its worker."""
    return JobChange(
        verb="cancel",
        takes=ACTIVE,
        apply=lambda queue, ids, stage, sweep: queue.cancel(ids, stage=stage, sweep=sweep),
        done="cancelled",
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
    if sweep:
        require_sweep(database, sweep)
    if stage:
        require_stage(database, stage, sweep)
    changed = change.apply(Queue(database), ids, stage, sweep)
    return ChangeResult(changed, why_untouched(database, ids, changed, change.takes, stage, sweep))


def preview_enqueue(db_url: str, spec: SweepSpec) -> EnqueueDiff:
    """What `enqueue` would add, change and leave, writing nothing (every job is new without a queue)."""
    path = sqlite_path(db_url)
    if db_url.startswith("sqlite") and (path is None or not path.exists()):
        return EnqueueDiff(sweep=spec.name, new=list(spec.jobs), dry_run=True)
    with open_db(db_url, create=False) as database:
        diff = Queue(database).diff(spec)
    diff.dry_run = True
    return diff
