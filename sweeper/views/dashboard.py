"""`sweeper status`: what is done, running, blocked and failed, and the leaders so far.

`collect()` reads a StatusSnapshot (plain dataclasses, no rich) in a handful of aggregate
queries, so it stays fast on a 10,000-job queue; sweeps, stages and their counts come from
readmodel.py, which the other views share; `to_json()` gives the documented `--json` schema
(`sweeper.status/1`, see docs/status-json.md). dashview.py draws it. Nothing here
imports torch or mlflow.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from sweeper.errors import error_summary
from sweeper.grid.ranking import Metric, metric_value, rank_metrics, unknown_metric
from sweeper.store.db import ACTIVE, STATUSES, Database, db_now, jobs, workers
from sweeper.store.readmodel import read_stages, read_sweeps
from sweeper.store.stale import stale_counts

JSON_SCHEMA = "sweeper.status/1"
LOST_WORKER_S = 120.0  # a "running" worker silent this long has most likely died (kill -9, disconnect)
_EPOCH = re.compile(r"\bepoch\s+(\d+)(?:\s*/\s*(\d+))?", re.IGNORECASE)


@dataclass
class SweepRow:
    name: str
    description: str
    spec_file: str | None
    created_at: float


@dataclass
class StageRow:
    sweep: str
    stage: str
    kind: str
    counts: dict[str, int]
    total: int
    needs: list[str]
    waiting_on: str | None = None  # why blocked jobs wait, e.g. "waiting on model_search: 60/72 done"
    mean_duration_s: float | None = None  # of its finished (done) jobs
    throughput_per_h: float | None = None  # done jobs per hour while the stage was running
    eta_s: float | None = None  # None: unknown (no job of the stage has finished yet)
    stale: int = 0  # jobs that ran on a hand-off whose upstream stage changed since (store/stale.py)

    @property
    def remaining(self) -> int:
        return sum(self.counts.get(s, 0) for s in ACTIVE)


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
    epoch: int | None
    epochs: int | None
    heartbeat_age_s: float | None


@dataclass
class LeaderRow:
    rank: int
    id: str
    sweep: str
    stage: str
    label: str
    value: float
    metrics: dict[str, float]  # every numeric top-level value of the job's result


@dataclass
class Leaderboard:
    metric: str
    mode: str
    k: int
    rows: list[LeaderRow] = field(default_factory=list)
    available: list[str] = field(default_factory=list)  # numeric metrics of the newest result (a hint)


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
    status: str  # running | stopped | lost (running but silent for LOST_WORKER_S)
    heartbeat_age_s: float
    current_job: str | None


@dataclass
class StatusSnapshot:
    database: str
    time: float
    sweep: str | None
    sweeps: list[SweepRow] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    running: list[RunningRow] = field(default_factory=list)
    leaderboard: Leaderboard | None = None
    failed: list[FailedRow] = field(default_factory=list)
    failed_total: int = 0
    workers: list[WorkerRow] = field(default_factory=list)
    workers_hidden: int = 0

    def totals(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for row in self.stages:
            for status, n in row.counts.items():
                out[status] += n
        return out

    @property
    def workers_live(self) -> int:
        return sum(1 for w in self.workers if w.status == "running")

    @property
    def throughput_per_h(self) -> float | None:
        rates = [s.throughput_per_h for s in self.stages if s.throughput_per_h and s.counts.get("running")]
        return sum(rates) if rates else None

    @property
    def eta_s(self) -> float | None:
        """Sum of the stage ETAs that are known (each already divided among the live workers)."""
        known = [s.eta_s for s in self.stages if s.remaining and s.eta_s is not None]
        return sum(known) if known else (0.0 if not any(s.remaining for s in self.stages) else None)

    @property
    def eta_complete(self) -> bool:
        return all(s.eta_s is not None for s in self.stages if s.remaining)


def parse_epoch(message: str | None) -> tuple[int | None, int | None]:
    """("epoch 3/15 loss 0.41") -> (3, 15): jobs report epochs in their progress message."""
    m = _EPOCH.search(message or "")
    if not m:
        return None, None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


# ---------------------------------------------------------------------------------------------
# Reading


def collect(
    db: Database,
    sweep: str | None = None,
    *,
    by: Metric | None = None,
    top: int = 5,
    failures: int = 5,
    max_workers: int = 8,
    stale_worker_s: float = 3600.0,
) -> StatusSnapshot:
    """One consistent read of the queue: a few GROUP BY queries plus the handful of rows shown."""
    by = by or Metric("test_accuracy", "max")
    with db.read() as conn:
        now = conn.execute(sa.select(db_now())).scalar_one()
        snap = StatusSnapshot(database=db.display_url, time=now, sweep=sweep)
        cond = [jobs.c.sweep == sweep] if sweep else []

        snap.sweeps = [SweepRow(s.name, s.description, s.spec_file, s.created_at) for s in read_sweeps(conn, sweep)]

        _read_stages(conn, snap, sweep, cond)
        _read_workers(conn, snap, stale_worker_s, max_workers)
        _estimate(snap)
        _read_running(conn, snap, cond, now)
        if top > 0:
            snap.leaderboard = _read_leaderboard(conn, db.dialect, by, top, cond)
        _read_failures(conn, snap, cond, failures)
    return snap


def _read_stages(conn: sa.Connection, snap: StatusSnapshot, sweep: str | None, cond: list) -> None:
    # Durations of finished jobs: the ETA's only evidence. started_at is the first claim, so a job
    # resumed after a long pause counts long; the mean is still the honest number we have.
    timing: dict[tuple[str, str], sa.Row] = {}
    duration = jobs.c.finished_at - jobs.c.started_at
    for r in conn.execute(
        sa.select(
            jobs.c.sweep,
            jobs.c.stage,
            sa.func.count().label("n"),
            sa.func.avg(duration).label("mean"),
            sa.func.min(jobs.c.started_at).label("first"),
            sa.func.max(jobs.c.finished_at).label("last"),
        )
        .where(jobs.c.status == "done", jobs.c.started_at.is_not(None), jobs.c.finished_at.is_not(None), *cond)
        .group_by(jobs.c.sweep, jobs.c.stage)
    ):
        timing[(r.sweep, r.stage)] = r

    for st in read_stages(conn, sweep):
        row = StageRow(st.sweep, st.name, st.kind, st.counts, st.total, list(st.spec.needs))
        t = timing.get((st.sweep, st.name))
        if t is not None and t.n:
            row.mean_duration_s = max(0.0, float(t.mean))
            span = float(t.last) - float(t.first)
            row.throughput_per_h = 3600.0 * t.n / span if span > 0 else None
        snap.stages.append(row)

    stale = stale_counts(conn, sweep)
    for row in snap.stages:
        row.stale = stale.get((row.sweep, row.stage), 0)
    by_key = {(s.sweep, s.stage): s for s in snap.stages}
    for row in snap.stages:
        if row.counts.get("blocked"):
            parts = []
            for need in row.needs:
                up = by_key.get((row.sweep, need))
                if up is not None:
                    parts.append(f"{need}: {up.counts.get('done', 0)}/{up.total} done")
            row.waiting_on = "waiting on " + ", ".join(parts) if parts else None


def _read_workers(conn: sa.Connection, snap: StatusSnapshot, stale_worker_s: float, limit: int) -> None:
    # Workers stamp their heartbeats with their own clock (time.time()), so compare with ours.
    wall = time.time()
    order = {"running": 0, "lost": 1, "stopped": 2}
    found: list[tuple[int, float, WorkerRow]] = []
    for r in conn.execute(
        sa.select(workers).where(
            sa.or_(workers.c.status == "running", workers.c.last_heartbeat > wall - stale_worker_s)
        )
    ):
        age = max(0.0, wall - r.last_heartbeat)
        status = "lost" if r.status == "running" and age > LOST_WORKER_S else r.status
        found.append((order.get(status, 3), r.started_at, WorkerRow(r.id, r.host, r.pid, status, age, r.current_job)))
    # Stable between redraws: live ones first, each group in start order.
    found.sort(key=lambda t: (t[0], t[1]))
    snap.workers = [w for _, _, w in found[:limit]]
    snap.workers_hidden = max(0, len(found) - limit)


def _estimate(snap: StatusSnapshot) -> None:
    """ETA per stage: the work left, at the mean duration of its finished jobs, shared by the live workers."""
    parallel = max(1, snap.workers_live)
    for row in snap.stages:
        if not row.remaining:
            row.eta_s = 0.0
        elif row.mean_duration_s is not None:
            row.eta_s = row.remaining * row.mean_duration_s / parallel


def _read_running(conn: sa.Connection, snap: StatusSnapshot, cond: list, now: float) -> None:
    by_key = {(s.sweep, s.stage): s for s in snap.stages}
    parallel = max(1, snap.workers_live)
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
        .order_by(jobs.c.started_at, jobs.c.id)
    ):
        epoch, epochs = parse_epoch(r.progress_message)
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
                epoch,
                epochs,
                max(0.0, now - r.updated_at),
            )
        )
        # A running job is partly done: take its finished fraction off the stage's ETA.
        stage = by_key.get((r.sweep, r.stage))
        if stage is not None and stage.eta_s and stage.mean_duration_s and r.progress:
            stage.eta_s = max(0.0, stage.eta_s - min(1.0, r.progress) * stage.mean_duration_s / parallel)


def _read_leaderboard(conn: sa.Connection, dialect: str, by: Metric, top: int, cond: list) -> Leaderboard:
    board = Leaderboard(by.name, by.mode, top)
    value = metric_value(jobs.c.result, by.name, dialect).label("value")
    order = value.desc() if by.mode == "max" else value.asc()
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.sweep, jobs.c.stage, jobs.c.label, jobs.c.result, value)
        .where(jobs.c.status == "done", value.is_not(None), *cond)
        .order_by(order, jobs.c.position)
        .limit(top)
    ).all()
    for i, r in enumerate(rows, 1):
        board.rows.append(LeaderRow(i, r.id, r.sweep, r.stage, r.label, float(r.value), _numbers(r.result)))
    if not rows:
        newest = conn.execute(
            sa.select(jobs.c.result).where(jobs.c.status == "done", *cond).order_by(jobs.c.finished_at.desc()).limit(1)
        ).scalar_one_or_none()
        board.available = rank_metrics(by.name, dict.fromkeys(_numbers(newest), 1))
    return board


def check_metric(db: Database, metric: Metric, sweep: str | None = None, *, option: str = "--by") -> None:
    """A UsageError unless some finished job (of `sweep`) reports `metric`.

    Before any job has finished with numbers there is nothing to check against, so any name
    passes. The full read of results happens only when the metric is missing.
    """
    cond = [jobs.c.status == "done", *([jobs.c.sweep == sweep] if sweep else [])]
    value = metric_value(jobs.c.result, metric.name, db.dialect)
    counts: Counter[str] = Counter()
    with db.read() as conn:
        if conn.execute(sa.select(jobs.c.id).where(*cond, value.is_not(None)).limit(1)).first() is not None:
            return
        for (result,) in conn.execute(sa.select(jobs.c.result).where(*cond)):
            counts.update(_numbers(result).keys())
    if counts:
        raise unknown_metric(metric, counts, option=option, scope=f" of sweep '{sweep}'" if sweep else "")


def _numbers(result: Any) -> dict[str, float]:
    if not isinstance(result, dict):
        return {}
    return {
        k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    }


def _read_failures(conn: sa.Connection, snap: StatusSnapshot, cond: list, limit: int) -> None:
    snap.failed_total = conn.execute(
        sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == "failed", *cond)
    ).scalar_one()
    if not limit:
        return
    for r in conn.execute(
        sa.select(
            jobs.c.id, jobs.c.sweep, jobs.c.stage, jobs.c.label, jobs.c.error, jobs.c.failures, jobs.c.finished_at
        )
        .where(jobs.c.status == "failed", *cond)
        .order_by(jobs.c.finished_at.desc(), jobs.c.id)
        .limit(limit)
    ):
        snap.failed.append(
            FailedRow(r.id, r.sweep, r.stage, r.label, error_summary(r.error), r.failures, r.finished_at)
        )


# ---------------------------------------------------------------------------------------------
# JSON


def to_json(snap: StatusSnapshot) -> dict[str, Any]:
    """The `--json` document. Schema `sweeper.status/1`: keys are only ever added, never changed."""
    return {
        "schema": JSON_SCHEMA,
        "database": snap.database,
        "time": snap.time,
        "sweep": snap.sweep,
        "sweeps": [asdict(s) for s in snap.sweeps],
        "totals": snap.totals(),
        "workers_live": snap.workers_live,
        "throughput_per_h": snap.throughput_per_h,
        "eta_s": snap.eta_s,
        "eta_complete": snap.eta_complete,
        "stages": [asdict(s) for s in snap.stages],
        "running": [asdict(r) for r in snap.running],
        "leaderboard": asdict(snap.leaderboard) if snap.leaderboard else None,
        "failed": [asdict(f) for f in snap.failed],
        "failed_total": snap.failed_total,
        "workers": [asdict(w) for w in snap.workers],
        "workers_hidden": snap.workers_hidden,
    }
