"""The per-stage MLflow tables of `sweeper report --mlflow-screenshot` (sweeper/views/mlflow_shot.py),
planned from a real MLflow store: each stage's runs, the params that tell them apart and the
headline metrics as columns, best first; a stage whose runs have rows (prune steps) shows the rows."""

from __future__ import annotations

from pathlib import Path

from sweeper.running.tracking import RunInfo, make_tracker
from sweeper.views.mlflow_shot import plan_stage_shots


def test_each_stage_gets_its_own_table_with_the_columns_that_tell_its_runs_apart(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for i, (kernel, dense) in enumerate([(3, 64), (5, 64), (3, 100)]):
        t = make_tracker(uri, tmp_path)
        params = {"conv1": {"kernel": kernel, "channels": 16}, "dense": dense, "lr": 0.001}
        t.start(RunInfo("sw", "model_search", f"job-{i}", "train", "x", 1, params), None)
        t.log_metrics({"test_accuracy": 0.88 + i / 100, "time_to_target_s": 300.0}, step=1)
        t.end("FINISHED")
    t = make_tracker(uri, tmp_path)
    parent = t.start(RunInfo("sw", "prune_conv1", "job-p", "prune", "conv1", 1, {"layer": "conv1"}), None)
    for k in (1, 2):
        t.log_row(f"step {k}", {"layer": "conv1", "step": k, "verdict": "accepted" if k == 1 else "rejected"},
                  {"step": k, "accuracy_before": 0.9, "accuracy_after_finetune": 0.89, "pruning_drop": 0.01})  # fmt: skip
    t.end("FINISHED")

    shots = {s.stage: s for s in plan_stage_shots(uri, "sw")}
    assert sorted(shots) == ["model_search", "prune_conv1"]
    grid = shots["model_search"].view
    assert grid["searchFilter"] == "tags.stage = 'model_search'"
    assert grid["orderByKey"] == "metrics.`test_accuracy`" and grid["orderByAsc"] is False, "best first"
    columns = grid["selectedColumns"]
    assert "params.`conv1.kernel`" in columns and "params.`dense`" in columns
    assert "params.`lr`" not in columns and "params.`conv1.channels`" not in columns, "the same in every run"
    assert "metrics.`test_accuracy`" in columns and "metrics.`time_to_target_s`" in columns
    assert shots["model_search"].file == "mlflow-model_search.png"

    prune = shots["prune_conv1"].view
    assert prune["orderByKey"] == "metrics.`step`" and prune["orderByAsc"] is True, "steps in order"
    assert prune["runsExpanded"] == {parent: True}, "the job's rows are shown under it"
    assert "params.`verdict`" in prune["selectedColumns"] and "metrics.`pruning_drop`" in prune["selectedColumns"]
