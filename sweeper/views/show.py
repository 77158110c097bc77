"""`sweeper show JOB`: everything the queue knows about one job.

Params as written and as resolved (with the upstream job each hand-off came from), the attempt
history rebuilt from the events table, result metrics, checkpoints, artifacts and the error with
its traceback. `collect_job()` reads a JobDetail, `to_json()` gives `--json`
(schema `sweeper.job/1`), `render()` draws it. Nothing here imports torch or mlflow.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sweeper import mappings
from sweeper.config import mask_password
from sweeper.errors import JobNotFound, UnsafePath, error_summary
from sweeper.store.db import Database, artifacts, checkpoints, db_now, events, jobs
from sweeper.store.quarantine import is_quarantined
from sweeper.store.readmodel import JobParams
from sweeper.store.results import flatten, is_handoff, is_outcome, is_reference
from sweeper.store.stale import stale_in_history
from sweeper.store.statepaths import check_location, stored
from sweeper.views.dashview import duration
from sweeper.views.safe_text import text as safe
from sweeper.views.safe_text import visible

JSON_SCHEMA = "sweeper.job/1"
# Events that end an attempt, and what they mean for it.
ENDINGS = {
    "done": "done",
    "failed": "failed",
    "retried": "failed, will retry",
    "released": "released",
    "lease_lost": "lease lost",
}


@dataclass
class ParamRow:
    key: str
    written: Any  # None when the key was not in the grid file (inherited)
    resolved: Any
    source: str | None  # upstream job id the value came from (hand-off or inherit)


@dataclass
class Attempt:
    number: int
    worker: str | None
    claimed_at: float | None
    ended_at: float | None
    outcome: str  # done | failed | failed, will retry | released | lease lost | running | unknown
    detail: str | None
    checkpoints: int


@dataclass
class EventRow:
    ts: float
    type: str
    attempt: int | None
    worker: str | None
    detail: str | None


@dataclass
class StoredFile:
    name: str
    sha256: str
    size: int
    where: str  # a path under the state directory, or "database"
    present: bool | None  # a file that is missing on this machine: False; database blobs: None
    created_at: float
    attempt: int | None = None
    refused: str | None = None  # why a stored location is unsafe: shown as refused, never looked at
    quarantined: bool = False  # a checkpoint refused as possibly malicious, kept in quarantine/


@dataclass
class JobDetail:
    id: str
    sweep: str
    stage: str
    kind: str
    status: str
    label: str
    time: float
    attempt: int
    failures: int
    max_failures: int
    interruptions: int
    max_interruptions: int
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float | None
    progress_message: str | None
    worker: str | None
    lease_expires_in_s: float | None
    not_before_in_s: float | None
    tracking_run_id: str | None
    tracking_uri: str | None  # the MLflow store of that run, password masked (from the `tracking` event)
    params_written: dict[str, Any]
    params_resolved: dict[str, Any] | None
    provenance: dict[str, str]
    params: list[ParamRow] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    error_summary: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    checkpoints: list[StoredFile] = field(default_factory=list)
    artifacts: list[StoredFile] = field(default_factory=list)
    # why the job ran on a hand-off whose upstream stage changed since (store/stale.py); None: it did not
    stale: str | None = None


def collect_job(db: Database, job_id: str, state_dir: Path | None = None) -> JobDetail:
    """Read one job (its full id; resolve prefixes with readmodel.resolve_job_id first)."""
    with db.read() as conn:
        now = conn.execute(sa.select(db_now())).scalar_one()
        r = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if r is None:
            raise JobNotFound(f"no job with id '{job_id}'", hint="`sweeper status` lists job ids")
        ev = conn.execute(
            sa.select(events.c.ts, events.c.type, events.c.attempt, events.c.worker, events.c.detail)
            .where(events.c.job_id == job_id)
            .order_by(events.c.id)
        ).all()
        ckpts = conn.execute(
            sa.select(
                checkpoints.c.seq,
                checkpoints.c.sha256,
                checkpoints.c.size,
                checkpoints.c.location,
                checkpoints.c.attempt,
                checkpoints.c.created_at,
            )
            .where(checkpoints.c.job_id == job_id)
            .order_by(checkpoints.c.seq)
        ).all()
        arts = conn.execute(
            sa.select(
                artifacts.c.name, artifacts.c.sha256, artifacts.c.size, artifacts.c.location, artifacts.c.created_at
            )
            .where(artifacts.c.job_id == job_id)
            .order_by(artifacts.c.name)
        ).all()

    params = JobParams.of(r)
    detail = JobDetail(
        id=r.id,
        sweep=r.sweep,
        stage=r.stage,
        kind=r.kind,
        status=r.status,
        label=r.label or "",
        time=now,
        attempt=r.attempt,
        failures=r.failures,
        max_failures=r.max_failures,
        interruptions=r.interruptions,
        max_interruptions=r.max_interruptions,
        priority=r.priority,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        progress=r.progress,
        progress_message=r.progress_message,
        worker=r.lease_owner,
        lease_expires_in_s=(r.lease_expires_at - now) if r.lease_expires_at is not None else None,
        not_before_in_s=(r.not_before - now) if r.not_before is not None and r.not_before > now else None,
        tracking_run_id=r.tracking_run_id,
        tracking_uri=_tracking_uri(ev, r.tracking_run_id),
        params_written=params.written,
        params_resolved=params.resolved,
        provenance=params.provenance,
        result=r.result,
        error=mask_password(r.error) if r.error else r.error,  # rows written before errors were masked
        error_summary=error_summary(r.error),
    )
    detail.params = param_rows(detail.params_written, detail.params_resolved, detail.provenance)
    detail.events = [EventRow(e.ts, e.type, e.attempt, e.worker, e.detail and mask_password(e.detail)) for e in ev]
    detail.attempts = attempts_from_events(detail.events, r.status)
    detail.stale = stale_in_history((e.type, e.detail) for e in detail.events)
    detail.checkpoints = [
        _stored_file(f"seq {c.seq}", c, "checkpoints", r, state_dir, c.created_at, c.attempt) for c in ckpts
    ]
    detail.artifacts = [_stored_file(a.name, a, "artifacts", r, state_dir, a.created_at) for a in arts]
    return detail


def _tracking_uri(evs: Any, run_id: str | None) -> str | None:
    """The store named by the newest `tracking` event for the job's run (older versions wrote none)."""
    for e in reversed(evs):
        if e.type != "tracking" or not e.detail:
            continue
        try:
            found = json.loads(e.detail)
        except ValueError:
            continue
        if found.get("run_id") == run_id:
            return mask_password(str(found.get("uri") or "")) or None
    return None


def _stored_file(
    name: str, f: Any, area: str, job: Any, state_dir: Path | None, created_at: float, attempt: int | None = None
) -> StoredFile:
    """A checkpoint or artifact row, its location checked before anything looks at the file.

    A location from the queue may name any path (`../../etc/passwd`): checked by form first
    (statepaths.check_location), and only a safe one is resolved and stat-ed, so `show` never
    tells whether a file outside the state directory exists.
    """
    out = StoredFile(name, f.sha256, f.size, "database", None, created_at, attempt)
    if not f.location:
        return out
    out.where = f.location
    out.quarantined = is_quarantined(f.location)
    if out.quarantined:
        area = "quarantine"
    try:
        check_location(f.location, area, job.id, job.sweep)
        if state_dir is not None:
            out.present = stored(state_dir, f.location, area, job.id, job.sweep).is_file()
    except UnsafePath as exc:
        out.refused = exc.message
    return out


def param_rows(written: dict[str, Any], resolved: dict[str, Any] | None, provenance: dict[str, str]) -> list[ParamRow]:
    """One row per dotted key: its value in the grid file and what the job ran with."""
    flat_written = _flat(written)
    flat_resolved = _flat(resolved) if resolved is not None else {}
    keys = list(flat_written) + [k for k in flat_resolved if k not in flat_written]
    rows = []
    for key in keys:
        source = next((job for path, job in provenance.items() if key == path or key.startswith(path + ".")), None)
        rows.append(
            ParamRow(
                key,
                flat_written.get(key),
                flat_resolved.get(key) if resolved is not None else None,
                source,
            )
        )
    return rows


def _flat(params: dict[str, Any]) -> dict[str, Any]:
    # A hand-off reference as written ({best_of: ...}) stays one value instead of three keys.
    return mappings.flatten(params, whole=is_handoff)


def attempts_from_events(evs: list[EventRow], status: str) -> list[Attempt]:
    """Claim -> ending event, per attempt number; checkpoints counted in between."""
    found: dict[int, Attempt] = {}
    for e in evs:
        if e.attempt is None:
            continue
        a = found.get(e.attempt)
        if a is None:
            a = found[e.attempt] = Attempt(e.attempt, e.worker, None, None, "unknown", None, 0)
        if e.type == "claimed":
            a.claimed_at, a.worker = e.ts, e.worker
        elif e.type == "checkpointed":
            a.checkpoints += 1
        elif e.type in ENDINGS:
            a.ended_at, a.outcome, a.detail = e.ts, ENDINGS[e.type], e.detail
    ordered = [found[n] for n in sorted(found)]
    if ordered and ordered[-1].ended_at is None and status == "running":
        ordered[-1].outcome = "running"
    return ordered


def to_json(d: JobDetail) -> dict[str, Any]:
    return {"schema": JSON_SCHEMA, **asdict(d)}


# ---------------------------------------------------------------------------------------------
# Drawing


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _value(v: Any) -> str:
    if is_outcome(v):
        return f"job {v['job']} ({v['stage']})"
    if isinstance(v, list) and v and all(is_outcome(x) for x in v):
        return ", ".join(f"job {x['job']}" for x in v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", ": "), default=str)
    if isinstance(v, float):
        return f"{v:.6g}"
    return "-" if v is None else str(v)


def _metric_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, v in flatten(result, records=True).items():
        if isinstance(v, str) and v.startswith("[{"):
            rows.append((key, f"table of {len(json.loads(v))} rows (--json shows it)"))
        else:
            text = _value(v)
            rows.append((key, text if len(text) <= 200 else text[:197] + "..."))
    return rows


def render(d: JobDetail, *, traceback: bool = True) -> Any:
    from rich.console import Group
    from rich.text import Text

    from sweeper.views.dashview import plain_table, titled

    parts: list[Any] = []
    head = Text()
    head.append(f"job {visible(d.id)}", style="bold")
    head.append(f"  {visible(d.sweep)} / {visible(d.stage)}  ({visible(d.kind)})\n")
    styles = {"done": "green", "failed": "red", "running": "yellow", "cancelled": "magenta"}
    head.append(visible(d.status), style=f"bold {styles.get(d.status, 'blue')}")
    bits = [f"attempt {d.attempt}", f"failures {d.failures}/{d.max_failures}"]
    bits.append(f"interruptions {d.interruptions}/{d.max_interruptions}")
    head.append("  " + " · ".join(bits))
    if d.status == "running":
        pct = f"{100 * d.progress:.0f}%" if d.progress is not None else "?"
        head.append(f"\nprogress {pct} {visible(d.progress_message or '')} on {visible(d.worker or '?')}")
        if d.lease_expires_in_s is not None:
            head.append(f" (lease {duration(d.lease_expires_in_s)} left)", style="dim")
    if d.stale:
        head.append(f"\nstale: {d.stale} since it ran; `sweeper retry --stale {d.id}` runs it again", style="yellow")
    if d.not_before_in_s:
        head.append(f"\nnext retry in {duration(d.not_before_in_s)}")
    times = f"\nenqueued {_when(d.created_at)}"
    if d.started_at:
        times += f" · started {_when(d.started_at)}"
    if d.finished_at:
        took = f" ({duration(d.finished_at - d.started_at)})" if d.started_at else ""
        times += f" · finished {_when(d.finished_at)}{took}"
    head.append(times, style="dim")
    if d.tracking_run_id:
        where = f" in {visible(d.tracking_uri)}" if d.tracking_uri else ""
        head.append(f"\nMLflow run {visible(d.tracking_run_id)}{where}", style="dim")
    parts.append(head)

    t = plain_table(
        ("param", {"no_wrap": True}),
        ("as written", {"overflow": "fold"}),
        ("ran with", {"overflow": "fold"}),
        ("from job", {"no_wrap": True}),
    )
    for p in d.params:
        resolved = "" if d.params_resolved is None else _value(p.resolved)
        written = "(inherited)" if p.written is None and p.source else _value(p.written)
        same = d.params_resolved is not None and p.written == p.resolved
        t.add_row(safe(p.key), safe(written), safe("=" if same else resolved), safe(p.source or ""))
    note = None
    if d.params_resolved is None and any(is_reference(p.written) for p in d.params):
        note = Text("hand-offs resolve when every upstream job has finished", style="dim")
    parts.append(titled("params", t if d.params else Text("(none)", style="dim"), note))

    if d.result:
        t = plain_table(("metric", {"no_wrap": True}), ("value", {"overflow": "fold"}))
        for key, value in _metric_rows(d.result):
            t.add_row(safe(key), safe(value))
        parts.append(titled("result", t))

    if d.attempts:
        t = plain_table(
            ("#", {"justify": "right"}),
            ("worker", {"no_wrap": True, "overflow": "ellipsis", "max_width": 22}),
            ("claimed", {"no_wrap": True}),
            ("ran", {"justify": "right"}),
            ("ckpt", {"justify": "right"}),
            ("outcome", {"overflow": "fold"}),
        )
        for a in d.attempts:
            ran = duration((a.ended_at or d.time) - a.claimed_at) if a.claimed_at else "-"
            outcome = a.outcome + (f": {a.detail}" if a.detail and a.outcome != "done" else "")
            style = "red" if a.outcome.startswith("failed") else ("green" if a.outcome == "done" else "")
            t.add_row(
                str(a.number),
                safe(a.worker or "-"),
                time.strftime("%m-%d %H:%M:%S", time.localtime(a.claimed_at)) if a.claimed_at else "-",
                ran,
                str(a.checkpoints),
                safe(outcome, style),
            )
        parts.append(titled("attempts", t))

    other = [e for e in d.events if e.attempt is None]
    if other:
        t = plain_table(("when", {"no_wrap": True}), ("event", {"no_wrap": True}), ("detail", {"overflow": "fold"}))
        for e in other:
            t.add_row(_when(e.ts), safe(e.type), safe(e.detail or ""))
        parts.append(titled("events", t))

    for title, files in (("checkpoints", d.checkpoints), ("artifacts", d.artifacts)):
        if not files:
            continue
        t = plain_table(
            ("name", {"no_wrap": True}),
            ("size", {"justify": "right", "no_wrap": True}),
            ("sha256", {"no_wrap": True}),
            ("stored", {"overflow": "fold"}),
        )
        for f in files:
            where = safe(f.where)
            if f.refused:
                where.append(f"  (refused, not looked at: {visible(f.refused)})", style="red")
            elif f.quarantined:
                where.append("  (quarantined: refused as possibly malicious)", style="red")
            elif f.present is False:
                where.append("  (missing on this machine)", style="red")
            t.add_row(safe(f.name), _size(f.size), safe(f.sha256[:12]), where)
        parts.append(titled(title, t))

    if d.error:
        parts.append(Text(""))
        parts.append(Text("error", style="bold underline"))
        parts.append(safe(d.error_summary, "bold red"))
        # a message whose first line is the summary goes on with its other lines; a traceback is shown whole
        first, _, rest = d.error.strip().partition("\n")
        body = rest.rstrip() if first.strip() == d.error_summary else d.error.rstrip()
        if traceback and body:
            parts.append(safe(body, "red", lines=True))
    return Group(*parts)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
