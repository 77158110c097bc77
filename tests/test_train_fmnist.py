"""`kind: train` on real Fashion-MNIST (10k train / 2k test, 2 epochs, the seed's baseline net and
hyperparameters) through a real worker: the accuracy, the artifacts, and what MLflow records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from mlflow.tracking import MlflowClient

from jobs.ml.data import load_dataset
from jobs.ml.model import load_model
from jobs.ml.training import evaluate

from .conftest import run_cli
from .mlflow_template import install, template

GRID = """
sweep: fmnist
defaults: {seed: 0, lr: 0.001, momentum: 0.9, batch_size: 32, init: xavier_uniform}
stages:
  baseline:
    kind: train
    params:
      conv1: {channels: 16, kernel: 3}
      conv2: {channels: 16, kernel: 3}
      dense: 100
      train_subset: 10000
      test_subset: 2000
      max_epochs: 2
"""


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory) -> Path:
    return template(tmp_path_factory)


def test_baseline_on_real_fashion_mnist_subset_reaches_80_percent_and_leaves_its_artifacts(
    tmp_path, fmnist_dir, mlflow_template
):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    state = tmp_path / "state"
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    install(mlflow_template, state)
    proc = run_cli("work", "--state", str(state), "--data-dir", str(fmnist_dir), "--threads-per-worker", "1")
    assert proc.returncode == 0, proc.stderr
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    with engine.connect() as conn:
        job = dict(conn.execute(sa.text("select id, status, result, tracking_run_id from jobs")).mappings().one())
    engine.dispose()
    assert job["status"] == "done", proc.stderr
    result = json.loads(job["result"]) if isinstance(job["result"], str) else job["result"]

    assert result["test_accuracy"] >= 0.80
    assert (
        result["epochs"] == 2 and result["params"] == 16 * 9 + 16 + 16 * 16 * 9 + 16 + 24 * 24 * 16 * 100 + 100 + 1010
    )
    # two epochs of 10k images stay below 90% running train accuracy: never reached is null, not a number
    assert result["reached"] is False and result["time_to_target_s"] is None
    assert result["total_train_s"] > 0 and result["images_per_s"] > 0

    out = state / "artifacts" / "fmnist" / job["id"]
    # model.pt: the hand-off to prune/benchmark; loads with weights_only and scores what the job reported
    model = load_model(out / "model.pt")
    data = load_dataset("fashion-mnist", data_dir=fmnist_dir, train_subset=10000, test_subset=2000)
    loss, acc = evaluate(model, data.test.x, data.test.y)
    assert acc == result["test_accuracy"] and abs(loss - result["test_loss"]) < 1e-6

    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["epochs"][-1]["test_acc"] == result["test_accuracy"]
    # 313 batches per epoch; a point every 100 batches and at each epoch end
    assert [p["step"] for p in history["points"]] == [100, 200, 300, 313, 413, 513, 613, 626]
    assert history["target"] == {"train_acc": 0.9, "window_images": 10000, "window_batches": 313}

    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2000 and {"true", "predicted"} <= set(rows[0])
    assert sum(r["true"] == r["predicted"] for r in rows) / 2000 == result["test_accuracy"]
    assert [int(r["true"]) for r in rows] == data.test.y.tolist()
    for name in ("curves.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # MLflow: one run with the flattened params, step and epoch metrics, final metrics, the artifacts
    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    run = client.get_run(job["tracking_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["conv1.channels"] == "16" and run.data.params["lr"] == "0.001"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_test_acc")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == result["test_accuracy"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == len(history["points"])
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert names == {"model.pt", "history.json", "predictions.csv", "curves.png", "confusion.png"}
    assert torch.load(client.download_artifacts(run.info.run_id, "model.pt"), weights_only=True)["arch"]["dense"] == 100


DIVERGING = """
sweep: fmnist-diverge
stages:
  too_high:
    kind: train
    params: {seed: 0, lr: 1.0e+30, momentum: 0.9, batch_size: 32, train_subset: 2000, test_subset: 500,
             max_epochs: 1, log_every: 10}
"""


def test_a_run_whose_loss_diverges_to_nan_completes_and_records_it_as_null(tmp_path, fmnist_dir, mlflow_template):
    """A learning rate far too high (1e30: the weights overflow at the first step) makes the loss NaN: the job must still finish,
    with its history and result written (NaN as null: JSON has no NaN) and its MLflow run closed."""
    (tmp_path / "grid.yaml").write_text(DIVERGING)
    state = tmp_path / "state"
    assert run_cli("enqueue", str(tmp_path / "grid.yaml"), "--state", str(state)).returncode == 0
    install(mlflow_template, state)
    proc = run_cli("work", "--state", str(state), "--data-dir", str(fmnist_dir), "--threads-per-worker", "1")
    assert proc.returncode == 0, proc.stderr
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    with engine.connect() as conn:
        job = dict(
            conn.execute(sa.text("select id, status, result, error, tracking_run_id from jobs")).mappings().one()
        )
    engine.dispose()
    assert job["status"] == "done", job["error"]
    result = json.loads(job["result"]) if isinstance(job["result"], str) else job["result"]
    assert result["test_accuracy"] <= 0.2, "diverged: about chance (10 classes)"
    history = json.loads((state / "artifacts" / "fmnist-diverge" / job["id"] / "history.json").read_text())
    losses = [p["loss"] for p in history["points"]]
    assert None in losses, "the diverged running loss is null in history.json"
    assert MlflowClient(f"sqlite:///{state / 'mlflow.db'}").get_run(job["tracking_run_id"]).info.status == "FINISHED"
