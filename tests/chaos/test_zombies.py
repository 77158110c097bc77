"""Side effects across a takeover: what a zombie (a worker frozen past its lease, then woken) may and
may not leave behind, on a real SQLite queue, real files and a real MLflow store.

The queue fences its own writes with the lease token; these tests are about the writes that are
not in the queue: artifact files, MLflow metric points and runs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeper.context import JobContext
from sweeper.errors import LeaseLost
from sweeper.grid.spec import parse_spec
from sweeper.running.tracking import MLflowTracker, RunInfo
from sweeper.store.checkpoints import ArtifactStore, CheckpointStore
from sweeper.store.db import open_database
from sweeper.store.queue import ClaimedJob, Queue

from .harness import mlflow_template


class Takeover:
    """One job, claimed by a worker that then freezes past its lease and by the worker that takes it over."""

    def __init__(self, tmp_path: Path, template: Path) -> None:
        self.state = tmp_path / "state"
        self.state.mkdir()
        shutil.copy(template, self.state / "mlflow.db")
        self.uri = f"sqlite:///{self.state / 'mlflow.db'}"
        self.db = open_database(f"sqlite:///{self.state / 'queue.db'}")
        self.queue = Queue(self.db, reap_every_s=0)
        self.queue.enqueue(parse_spec("sweep: z\nstages:\n  a: {kind: noop}\n", "g.yaml"))
        self.checkpoints = CheckpointStore(self.queue.db, self.state, "files", fence=self.queue.in_lease)
        self.artifacts = ArtifactStore(self.queue.db, self.state, "files", fence=self.queue.in_lease)

    def claim(self, worker: str, ttl: float = 30.0) -> ClaimedJob:
        job = self.queue.claim(worker, ttl)
        assert job is not None
        return job

    def take_over(self, worker: str = "owner") -> ClaimedJob:
        """Wait for the frozen worker's lease to expire, then claim the job again."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = self.queue.claim(worker, 30.0)
            if job is not None:
                return job
            time.sleep(0.05)
        pytest.fail("the lease never expired")

    def context(self, job: ClaimedJob, tracker: MLflowTracker | None = None) -> JobContext:
        ctx = JobContext(
            job=job,
            queue=self.queue,
            checkpoints=self.checkpoints,
            artifacts=self.artifacts,
            state_dir=self.state,
            log=lambda line: None,
        )
        if tracker is not None:
            ctx.tracker = tracker
            run_id = tracker.start(RunInfo("z", "a", job.id, "noop", "", job.attempt, {}), job.tracking_run_id)
            self.queue.set_tracking_run(job.lease, run_id)
            job.tracking_run_id = run_id
        return ctx

    def tracker(self) -> MLflowTracker:
        return MLflowTracker(self.uri, self.state / "mlartifacts")

    def history(self, run_id: str, key: str) -> list[int]:
        return sorted(m.step for m in MlflowClient(self.uri).get_metric_history(run_id, key))

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def takeover(tmp_path: Path, chaos_cache: Path):
    t = Takeover(tmp_path, mlflow_template(chaos_cache))
    yield t
    t.close()


def test_a_zombie_cannot_replace_an_artifact_of_the_new_owner(takeover, tmp_path):
    zombie = takeover.claim("zombie", ttl=0.3)
    owner = takeover.take_over()
    mine, late = tmp_path / "owner.json", tmp_path / "zombie.json"
    mine.write_text('{"by": "owner"}')
    late.write_text('{"by": "zombie", "padding": 1}')
    info = takeover.artifacts.put(owner.lease, "z", mine, "history.json")
    takeover.queue.complete(owner.lease, {})

    with pytest.raises(LeaseLost):  # the zombie wakes up and writes its artifact
        takeover.artifacts.put(zombie.lease, "z", late, "history.json")
    fetched = takeover.artifacts.fetch(owner.id, "history.json", info)  # verified by sha256
    assert fetched.read_text() == '{"by": "owner"}'


def test_a_zombie_flushing_after_a_takeover_adds_no_duplicate_metric_steps(takeover):
    zombie = takeover.claim("zombie", ttl=0.3)
    z = takeover.context(zombie, takeover.tracker())
    z.log_metrics({"loss": 1.0}, step=1)
    z.checkpoint({"step": 1})
    z.log_metrics({"loss": 0.5}, step=2)  # buffered when the worker froze

    owner = takeover.take_over()
    o = takeover.context(owner, takeover.tracker())
    assert o.restore() == {"step": 1}
    o.log_metrics({"loss": 0.5}, step=2)
    o.checkpoint({"step": 2})
    takeover.queue.complete(owner.lease, {})

    with pytest.raises(LeaseLost):  # the zombie wakes up and reaches its next checkpoint
        z.checkpoint({"step": 2})
    assert takeover.history(owner.tracking_run_id, "loss") == [1, 2]


def test_the_same_point_written_late_by_a_zombie_and_by_its_successor_is_stored_once(takeover, monkeypatch):
    zombie = takeover.claim("zombie", ttl=0.3)
    zt = takeover.tracker()
    z = takeover.context(zombie, zt)
    z.log_metrics({"loss": 1.0}, step=1)
    real_flush = zt.flush
    monkeypatch.setattr(zt, "flush", lambda: None)  # frozen after its checkpoint, before writing the points
    z.checkpoint({"step": 1})

    owner = takeover.take_over()
    o = takeover.context(owner, takeover.tracker())
    assert o.restore() == {"step": 1}  # the checkpoint carries the points that were never written
    o.checkpoint({"step": 1})
    assert takeover.history(owner.tracking_run_id, "loss") == [1]
    real_flush()  # the zombie wakes up and writes the same point
    assert takeover.history(owner.tracking_run_id, "loss") == [1]


def test_points_logged_before_a_crash_between_checkpoint_and_write_are_not_lost(takeover, monkeypatch):
    first = takeover.claim("first", ttl=0.3)
    t = takeover.tracker()
    ctx = takeover.context(first, t)
    for step in (1, 2, 3):
        ctx.log_metrics({"loss": 1.0 / step}, step=step)
    monkeypatch.setattr(t, "flush", lambda: None)
    ctx.checkpoint({"step": 3})  # and the worker dies before the points reach MLflow

    second = takeover.take_over()
    ctx2 = takeover.context(second, takeover.tracker())
    assert ctx2.restore() == {"step": 3}
    ctx2.tracker.end("FINISHED")
    assert takeover.history(second.tracking_run_id, "loss") == [1, 2, 3]


def test_an_attempt_killed_before_recording_its_run_is_continued_not_duplicated(takeover):
    first = takeover.claim("first", ttl=0.3)
    orphan = takeover.tracker().start(RunInfo("z", "a", first.id, "noop", "", 1, {"x": 1}), None)
    # ... killed here: the queue never learned the run id.
    second = takeover.take_over()
    assert second.tracking_run_id is None
    again = takeover.tracker().start(RunInfo("z", "a", second.id, "noop", "", 2, {"x": 1}), None)
    assert again == orphan


def test_a_zombie_worker_in_its_tail_writes_no_metric_and_does_not_close_the_run(tmp_path, chaos_cache):
    """A real worker frozen after its last checkpoint, taken over, woken once the job is done."""
    import os
    import signal
    import sqlite3

    from tests.conftest import run_cli, start_worker, stop_process, wait_for

    state, gate = tmp_path / "state", tmp_path / "gate"
    state.mkdir()
    shutil.copy(mlflow_template(chaos_cache), state / "mlflow.db")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f'sweep: tail\nstages:\n  a: {{kind: "tests.chaos.kinds:tail_gated", params: {{gate: "{gate}"}}}}\n'
    )
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    common = ("--state", str(state), "--lease-ttl", "2", "--retry-backoff", "0")
    zombie = start_worker(*common, log=tmp_path / "zombie.log")
    owner = None
    try:
        wait_for(lambda: Path(f"{gate}.started").exists(), timeout=120, what="the first attempt to reach its tail")
        os.kill(zombie.pid, signal.SIGSTOP)
        owner = start_worker(*common, "--wait", "--poll", "0.2", log=tmp_path / "owner.log")
        assert owner.wait(timeout=120) == 0, (tmp_path / "owner.log").read_text()
        gate.write_text("go")
        os.kill(zombie.pid, signal.SIGCONT)
        assert zombie.wait(timeout=60) == 0, (tmp_path / "zombie.log").read_text()
    finally:
        stop_process(zombie)
        if owner is not None:
            stop_process(owner)

    conn = sqlite3.connect(state / "mlflow.db")
    try:
        runs = conn.execute("SELECT run_uuid, status FROM runs").fetchall()
        steps = sorted(s for (s,) in conn.execute("SELECT step FROM metrics WHERE key = 'x'"))
    finally:
        conn.close()
    assert len(runs) == 1 and runs[0][1] == "FINISHED", runs  # the zombie did not mark it KILLED
    assert steps == [1, 2], steps  # and did not write its tail point again


def test_a_zombie_starting_late_does_not_reopen_the_run_its_successor_finished(takeover):
    zombie = takeover.claim("zombie", ttl=0.3)  # frozen right after its claim, before it opened the run
    owner = takeover.take_over()
    o = takeover.context(owner, takeover.tracker())
    o.log_metrics({"loss": 1.0}, step=1)
    o.checkpoint({"step": 1})
    takeover.queue.complete(owner.lease, {})
    o.tracker.end("FINISHED")

    # The zombie wakes up and opens the run its claim named (as the worker does before the job runs).
    takeover.tracker().start(RunInfo("z", "a", zombie.id, "noop", "", zombie.attempt, {}), owner.tracking_run_id)
    run = MlflowClient(takeover.uri).get_run(owner.tracking_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == str(owner.attempt)
