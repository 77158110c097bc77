"""The assignment's pipeline in miniature, run by `sweeper work` alone on a SQLite queue.

model_search (4 jobs) -> train_search (inherits the best architecture) -> prune_conv1 (the best
trained model) -> benchmark (every pruned model). One worker process claims everything: later
stages start by themselves once their upstream is done.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import sqlalchemy as sa
import torch
from mlflow.tracking import MlflowClient

from jobs.kinds.benchmark_result import BenchmarkResult
from tests.conftest import run_cli

GRID = """
sweep: e2e
defaults: {dataset: synthetic, train_subset: 4000, test_subset: 400, seed: 0, lr: 0.01, momentum: 0.9, batch_size: 32}
stages:
  model_search:
    kind: train
    params: {conv2: {channels: 6, kernel: 3}, max_epochs: 1, target_train_acc: null, eval_train: false}
    grid:
      conv1.channels: [3, 4]
      dense: [16, 24]
  train_search:
    kind: train
    needs: [model_search]
    inherit: {from: model_search, metric: test_accuracy, mode: max, keys: [conv1, conv2, dense]}
    params: {max_epochs: 1, target_train_acc: null, eval_train: false}
    grid:
      lr: [0.01, 0.02]
  prune_conv1:
    kind: prune
    needs: [train_search]
    params:
      model: {best_of: train_search, metric: test_accuracy, mode: max}
      layer: conv1
      finetune_epochs: 1
      max_step_drop: 0.02
  benchmark:
    kind: benchmark
    needs: [model_search, prune_conv1]
    params:
      models: {all_of: [prune_conv1]}
      original: {best_of: model_search, metric: test_accuracy, mode: max}  # stands in for step 1's network
      min_test_accuracy: 0.75
      timing_rounds: 2
"""
ORDER = ("model_search", "train_search", "prune_conv1", "benchmark")


def rows(root: Path) -> list[dict]:
    engine = sa.create_engine(f"sqlite:///{root / 'state' / 'queue.db'}")
    with engine.connect() as conn:
        out = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "select id, stage, status, position, params, resolved_params, params_effective, provenance, result, error, "
                    "started_at, finished_at, tracking_run_id from jobs order by position"
                )
            ).mappings()
        ]
    engine.dispose()
    for r in out:
        for key in ("params", "resolved_params", "params_effective", "provenance", "result"):
            if isinstance(r[key], str):
                r[key] = json.loads(r[key])
    return out


def best(jobs: list[dict], metric: str) -> dict:
    """The queue's rule: the highest metric, ties to the earlier job."""
    return min(jobs, key=lambda j: (-j["result"][metric], j["position"]))


def test_sweep_runs_to_the_benchmark_by_sweeper_work_alone(tmp_path):
    (tmp_path / "grid.yaml").write_text(textwrap.dedent(GRID))
    assert run_cli("enqueue", "grid.yaml", cwd=tmp_path).returncode == 0
    before = {r["stage"]: r["status"] for r in rows(tmp_path)}
    assert before == {
        "model_search": "pending",
        "train_search": "blocked",
        "prune_conv1": "blocked",
        "benchmark": "blocked",
    }

    # CUDA_HOME set: a CUDA toolkit on a machine with no GPU, as on Colab's CPU runtime
    done = run_cli("work", "--threads-per-worker", "1", cwd=tmp_path, timeout=900, CUDA_HOME=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No CUDA runtime is found" not in done.stdout + done.stderr, "torch's warning in the worker log"
    jobs = rows(tmp_path)
    by_stage = {s: [j for j in jobs if j["stage"] == s] for s in ORDER}
    assert [len(by_stage[s]) for s in ORDER] == [4, 2, 1, 1]
    assert all(j["status"] == "done" for j in jobs), [(j["stage"], j["error"]) for j in jobs if j["error"]]

    # each stage started only after every job of the stage it needs had finished
    for upstream, downstream in itertools.pairwise(ORDER):
        last_up = max(j["finished_at"] for j in by_stage[upstream])
        assert all(j["started_at"] >= last_up for j in by_stage[downstream]), f"{downstream} started early"

    # train_search inherited the architecture of the most accurate model_search job, as it ran
    # (its effective params: a kernel size left at its default is handed on too)
    winner = best(by_stage["model_search"], "test_accuracy")
    for job in by_stage["train_search"]:
        for key in ("conv1", "conv2", "dense"):
            assert job["resolved_params"][key] == winner["params_effective"][key]
            assert job["provenance"][key] == winner["id"]

    # prune_conv1 pruned the most accurate train_search model
    trained = best(by_stage["train_search"], "test_accuracy")
    prune = by_stage["prune_conv1"][0]
    assert prune["result"]["input_job"] == trained["id"]
    assert prune["result"]["input_test_accuracy"] == trained["result"]["test_accuracy"]
    steps = prune["result"]["triplets"]
    assert steps

    # the benchmark saw the input and every step, and selected the fewest FLOPs above 0.75
    bench = by_stage["benchmark"][0]["result"]
    names = [m["name"] for m in bench["models"]]
    assert names == [f"prune_conv1/step-{k}" for k in range(len(steps) + 1)]
    accuracy = {"prune_conv1/step-0": prune["result"]["input_test_accuracy"]}
    accuracy |= {f"prune_conv1/step-{t['step']}": t["after_finetune"] for t in steps}
    assert {m["name"]: m["test_accuracy"] for m in bench["models"]} == accuracy, "same test set, same numbers"
    flops = {m["name"]: m["flops"] for m in bench["models"]}
    assert all(flops[a] > flops[b] for a, b in itertools.pairwise(names)), "each step removes FLOPs"
    qualified = [n for n in names if accuracy[n] > 0.75]
    assert qualified, "the test needs at least one model above the floor"
    expected = min(qualified, key=lambda n: (flops[n], -accuracy[n], names.index(n)))
    assert bench["selected"]["name"] == expected
    assert bench["selected"]["job"] == prune["id"]
    assert bench["matmul_allclose"] is True
    assert bench["timing"]["model"] == expected
    assert bench["timing"]["matmul_median_s"] > 0 and bench["timing"]["nn_median_s"] > 0
    assert bench["timing"]["threads"] == 1 and bench["timing"]["batch_size"] == 32
    # the original network: measured on the same test set, timed with nn modules in the same rounds
    assert BenchmarkResult.read(bench).timing.original_nn_median_s == bench["timing"]["original_nn_median_s"]
    assert bench["original"]["job"] == winner["id"]
    assert bench["original"]["test_accuracy"] == winner["result"]["test_accuracy"]
    assert bench["timing"]["original_model"] == "model_search"
    assert bench["timing"]["original_nn_median_s"] > 0
    assert (
        bench["timing"]["matmul_over_original_nn"]
        == bench["timing"]["matmul_median_s"] / (bench["timing"]["original_nn_median_s"])
    )
    detail = bench["timing_detail"][expected]["cpu"]
    assert detail["original_nn"]["times_s"] and detail["nn"]["times_s"], "timed in the same rounds"
    if not torch.cuda.is_available():
        assert bench["timing"]["cuda"] == "skipped: CUDA is not available on this worker"
    else:
        assert bench["timing"]["cuda_matmul_median_s"] > 0
    artifacts = tmp_path / "state" / "artifacts" / "e2e" / by_stage["benchmark"][0]["id"]
    assert (artifacts / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((artifacts / "benchmark.json").read_text())["selected"]["name"] == expected

    # MLflow: one point per prune step for the triplet metrics, and the benchmark's figures
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    history = client.get_metric_history(prune["tracking_run_id"], "accuracy_after_finetune")
    assert sorted((m.step, m.value) for m in history) == [(t["step"], t["after_finetune"]) for t in steps]
    bench_metrics = client.get_run(by_stage["benchmark"][0]["tracking_run_id"]).data.metrics
    assert bench_metrics["selected_flops"] == flops[expected]
    assert bench_metrics["matmul_over_nn"] > 0
