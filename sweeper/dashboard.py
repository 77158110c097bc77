"""`sweeper status`: what is done, running, blocked and failed, read in a handful of queries.

`collect()` reads a StatusSnapshot (plain dataclasses, no rich), `to_json()` gives the documented
`--json` schema, and `render()` draws it with rich. Nothing here imports torch or mlflow.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from .db import STATUSES, Database, db_now, jobs, stages, sweeps, workers
from .spec import StageSpec

JSON_SCHEMA = "sweeper.status/1"


@dataclass
class StageRow:
    sweep: str
    stage: str
    kind: str
    counts: dict[str, int]
    total: int
    needs: list[str]
    waiting_on: str | None = None  # why blocked jobs wait, e.g. "model_search: 60/72 done"


@dataclass
class RunningRow:
    id: str
    sweep: str
    stage: str
    label: str
    worker: str | None
    attempt: int
    progress: float | None
    message: str | None
    heartbeat_age_s: float | None


@dataclass
class FailedRow:
    id: str
    sweep: str
    stage: str
    label: str
    error: str
    failures: int
    finished_at: float | None


@dataclass
class WorkerRow:
    id: str
    host: str
    pid: int
    status: str
    heartbeat_age_s: float
    current_job: str | None


@dataclass
class StatusSnapshot:
    database: str
    time: float
    sweep: str | None
    stages: list[StageRow] = field(default_factory=list)
    running: list[RunningRow] = field(default_factory=list)
    failed: list[FailedRow] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for row in self.stages:
            for status, n in row.counts.items():
                out[status] += n
        return out


def error_summary(text: str | None) -> str:
    """The line of an error worth showing: the exception line of a traceback, else the first."""
    if not text:
        return ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:300]


def collect(
    db: Database, sweep: str | None = None, *, failures: int = 10, stale_worker_s: float = 3600.0
) -> StatusSnapshot:
    with db.read() as conn:
        now = conn.execute(sa.select(db_now())).scalar_one()
        snap = StatusSnapshot(database=db.display_url, time=now, sweep=sweep)
        cond = [jobs.c.sweep == sweep] if sweep else []

        counts: dict[tuple[str, str], dict[str, int]] = {}
        for r in conn.execute(
            sa.select(jobs.c.sweep, jobs.c.stage, jobs.c.status, sa.func.count())
            .where(*cond)
            .group_by(jobs.c.sweep, jobs.c.stage, jobs.c.status)
        ):
            counts.setdefault((r[0], r[1]), {s: 0 for s in STATUSES})[r[2]] = r[3]
        stage_cond = [stages.c.sweep == sweep] if sweep else []
        stage_rows = conn.execute(
            sa.select(stages.c.sweep, stages.c.name, stages.c.kind, stages.c.config)
            .select_from(stages.join(sweeps, stages.c.sweep == sweeps.c.name))
            .where(*stage_cond)
            .order_by(sweeps.c.created_at, stages.c.position)
        ).all()
        for r in stage_rows:
            spec = StageSpec.from_json(r.name, r.config)
            c = counts.get((r.sweep, r.name), {s: 0 for s in STATUSES})
            snap.stages.append(StageRow(r.sweep, r.name, r.kind, c, sum(c.values()), list(spec.needs)))
        by_key = {(s.sweep, s.stage): s for s in snap.stages}
        for row in snap.stages:
            if row.counts.get("blocked"):
                parts = []
                for need in row.needs:
                    up = by_key.get((row.sweep, need))
                    if up is not None:
                        parts.append(f"{need}: {up.counts.get('done', 0)}/{up.total} done")
                row.waiting_on = "waiting on " + ", ".join(parts) if parts else None

        for r in conn.execute(
            sa.select(
                jobs.c.id,
                jobs.c.sweep,
                jobs.c.stage,
                jobs.c.label,
                jobs.c.lease_owner,
                jobs.c.attempt,
                jobs.c.progress,
                jobs.c.progress_message,
                jobs.c.updated_at,
            )
            .where(jobs.c.status == "running", *cond)
            .order_by(jobs.c.started_at)
        ):
            snap.running.append(
                RunningRow(
                    r.id,
                    r.sweep,
                    r.stage,
                    r.label,
                    r.lease_owner,
                    r.attempt,
                    r.progress,
                    r.progress_message,
                    max(0.0, now - r.updated_at),
                )
            )

        for r in conn.execute(
            sa.select(
                jobs.c.id, jobs.c.sweep, jobs.c.stage, jobs.c.label, jobs.c.error, jobs.c.failures, jobs.c.finished_at
            )
            .where(jobs.c.status == "failed", *cond)
            .order_by(jobs.c.finished_at.desc())
            .limit(failures)
        ):
            snap.failed.append(
                FailedRow(r.id, r.sweep, r.stage, r.label, error_summary(r.error), r.failures, r.finished_at)
            )

        for r in conn.execute(
            sa.select(workers)
            .where(sa.or_(workers.c.status == "running", workers.c.last_heartbeat > time.time() - stale_worker_s))
            .order_by(workers.c.started_at)
        ):
            snap.workers.append(
                WorkerRow(r.id, r.host, r.pid, r.status, max(0.0, time.time() - r.last_heartbeat), r.current_job)
            )
    return snap


def to_json(snap: StatusSnapshot) -> dict[str, Any]:
    return {
        "schema": JSON_SCHEMA,
        "database": snap.database,
        "time": snap.time,
        "sweep": snap.sweep,
        "totals": snap.totals(),
        "stages": [asdict(s) for s in snap.stages],
        "running": [asdict(r) for r in snap.running],
        "failed": [asdict(f) for f in snap.failed],
        "workers": [asdict(w) for w in snap.workers],
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(snap: StatusSnapshot) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    totals = snap.totals()
    head = Text(f"{snap.database}  ", style="bold")
    head.append("  ".join(f"{k} {v}" for k, v in totals.items() if v) or "no jobs", style="")
    parts.append(head)

    table = Table(title="stages", title_justify="left", expand=False)
    for col in ("sweep", "stage", "kind", *STATUSES, "note"):
        table.add_column(col, justify="right" if col in STATUSES else "left")
    for s in snap.stages:
        table.add_row(
            s.sweep, s.stage, s.kind, *[str(s.counts.get(st, 0) or "") for st in STATUSES], s.waiting_on or ""
        )
    parts.append(table)

    if snap.running:
        t = Table(title="running", title_justify="left")
        for col in ("job", "stage", "params", "worker", "progress", "heartbeat", "attempt"):
            t.add_column(col)
        for r in snap.running:
            pct = f"{100 * r.progress:.0f}%" if r.progress is not None else "-"
            t.add_row(
                r.id,
                r.stage,
                r.label,
                r.worker or "-",
                f"{pct} {r.message or ''}".strip(),
                _age(r.heartbeat_age_s),
                str(r.attempt),
            )
        parts.append(t)

    if snap.failed:
        t = Table(title="failed", title_justify="left")
        for col in ("job", "stage", "params", "error"):
            t.add_column(col, overflow="fold")
        for f in snap.failed:
            t.add_row(f.id, f.stage, f.label, f.error)
        parts.append(t)

    if snap.workers:
        t = Table(title="workers", title_justify="left")
        for col in ("worker", "host", "pid", "status", "heartbeat", "job"):
            t.add_column(col)
        for w in snap.workers:
            t.add_row(w.id, w.host, str(w.pid), w.status, _age(w.heartbeat_age_s), w.current_job or "-")
        parts.append(t)
    return Group(*parts)
