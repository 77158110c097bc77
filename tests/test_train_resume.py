"""A training job killed with SIGKILL at three random points, resumed by new `sweeper work` processes
after its lease expired, ends exactly like an uninterrupted run: bit-identical weights, the same
MLflow metric history (no duplicate or missing steps), and a time to target that counts compute only.

The kill points are random: each attempt dies after 1 to 3 checkpoints of its own plus a random part
of the next checkpoint interval, so the work since its last checkpoint is lost and redone. They are
counted in checkpoints (every 0.3 s of compute), not in published progress: progress reaches the
database only with a heartbeat (every TTL/3 = 2 s), too coarse for a job of a few seconds. Set
SWEEPER_TEST_SEED to replay a failure (the seed is in the message).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from mlflow.tracking import MlflowClient

from .conftest import run_cli, start_worker, stop_process, wait_for
from .mlflow_template import install, template

LEASE_TTL = 6.0  # long enough that a loaded machine never loses a live lease; a new worker starts slower anyway
GRID = """
sweep: resume
defaults:
  dataset: synthetic
  train_subset: 4000
  test_subset: 500
  seed: 3
  conv1: {channels: 8, kernel: 3}
  conv2: {channels: 8, kernel: 3}
  dense: 32
  lr: 0.05
  momentum: 0.9
  batch_size: 32
  max_epochs: 8   # about 4 s of compute: room for three attempts of up to 3 checkpoints each
  checkpoint_every_s: 0.3
  log_every: 10
  target_train_acc: 0.8
  target_window: 2000
stages:
  train: {kind: train}
"""
# Wall-clock figures: they differ between runs by nature; everything else must match exactly.
TIMING_METRICS = {"time_to_target_s", "total_train_s", "images_per_s", "eval_s", "checkpoint_s", "checkpoints"}


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory) -> Path:
    return template(tmp_path_factory)


class Sweep:
    def __init__(self, root: Path, mlflow_template: Path) -> None:
        self.root = root
        self.state = root / "state"
        root.mkdir(parents=True)
        grid = root / "grid.yaml"
        grid.write_text(textwrap.dedent(GRID))
        self.db_url = f"sqlite:///{self.state / 'queue.db'}"
        proc = run_cli("enqueue", str(grid), "--state", str(self.state))
        assert proc.returncode == 0, proc.stderr
        install(mlflow_template, self.state)
        self.engine = sa.create_engine(self.db_url)
        self.logs: list[Path] = []

    def worker(self) -> subprocess.Popen:
        log = self.root / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        return start_worker(
            "--state",
            str(self.state),
            "--threads-per-worker",
            "1",  # determinism holds for a fixed thread count
            "--lease-ttl",
            str(LEASE_TTL),
            "--wait",
            "--poll",
            "0.2",
            log=log,
        )

    def job(self) -> dict:
        with self.engine.connect() as conn:
            row = dict(conn.execute(sa.text("select * from jobs")).mappings().one())
        if isinstance(row["result"], str):
            row["result"] = json.loads(row["result"])
        return row

    def model(self) -> dict[str, torch.Tensor]:
        job = self.job()
        path = self.state / "artifacts" / "resume" / job["id"] / "model.pt"
        return torch.load(path, weights_only=True)["state_dict"]

    def checkpoints(self, attempt: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text("select count(*) from events where type = 'checkpointed' and attempt = :a"), {"a": attempt}
            ).scalar_one()

    def metrics(self) -> dict[str, list[tuple[int, float]]]:
        client = MlflowClient(f"sqlite:///{self.state / 'mlflow.db'}")
        run_id = self.job()["tracking_run_id"]
        keys = client.get_run(run_id).data.metrics.keys()
        return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs if p.exists())


def test_job_killed_three_times_resumes_bit_identical(tmp_path, mlflow_template):
    seed = int(os.environ.get("SWEEPER_TEST_SEED") or random.randrange(10**6))
    rng = random.Random(seed)
    kills = [(rng.randint(1, 3), rng.uniform(0.0, 0.25)) for _ in range(3)]  # (own checkpoints, then seconds)
    what = f"SWEEPER_TEST_SEED={seed}, kills after (checkpoints, s) {[(n, round(d, 3)) for n, d in kills]}"

    reference = Sweep(tmp_path / "reference", mlflow_template)
    killed = Sweep(tmp_path / "killed", mlflow_template)
    ref_worker = reference.worker()  # runs alongside; contention changes timings, not results
    procs = [ref_worker]
    try:
        started = time.monotonic()
        for attempt, (count, delay) in enumerate(kills, start=1):
            proc = killed.worker()
            procs.append(proc)

            def reached(attempt: int = attempt, count: int = count) -> bool:
                job = killed.job()
                return job["status"] == "running" and job["attempt"] == attempt and killed.checkpoints(attempt) >= count

            wait_for(reached, timeout=240, what=f"attempt {attempt} to write {count} checkpoint(s) ({what})")
            time.sleep(delay)  # between two checkpoints
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        last = killed.worker()
        procs.append(last)
        assert last.wait(timeout=300) == 0, killed.output()
        wall = time.monotonic() - started
        assert ref_worker.wait(timeout=300) == 0, reference.output()
    finally:
        for proc in procs:
            stop_process(proc)

    ref, job = reference.job(), killed.job()
    assert ref["status"] == job["status"] == "done", f"{what}\n{killed.output()}"
    assert job["attempt"] == 4 and job["interruptions"] == 3, what

    # bit-identical weights
    ref_model, model = reference.model(), killed.model()
    assert ref_model.keys() == model.keys()
    for name in ref_model:
        assert torch.equal(ref_model[name], model[name]), f"{name} differs ({what})"

    # identical results, apart from wall-clock figures
    ref_result, result = ref["result"], job["result"]
    same = {k: v for k, v in ref_result.items() if k not in TIMING_METRICS}
    assert {k: result[k] for k in same} == same, what
    assert result["reached"] and result["target_step"] == ref_result["target_step"], what

    # the MLflow history: same metrics, same steps, same values; no step twice, none missing
    ref_metrics, metrics = reference.metrics(), killed.metrics()
    assert metrics.keys() == ref_metrics.keys(), what
    for key, points in metrics.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"duplicate steps in {key} ({what})"
        assert sorted(steps) == sorted(s for s, _ in ref_metrics[key]), f"steps of {key} differ ({what})"
        if key not in TIMING_METRICS:
            assert sorted(points) == sorted(ref_metrics[key]), f"values of {key} differ ({what})"
    assert len(metrics["loss"]) > 20

    # time to target counts training compute only: not the three dead leases, not the restarts
    assert 0 < result["time_to_target_s"] <= result["total_train_s"]
    # Each dead lease keeps the job unclaimable for at least 2/3 of the TTL after the kill (the last
    # heartbeat was at most TTL/3 before it): 3 kills hide >= 2 TTL of wall time. 1.5 TTL leaves margin.
    assert result["total_train_s"] < wall - 1.5 * LEASE_TTL, what
    history = json.loads((killed.state / "artifacts" / "resume" / job["id"] / "history.json").read_text())
    train_s = [p["train_s"] for p in history["points"]]
    assert train_s == sorted(train_s)  # the clock never ran backwards or restarted across attempts


BAD_GRID = """
sweep: bad
defaults: {dataset: synthetic}
stages:
  kernel1: {kind: train, params: {conv1: {channels: 8, kernel: 29}}}
  kernel2: {kind: train, params: {conv2: {channels: 8, kernel: 27}}}
  pooled: {kind: train, params: {pool: true, conv2: {channels: 8, kernel: 14}}}
"""


def test_bad_params_fail_the_job_at_once_without_retries(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(BAD_GRID)
    state = tmp_path / "state"
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    proc = run_cli("work", "--state", str(state), "--no-tracking", "--retry-backoff", "0")
    assert proc.returncode == 0, proc.stderr
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select stage, status, attempt, error from jobs")).mappings().all()
    engine.dispose()
    jobs = {r["stage"]: r for r in rows}
    expected = {
        "kernel1": "conv1.kernel 29 is too large for a 28x28 input",
        "kernel2": "conv2.kernel 27 is too large for conv1's 26x26 output",
        "pooled": "conv2.kernel 14 is too large for conv1's 13x13 output",
    }
    for stage, message in expected.items():
        job = jobs[stage]
        assert job["status"] == "failed" and job["attempt"] == 1, dict(job)  # failed at once, never retried
        assert message in job["error"] and "Traceback" not in job["error"], job["error"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lr: 0", "param 'lr': Input should be greater than 0"),
        ("batch_size: -4", "param 'batch_size': Input should be greater than or equal to 1"),
        ("init: glorot", "param 'init': Input should be 'xavier_uniform'"),
    ],
)
def test_bad_params_are_refused_at_enqueue_with_the_stage_and_key(tmp_path, value, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"sweep: bad\nstages:\n  search:\n    kind: train\n    params: {{{value}}}\n")
    proc = run_cli("enqueue", str(grid), "--state", str(tmp_path / "state"))
    assert proc.returncode == 2
    assert message in proc.stderr and "search" in proc.stderr and "Traceback" not in proc.stderr
