"""Successive halving end to end: real workers, real train jobs on synthetic data, real MLflow.

The issue's acceptance sweep: 9 configurations (lr x momentum), `val_subset: 256`, 1 epoch, then
`promote {top: 3, max_epochs: 3}` and `promote {top: 1, max_epochs: 6}`. It runs twice: once with
one worker that is SIGKILLed in the middle of a rung and restarted, once with two workers (and
MLflow). Both must promote the top 3 of rung 0 by val_accuracy (ties to queue order), then the
same one; every figure of every job must agree bit for bit. A promoted job says in its log which
job's checkpoint it continues, and the configuration rung 2 chose, trained straight to 6 epochs in
a sweep of its own, ends with the same test_loss, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import textwrap
from pathlib import Path

from .conftest import run_cli, start_worker, stop_process, wait_for

DEFAULTS = (
    "{dataset: synthetic, train_subset: 768, test_subset: 256, batch_size: 64, log_every: 4,"
    " conv1: {channels: 4, kernel: 3}, conv2: {channels: 8, kernel: 3}, dense: 32, target_train_acc: 0.5,"
    " target_window: 256, checkpoint_every_s: 0.05, eval_train: false}"
)
GRID = textwrap.dedent(f"""\
    sweep: halving-9
    defaults: {DEFAULTS}
    stages:
      rung0:
        kind: train
        params: {{max_epochs: 1, val_subset: 256}}
        grid: {{lr: [0.003, 0.01, 0.03], momentum: [0.0, 0.5, 0.9]}}
      rung1:
        promote: {{stage: rung0, top: 3, by: val_accuracy, mode: max, max_epochs: 3}}
      rung2:
        promote: {{stage: rung1, top: 1, by: val_accuracy, mode: max, max_epochs: 6}}
    """)
# Bit-identical across runs needs the same torch thread count (jobs/ml/training.py).
ONE_THREAD = ("--threads-per-worker", "1")
# Figures that measure the machine, not the training: they differ between two runs.
CLOCKS = ("time_to_target_s", "total_train_s", "images_per_s", "eval_s", "checkpoint_s", "checkpoints")


def jobs_of(state: Path) -> list[dict]:
    con = sqlite3.connect(state / "queue.db")
    con.row_factory = sqlite3.Row
    rows = con.execute(
        "SELECT id, stage, status, params, resolved_params, result, tracking_run_id FROM jobs ORDER BY position"
    ).fetchall()
    con.close()
    out = []
    for r in rows:
        row = dict(r)
        for key in ("params", "resolved_params", "result"):
            row[key] = json.loads(row[key]) if row[key] else None
        out.append(row)
    return out


def config(params: dict) -> tuple:
    return (params["lr"], params["momentum"])


def survivors(jobs: list[dict]) -> dict[str, list[tuple]]:
    """The configurations each rung promoted, in rank order."""
    return {stage: [config(j["resolved_params"]) for j in jobs if j["stage"] == stage] for stage in ("rung1", "rung2")}


def figures(jobs: list[dict]) -> dict[tuple, dict]:
    return {
        (j["stage"], config(j["resolved_params"] or j["params"])): {
            k: v for k, v in j["result"].items() if k not in CLOCKS
        }
        for j in jobs
    }


def run_killed_mid_rung(tmp: Path) -> Path:
    """One worker, SIGKILLed while a rung1 job is half trained, then a fresh one finishes the sweep."""
    state = tmp / "state"
    args = ("--state", str(state), "--no-tracking", "--lease-ttl", "2", "--retry-backoff", "0", *ONE_THREAD)
    worker = start_worker("g.yaml", *args, cwd=tmp, log=tmp / "w1.log")
    try:

        def rung1_half_done() -> bool:
            if not (state / "queue.db").exists():
                return False
            con = sqlite3.connect(state / "queue.db")
            try:
                row = con.execute(
                    "SELECT count(*) FROM jobs j JOIN checkpoints c ON c.job_id = j.id "
                    "WHERE j.stage = 'rung1' AND j.status = 'running'"
                ).fetchone()
            except sqlite3.OperationalError:
                return False
            finally:
                con.close()
            return row[0] > 0

        wait_for(rung1_half_done, timeout=600, interval=0.02, what="a rung1 job with a checkpoint of its own")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
    finally:
        stop_process(worker)
    proc = run_cli("work", "g.yaml", *args, "--wait", cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp / "w2.log").write_text(proc.stdout + proc.stderr)
    return state


def test_nine_configs_promote_the_top_three_by_validation_whatever_the_workers_and_a_kill(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for tmp in (one, two):
        tmp.mkdir()
        (tmp / "g.yaml").write_text(GRID)
    killed = run_killed_mid_rung(one)
    proc = run_cli(
        "work", "g.yaml", "--state", str(two / "state"), "--workers", "2", *ONE_THREAD, "--wait", cwd=two, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    a, b = jobs_of(killed), jobs_of(two / "state")
    assert [j["stage"] for j in a] == ["rung0"] * 9 + ["rung1"] * 3 + ["rung2"]
    assert all(j["status"] == "done" for j in a + b), [(j["id"], j["status"]) for j in a + b]
    assert all(isinstance(j["result"]["val_accuracy"], float) for j in a + b)

    # rung1 continues the top 3 of rung0 by val_accuracy, ties to queue order; rung2 the best of those
    rung0 = [j for j in a if j["stage"] == "rung0"]
    ranked = sorted(enumerate(rung0), key=lambda ij: (-ij[1]["result"]["val_accuracy"], ij[0]))
    top3 = [j["id"] for _, j in ranked[:3]]
    rung1 = [j for j in a if j["stage"] == "rung1"]
    assert [j["resolved_params"]["continue_from"] for j in rung1] == top3
    best = min(enumerate(rung1), key=lambda ij: (-ij[1]["result"]["val_accuracy"], ij[0]))[1]
    (rung2,) = [j for j in a if j["stage"] == "rung2"]
    assert rung2["resolved_params"]["continue_from"] == best["id"]
    assert [j["resolved_params"]["max_epochs"] for j in [*rung1, rung2]] == [3, 3, 3, 6]

    # a kill in the middle of rung1, one worker or two: the same survivors and the same figures, bit for bit
    assert survivors(a) == survivors(b)
    assert figures(a) == figures(b)
    assert rung1[0]["result"]["epochs"] == 3.0 and rung2["result"]["continued_from"] == best["id"]

    log = (one / "w1.log").read_text() + (one / "w2.log").read_text()
    assert f"job {rung2['id']}: continues from job {best['id']}'s checkpoint" in log, log[-3000:]

    # MLflow: the promoted job's run is nested under its upstream's, and holds the whole curve
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{two / 'state' / 'mlflow.db'}")
    b_by_id = {j["id"]: j for j in b}
    (b2,) = [j for j in b if j["stage"] == "rung2"]
    run = client.get_run(b2["tracking_run_id"])
    upstream = b_by_id[b2["resolved_params"]["continue_from"]]
    assert run.data.tags["mlflow.parentRunId"] == upstream["tracking_run_id"]
    assert run.data.tags["sweeper.continues"] == upstream["id"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch_val_acc")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]

    # status shows the rungs as stages, their survivors as their jobs; the report has a halving section
    from typer.testing import CliRunner

    from sweeper.cli import app

    status = CliRunner().invoke(app, ["status", "--json", "--state", str(two / "state")])
    assert status.exit_code == 0, status.output
    stages = {s["stage"]: s for s in json.loads(status.output)["stages"]}
    assert {n: stages[n]["counts"]["done"] for n in ("rung0", "rung1", "rung2")} == {"rung0": 9, "rung1": 3, "rung2": 1}
    assert stages["rung2"]["needs"] == ["rung1"]
    report = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "report"), "--state", str(two / "state")])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Successive halving: `rung0`" in text and "Halving spent" in text, text[:3000]
    survivors_table = text.split("**Survivors per rung**")[1].split("**Compute**")[0]
    assert survivors_table.count("\n| lr=") == 3, survivors_table
    assert (tmp_path / "report" / "halving_1_curves.png").stat().st_size > 10_000

    # the same configuration trained straight to 6 epochs, in a sweep of its own: the same test_loss, bit for bit
    straight = tmp_path / "straight"
    straight.mkdir()
    params = {k: v for k, v in rung2["resolved_params"].items() if k != "continue_from"}
    (straight / "g.yaml").write_text(
        f"sweep: straight\nstages:\n  six:\n    kind: train\n    params: {json.dumps(params)}\n"
    )
    proc = run_cli(
        "work", "g.yaml", "--state", str(straight / "state"), "--no-tracking", *ONE_THREAD, "--wait", cwd=straight
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (six,) = jobs_of(straight / "state")
    assert six["result"]["test_loss"] == rung2["result"]["test_loss"]  # floats from JSON: equal bit for bit
    assert {k: v for k, v in six["result"].items() if k not in CLOCKS} == {
        k: v for k, v in rung2["result"].items() if k not in (*CLOCKS, "continued_from")
    }


def test_a_promoted_job_on_real_fashion_mnist_ends_bit_identical_to_straight_training(
    tmp_path: Path, fmnist_dir: Path
) -> None:
    """Real data: one epoch, promoted to two, against the same configuration trained straight to two."""
    common = (
        f"{{data_dir: {fmnist_dir}, train_subset: 1500, val_subset: 500, test_subset: 500, batch_size: 64,"
        " conv1: {channels: 4, kernel: 3}, conv2: {channels: 8, kernel: 3}, dense: 32, eval_train: false,"
        " target_train_acc: 0.6, target_window: 500, lr: 0.01}"
    )
    (tmp_path / "g.yaml").write_text(
        textwrap.dedent(f"""\
        sweep: fmnist-halving
        defaults: {common}
        stages:
          rung0:
            kind: train
            params: {{max_epochs: 1}}
            grid: {{momentum: [0.0, 0.9]}}
          rung1:
            promote: {{stage: rung0, top: 1, by: val_accuracy, mode: max, max_epochs: 2}}
          straight:
            kind: train
            params: {{max_epochs: 2}}
            grid: {{momentum: [0.0, 0.9]}}
        """)
    )
    proc = run_cli(
        "work", "g.yaml", "--state", str(tmp_path / "state"), "--no-tracking", *ONE_THREAD, "--wait", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = jobs_of(tmp_path / "state")
    (promoted,) = [j for j in jobs if j["stage"] == "rung1"]
    assert promoted["result"]["dataset"] == "fashion-mnist"
    (same,) = [
        j for j in jobs if j["stage"] == "straight" and config(j["params"]) == config(promoted["resolved_params"])
    ]
    assert promoted["result"]["test_loss"] == same["result"]["test_loss"]
    assert promoted["result"]["val_loss"] == same["result"]["val_loss"]
    assert promoted["result"]["images_to_target"] == same["result"]["images_to_target"]
    assert promoted["result"]["epochs"] == 2.0


def test_on_postgresql_a_promoted_job_continues_a_checkpoint_stored_in_the_database(
    tmp_path: Path, pg_url: str
) -> None:
    """Several machines: checkpoints are database blobs; the promoted job reads its upstream's from there."""
    (tmp_path / "g.yaml").write_text(
        textwrap.dedent(f"""\
        sweep: pg-halving
        defaults: {DEFAULTS}
        stages:
          rung0:
            kind: train
            params: {{max_epochs: 1, val_subset: 256}}
            grid: {{lr: [0.01, 0.03]}}
          rung1:
            promote: {{stage: rung0, top: 1, by: val_loss, mode: min, max_epochs: 2}}
          straight:
            kind: train
            params: {{max_epochs: 2, val_subset: 256}}
            grid: {{lr: [0.01, 0.03]}}
        """)
    )
    proc = run_cli(
        "work", "g.yaml", "--db", pg_url, "--state", str(tmp_path / "state"), "--no-tracking", *ONE_THREAD, "--wait",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, stage, params, resolved_params, result FROM jobs ORDER BY position"))
        jobs = [dict(r._mapping) for r in rows]
        blobs = conn.execute(sa.text("SELECT count(*) FROM checkpoints WHERE blob IS NOT NULL")).scalar_one()
    engine.dispose()
    assert blobs > 0 and not list((tmp_path / "state").glob("checkpoints/**/*.ckpt"))
    rung0 = [j for j in jobs if j["stage"] == "rung0"]
    (promoted,) = [j for j in jobs if j["stage"] == "rung1"]
    best = min(rung0, key=lambda j: j["result"]["val_loss"])
    assert promoted["resolved_params"]["continue_from"] == best["id"]
    assert f"continues from job {best['id']}'s checkpoint" in proc.stdout + proc.stderr
    (same,) = [j for j in jobs if j["stage"] == "straight" and j["params"]["lr"] == best["params"]["lr"]]
    assert promoted["result"]["test_loss"] == same["result"]["test_loss"]
