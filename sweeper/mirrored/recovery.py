"""What a mirrored session does after a VM vanished: put orphaned jobs back, say what was lost,
and never run a finished job twice.

The queue on the network mount is a snapshot that lags the live database by up to a few seconds.
Each kind of write that can miss the last snapshot is recovered from something else:

- a claim, a release or a failure that missed it: the job is found `running` (or `pending`) in the
  snapshot. The session holds the state lease, so no one else can be running it: every `running`
  job is an orphan and goes back to the queue at once (`release_orphans`);
- a checkpoint that missed it: the checkpoint file is on the mount already, and the resumed job
  finds it by scanning its checkpoint directory (CheckpointStore.restore(scan=True));
- a completion that missed it: before completing a job the worker writes its result to a file on
  the mount (`record_result`). When the job is claimed again, that result is recorded instead of
  running the job a second time (`recorded_result`). Results carry the database's lineage id, so
  a queue started afresh with the same job ids never picks up results of an older one.

Nothing here imports torch or mlflow.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sweeper.store.db import Database, events, jobs, meta, workers
from sweeper.store.readmodel import newest_event_detail

LINEAGE_KEY = "mirror_lineage"
RECOVERED = "recovered"  # event type; job_id NULL


def ensure_lineage(db: Database) -> str:
    """The random id of this database's history (created once, copied along with every snapshot)."""
    with db.write() as conn:
        found = conn.execute(sa.select(meta.c.value).where(meta.c.key == LINEAGE_KEY)).scalar()
        if found:
            return str(found)
        value = secrets.token_hex(8)
        conn.execute(meta.insert().values(key=LINEAGE_KEY, value=value))
        return value


@dataclass
class Recovery:
    released: list[str]
    snapshot: str | None
    snapshot_time: float | None
    previous: str | None

    def summary(self) -> str:
        jobs_part = (
            f"{len(self.released)} job(s) that were running went back to the queue and resume from their "
            "newest valid checkpoint"
            if self.released
            else "no job was running"
        )
        return f"{jobs_part}; at most the work since the last snapshot or checkpoint is redone"


def release_orphans(
    db: Database, *, snapshot: str | None, snapshot_time: float | None, previous: str | None, unclean: bool
) -> Recovery | None:
    """Release every `running` job (this session holds the state lease: nobody runs them).

    Records a `recovered` event when there was something to recover: orphans, or a previous
    session that ended without releasing its lease.
    """
    from sweeper.store.queue import Queue  # the queue module is heavier; only sessions that write need it

    with db.read() as conn:
        running = [r.id for r in conn.execute(sa.select(jobs.c.id).where(jobs.c.status == "running"))]
    if not running and not unclean:
        return None
    if running:
        running = Queue(db).release_all_running()
    rec = Recovery(released=running, snapshot=snapshot, snapshot_time=snapshot_time, previous=previous)
    with db.write() as conn:
        conn.execute(workers.update().where(workers.c.status == "running").values(status="stopped", current_job=None))
        detail = {
            "snapshot": snapshot,
            "snapshot_time": snapshot_time,
            "previous": previous,
            "released": running,
            "summary": rec.summary(),
        }
        conn.execute(events.insert().values(job_id=None, ts=time.time(), type=RECOVERED, detail=json.dumps(detail)))
    return rec


def last_recovery(db: Database) -> dict[str, Any] | None:
    """The newest `recovered` event: {ts, snapshot, snapshot_time, previous, released, summary}."""
    with db.read() as conn:
        return newest_event_detail(conn, RECOVERED)


def describe_recovery(rec: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["ts"]))
    parts = [f"recovered at {when} ({_ago(now - rec['ts'])} ago)"]
    if rec.get("previous"):
        parts.append(f"after {rec['previous']} ended without a clean exit")
    if rec.get("snapshot_time"):
        taken = time.strftime("%H:%M:%S", time.localtime(rec["snapshot_time"]))
        parts.append(f"from the snapshot taken at {taken}")
    return ", ".join(parts) + ": " + str(rec.get("summary") or "")


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# ---------------------------------------------------------------------------------------------
# Result records


def _result_path(state_dir: Path, sweep: str, job_id: str) -> Path:
    from sweeper.store.statepaths import under  # sweep and job id come from the queue: checked

    return under(state_dir, "results", sweep, f"{job_id}.json")


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record_result(state_dir: Path, lineage: str, sweep: str, job_id: str, attempt: int, result: dict[str, Any]) -> None:
    """Write the job's result to the mount (atomically) before the database records it as done."""
    from sweeper.store.statefiles import atomic_write

    payload = {"lineage": lineage, "job_id": job_id, "attempt": attempt, "result": result}
    body = {**payload, "sha256": _digest(payload)}
    atomic_write(_result_path(state_dir, sweep, job_id), json.dumps(body, indent=1).encode())


def recorded_result(state_dir: Path, lineage: str, sweep: str, job_id: str) -> dict[str, Any] | None:
    """The result a previous session recorded for this job in this lineage, if it is intact."""
    path = _result_path(state_dir, sweep, job_id)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        payload = {k: body[k] for k in ("lineage", "job_id", "attempt", "result")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if body.get("sha256") != _digest(payload) or payload["lineage"] != lineage or payload["job_id"] != job_id:
        return None
    result = payload["result"]
    return result if isinstance(result, dict) else None
