"""Pruning by the rule, on real Fashion-MNIST (a subset), run by a real `sweeper work`.

A layer stops at the first step whose pruning drop (the assignment's: the raw triplet's first
minus last number) exceeds 1 point (not at a step cap), or, with max_total_drop, at the first step
whose cumulative drop from the unpruned model exceeds it. Beside every step an unpruned control is
fine-tuned with the same epochs: its gain gives the controlled drop (information, or the rule with
`drop: controlled`); a chained prune job carries the cumulative drop on.
The control is retrained beside every step (`control_stop_gain: null`) or until one retraining
gains it less than `control_stop_gain`, after which later steps keep its accuracy.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.ml.model import load_model
from tests.conftest import FMNIST_DIR, run_cli

GRID = """
sweep: prune-rule
defaults: {{data_dir: "{data}", train_subset: 2000, test_subset: 1000, seed: 0, lr: 0.01, momentum: 0.9,
           batch_size: 32}}
stages:
  train:
    kind: train
    params: {{conv1: {{channels: 4, kernel: 3}}, conv2: {{channels: 4, kernel: 3}}, dense: 12, max_epochs: 2,
             target_train_acc: null, eval_train: false, log_every: 20}}
  by_step:
    kind: prune
    needs: [train]
    params: {{model: {{result_of: train}}, layer: fc1, finetune_epochs: 1, control_stop_gain: null}}
  by_control:
    kind: prune
    needs: [train]
    params: {{model: {{result_of: train}}, layer: fc1, finetune_epochs: 1, drop: controlled, control_stop_gain: null}}
  by_total:
    kind: prune
    needs: [train]
    params: {{model: {{result_of: train}}, layer: fc1, finetune_epochs: 1, max_step_drop: 1.0, max_total_drop: 0.02,
             control_stop_gain: 1.0}}
  chained:
    kind: prune
    needs: [by_total]
    params: {{model: {{result_of: by_total}}, layer: conv2, finetune_epochs: 1, max_step_drop: 1.0,
             max_total_drop: 0.02}}
"""
WORK = ("--no-tracking", "--threads-per-worker", "1", "--retry-backoff", "0")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real Fashion-MNIST not found in {FMNIST_DIR}: apt-get install dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("prune-rule")
    (root / "grid.yaml").write_text(textwrap.dedent(GRID.format(data=FMNIST_DIR)))
    assert run_cli("enqueue", "grid.yaml", cwd=root).returncode == 0
    done = run_cli("work", *WORK, cwd=root, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def results(root: Path) -> dict[str, dict]:
    engine = sa.create_engine(f"sqlite:///{root / 'state' / 'queue.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select id, stage, status, result, error from jobs")).mappings().all()
    engine.dispose()
    out = {}
    for r in rows:
        assert r["status"] == "done", (r["stage"], r["error"])
        out[r["stage"]] = {"id": r["id"], **json.loads(r["result"])}
    return out


def assert_drops_are_against_the_control(r: dict) -> None:
    control = r["input_test_accuracy"]
    for t in r["triplets"]:
        assert t["raw_drop"] == pytest.approx(t["before"] - t["after_finetune"])
        gain = t["control"] - control
        assert t["controlled_drop"] == pytest.approx(t["raw_drop"] + gain), "controlled = raw + control's gain"
        assert t["drop"] == (t["raw_drop"] if r["drop_rule"] == "raw" else t["controlled_drop"])
        assert t["total_drop"] == pytest.approx(r["upstream_total_drop"] + t["control"] - t["after_finetune"])
        control = t["control"]


@pytest.mark.slow
def test_a_layer_stops_at_the_first_step_whose_raw_drop_exceeds_one_point(sweep):
    r = results(sweep)["by_step"]
    steps = r["triplets"]
    assert r["control"] is True and r["max_step_drop"] == 0.01 and r["max_total_drop"] is None
    assert r["drop_rule"] == "raw" and r["max_steps"] is None, "the assignment's rule is the default"
    assert_drops_are_against_the_control(r)
    *kept, last = steps
    assert all(t["accepted"] and t["before"] - t["after_finetune"] <= 0.01 + 1e-9 for t in kept)
    assert not last["accepted"] and last["before"] - last["after_finetune"] > 0.01, "stopped by the 1% rule"
    assert "raw pruning drop" in r["stop_reason"] and "max_step_drop 0.01" in r["stop_reason"]
    assert "one unit left" not in r["stop_reason"] and "max_total_drop" not in r["stop_reason"]
    assert r["result_step"] == len(kept)
    assert r["arch"]["dense"] == 12 - len(kept)
    assert "fc2 is the output layer" in r["output_layer"]
    assert r["control_converged_at_step"] is None and all(t["control_measured"] for t in steps), "every step"


@pytest.mark.slow
def test_with_drop_controlled_the_rule_judges_the_controlled_drop(sweep):
    r = results(sweep)["by_control"]
    assert r["drop_rule"] == "controlled"
    assert_drops_are_against_the_control(r)
    *kept, last = r["triplets"]
    assert all(t["accepted"] and t["controlled_drop"] <= 0.01 + 1e-9 for t in kept)
    assert not last["accepted"] and last["controlled_drop"] > 0.01
    assert "controlled pruning drop" in r["stop_reason"]


@pytest.mark.slow
def test_a_converged_control_is_not_retrained_again(sweep):
    # by_total: control_stop_gain 1.0, so the control's first gain (whatever it is) counts as converged
    r = results(sweep)["by_total"]
    first, *later = r["triplets"]
    assert later, "the fc1 slide takes several steps"
    assert r["control_converged_at_step"] == 1 and first["control_measured"]
    assert not any(t["control_measured"] for t in later)
    assert all(t["control"] == first["control"] for t in later), "later steps keep the control's last accuracy"
    assert all(t["controlled_drop"] == pytest.approx(t["raw_drop"]) for t in later), "no gain once converged"


@pytest.mark.slow
def test_the_cumulative_limit_stops_a_slide_that_no_single_step_would(sweep):
    r = results(sweep)["by_total"]
    steps = r["triplets"]
    assert_drops_are_against_the_control(r)
    *kept, last = steps
    assert all(t["accepted"] and t["total_drop"] <= 0.02 + 1e-9 for t in kept)
    assert not last["accepted"] and last["total_drop"] > 0.02, "stopped by the cumulative limit"
    assert last["drop"] <= 1.0, "the step rule (max_step_drop 1.0) alone would have accepted it"
    assert "max_total_drop 0.02" in r["stop_reason"] and "max_step_drop" not in r["stop_reason"]
    assert r["total_drop"] == (kept[-1]["total_drop"] if kept else 0.0)


@pytest.mark.slow
def test_a_chained_prune_job_carries_the_cumulative_drop_on(sweep):
    all_results = results(sweep)
    up, r = all_results["by_total"], all_results["chained"]
    assert r["upstream_total_drop"] == pytest.approx(up["total_drop"])
    assert_drops_are_against_the_control(r)
    for t in r["triplets"]:
        assert t["accepted"] == (t["total_drop"] <= 0.02 + 1e-9)
    model = load_model(sweep / "state" / "artifacts" / "prune-rule" / r["id"] / "model.pt")
    assert model.arch.dense == up["arch"]["dense"], "conv2 pruning leaves fc1's units alone"
