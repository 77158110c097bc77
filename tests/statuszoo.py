"""A queue with a job in every state, built through the real Queue API (for status, show, export).

sweep `zoo`:
  search (noop, 7 jobs): 3 done (with test_accuracy and time_to_target_s), 1 running (progress
      0.4, "epoch 2/5"), 1 failed (a real traceback), 1 cancelled, 1 pending
  follow (noop, needs search, 2 jobs): blocked
Workers: one running (owns the running job), one stopped, one lost (silent for 10 minutes).
Finished jobs are given durations of 100, 200 and 300 s by moving their start times back, so the
ETA has something to go on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from sweeper.grid.spec import parse_spec
from sweeper.store.db import Database, jobs, open_database, workers
from sweeper.store.queue import Lease, Queue

GRID = """\
sweep: zoo
description: every state a job can be in
defaults: {steps: 2}
stages:
  search:
    kind: noop
    grid:
      value: [0.81, 0.87, 0.84, 0.5, 0.6, 0.7, 0.9]
  follow:
    kind: noop
    needs: [search]
    grid:
      seed: [1, 2]
    params:
      upstream: {best_of: search, metric: test_accuracy, mode: max}
"""

# value -> (test_accuracy, time_to_target_s, duration_s)
DONE = {0.81: (0.81, 120.0, 100.0), 0.87: (0.87, 300.0, 200.0), 0.84: (0.84, 90.0, 300.0)}


@dataclass
class Zoo:
    url: str
    db: Database
    queue: Queue
    ids: dict[str, str] = field(default_factory=dict)  # role -> job id
    running_lease: Lease | None = None  # the lease of ids["running"]

    def close(self) -> None:
        self.db.dispose()


def _error() -> str:
    try:
        raise ValueError("kernel 7 is larger than the 5x5 feature map after conv1")
    except ValueError:
        return traceback.format_exc()


def build_zoo(url: str, state_dir: Path | None = None) -> Zoo:
    db = open_database(url)
    queue = Queue(db)
    spec = parse_spec(GRID, "zoo.yaml")
    queue.enqueue(spec)
    by_value = {j.params["value"]: j.id for j in spec.jobs if j.stage == "search"}
    zoo = Zoo(url, db, queue)
    queue.register_worker("host-a:101:aaaa", "host-a", 101, 1)
    queue.register_worker("host-b:202:bbbb", "host-b", 202, 1)
    queue.register_worker("host-c:303:cccc", "host-c", 303, 1)

    # Claims go in queue order: value 0.81, 0.87, 0.84 finish; 0.5 fails; 0.6 is left running.
    for value, (acc, ttt, _dur) in DONE.items():
        job = queue.claim("host-b:202:bbbb", 60)
        assert job is not None and job.params["value"] == value
        queue.complete(job.lease, {"test_accuracy": acc, "time_to_target_s": ttt, "value": value, "steps": 2})
        zoo.ids[f"done-{value}"] = job.id
    job = queue.claim("host-b:202:bbbb", 60)
    assert job is not None and job.params["value"] == 0.5
    queue.fail(job.lease, _error(), retry=False)
    zoo.ids["failed"] = job.id
    job = queue.claim("host-a:101:aaaa", 600)
    assert job is not None and job.params["value"] == 0.6
    queue.renew(job.lease, 600, 0.4, "epoch 2/5 loss 0.412")
    zoo.ids["running"] = job.id
    zoo.running_lease = job.lease
    zoo.ids["cancelled"] = by_value[0.7]
    queue.cancel([by_value[0.7]])
    zoo.ids["pending"] = by_value[0.9]
    zoo.ids["blocked"] = next(j.id for j in spec.jobs if j.stage == "follow")
    queue.stop_worker("host-b:202:bbbb")

    with db.write() as conn:
        for value, (_acc, _ttt, dur) in DONE.items():
            conn.execute(
                jobs.update().where(jobs.c.id == zoo.ids[f"done-{value}"]).values(started_at=jobs.c.finished_at - dur)
            )
        conn.execute(workers.update().where(workers.c.id == "host-c:303:cccc").values(last_heartbeat=time.time() - 600))
    return zoo


def job_status(zoo: Zoo) -> dict[str, str]:
    with zoo.db.read() as conn:
        return dict(conn.execute(sa.select(jobs.c.id, jobs.c.status)).all())
