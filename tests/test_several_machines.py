"""Two machines, one PostgreSQL sweep: a training job killed with SIGKILL on machine A and finished on
machine B is one MLflow run, FINISHED, with every step logged once, seen alike from both machines.

The "machines" are two state directories that share nothing but the PostgreSQL server: no
--mlflow-uri, so the MLflow store is the default next to the queue (database <queuedb>_mlflow),
and the job's files live in the queue database (store mode db), so `sweeper report` on machine B
draws the job's loss curves from them. The weights match a run that was never interrupted (on a
SQLite queue of its own: the backend changes where state lives, never what is computed).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from mlflow.tracking import MlflowClient

from .conftest import run_cli, start_worker, stop_process, wait_for

pytestmark = pytest.mark.postgres

LEASE_TTL = 5.0
GRID = """
sweep: machines
defaults:
  dataset: synthetic
  train_subset: 2000
  test_subset: 300
  seed: 5
  conv1: {channels: 6, kernel: 3}
  conv2: {channels: 6, kernel: 3}
  dense: 24
  lr: 0.05
  momentum: 0.9
  batch_size: 32
  max_epochs: 6
  checkpoint_every_s: 0.3
  log_every: 10
  target_train_acc: 0.8
  target_window: 1000
stages:
  baseline: {kind: train}   # the report's Step 1 draws this job's loss curve
"""
TIMING_METRICS = {"time_to_target_s", "total_train_s", "images_per_s", "eval_s", "checkpoint_s", "checkpoints"}


class Machine:
    """One machine's view of the sweep: its own state directory, the shared queue URL."""

    def __init__(self, root: Path, name: str, db_url: str) -> None:
        self.name = name
        self.state = root / name
        self.db_url = db_url
        self.log = root / f"{name}.log"

    @property
    def args(self) -> list[str]:
        return ["--state", str(self.state), "--db", self.db_url]

    def worker(self) -> subprocess.Popen:
        extra = ["--threads-per-worker", "1", "--lease-ttl", str(LEASE_TTL), "--wait", "--poll", "0.2"]
        return start_worker(*self.args, *extra, log=self.log)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, *self.args)

    def output(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


def _read(engine: sa.Engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).mappings().all()


def _metrics(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics.keys()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def test_job_killed_on_one_machine_and_finished_on_another_is_one_finished_run(pg_url, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent(GRID))
    a, b = Machine(tmp_path, "machine-a", pg_url), Machine(tmp_path, "machine-b", pg_url)
    assert a.cli("enqueue", str(grid)).returncode == 0
    reference = tmp_path / "reference"
    assert run_cli("enqueue", str(grid), "--state", str(reference)).returncode == 0

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    procs = []
    try:
        ref_worker = start_worker(
            "--state", str(reference), "--threads-per-worker", "1", log=tmp_path / "reference.log"
        )
        procs.append(ref_worker)
        first = a.worker()
        procs.append(first)

        def two_checkpoints_and_points_in_mlflow() -> bool:
            rows = _read(engine, "select count(*) as n from events where type = 'checkpointed' and attempt = 1")
            return rows[0]["n"] >= 2  # each checkpoint flushes the points logged before it

        wait_for(two_checkpoints_and_points_in_mlflow, timeout=300, what=f"two checkpoints on A\n{a.output()}")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

        second = b.worker()
        procs.append(second)
        assert second.wait(timeout=300) == 0, b.output()
        assert ref_worker.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    finally:
        for proc in procs:
            stop_process(proc)

    job = dict(_read(engine, "select * from jobs")[0])
    assert (job["status"], job["attempt"], job["interruptions"], job["failures"]) == ("done", 2, 1, 0), b.output()
    claimed_on = [r["worker"] for r in _read(engine, "select worker from events where type = 'claimed' order by id")]
    assert len(claimed_on) == 2 and claimed_on[0] != claimed_on[1]

    # Both machines name the same run in the same store: the database next to the queue, masked.
    shown = [json.loads(m.cli("show", job["id"], "--json").stdout) for m in (a, b)]
    mlflow_db = f"{sa.make_url(pg_url).database}_mlflow"
    for detail in shown:
        assert detail["tracking_run_id"] == job["tracking_run_id"]
        assert sa.make_url(detail["tracking_uri"]).database == mlflow_db
    assert shown[0]["tracking_uri"] == shown[1]["tracking_uri"]
    assert not (a.state / "mlflow.db").exists() and not (b.state / "mlflow.db").exists()

    # One run, FINISHED, every step once, the same history as the uninterrupted run.
    client = MlflowClient(sa.make_url(pg_url).set(database=mlflow_db).render_as_string(hide_password=False))
    experiment = client.get_experiment_by_name("machines")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [job["tracking_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["attempt"] == "2"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    ref_client = MlflowClient(f"sqlite:///{reference / 'mlflow.db'}")
    ref_run = ref_client.search_runs([ref_client.get_experiment_by_name("machines").experiment_id])[0]
    metrics, ref_metrics = _metrics(client, run.info.run_id), _metrics(ref_client, ref_run.info.run_id)
    assert metrics.keys() == ref_metrics.keys()
    for key, points in metrics.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"step logged twice in {key}"
        assert steps == [s for s, _ in ref_metrics[key]], f"steps of {key} differ"
        if key not in TIMING_METRICS:
            assert points == ref_metrics[key], f"values of {key} differ"
    assert len(metrics["loss"]) > 20

    # Identical weights: the files are in the queue database (store db), not on either machine.
    blob = _read(engine, "select blob from artifacts where job_id = :j and name = 'model.pt'", j=job["id"])[0]["blob"]
    model = torch.load(io.BytesIO(bytes(blob)), weights_only=True)["state_dict"]
    ref_model = torch.load(reference / "artifacts" / "machines" / job["id"] / "model.pt", weights_only=True)[
        "state_dict"
    ]
    assert model.keys() == ref_model.keys()
    for name in model:
        assert torch.equal(model[name], ref_model[name]), name
    engine.dispose()

    # The report on machine B draws the job's loss curves from the files A and B stored in the queue.
    out = tmp_path / "report-b"
    proc = b.cli("report", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "](step1_loss.png)" in text, text
    assert (out / "step1_loss.png").stat().st_size > 1000
