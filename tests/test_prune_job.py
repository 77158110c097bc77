"""`kind: prune` run by real `sweeper work` processes on a SQLite queue, with a real SIGKILL.

One small sweep (synthetic data, a tiny CNN) is trained once per module; prune stages then work
on that trained model.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from jobs.ml.model import load_model
from tests.conftest import run_cli, start_worker, stop_process, wait_for

PRUNE = "{model: {result_of: train}, layer: conv1, finetune_epochs: %d, max_steps: %d, max_step_drop: %s}"
GRID = f"""
sweep: prune-test
defaults: {{dataset: synthetic, train_subset: 6000, test_subset: 500, seed: 3, lr: 0.01, momentum: 0.9, batch_size: 32}}
stages:
  train:
    kind: train
    params: {{conv1: {{channels: 5, kernel: 3}}, conv2: {{channels: 6, kernel: 3}}, dense: 24, max_epochs: 1,
             target_train_acc: null, eval_train: false}}
  prune_a:
    kind: prune
    needs: [train]
    params: {PRUNE % (3, 2, 0.0)}
  prune_b:
    kind: prune
    needs: [train]
    params: {PRUNE[:-1] % (3, 2, 0.0)}, checkpoint_every_s: 0.2}}
  prune_c:
    kind: prune
    needs: [train]
    params: {{model: {{result_of: train}}, layer: conv1, finetune_epochs: 0, max_step_drop: 0.0}}
  prune_mag:
    kind: prune
    needs: [train]
    params: {{model: {{result_of: train}}, method: magnitude, layer: all, amounts: [0.5, 0.9], finetune_epochs: 1}}
  prune_nomodel:
    kind: prune
    needs: [train]
    params: {{layer: fc1}}
  bench_nomodels:
    kind: benchmark
    needs: [prune_a]
    params: {{min_test_accuracy: 0.5}}
"""
# one worker: with a 2 s lease on a loaded machine, a second worker here could take a live job over
WORK = ("--workers", "1", "--no-tracking", "--threads-per-worker", "1", "--lease-ttl", "2", "--retry-backoff", "0")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Train once, then run the uninterrupted prune stages (prune_b is left for the kill test)."""
    root = tmp_path_factory.mktemp("prune")
    (root / "grid.yaml").write_text(textwrap.dedent(GRID))
    assert run_cli("enqueue", "grid.yaml", cwd=root).returncode == 0
    args = ("work", *WORK, "--stage", "train", "--stage", "prune_a", "--stage", "prune_mag")
    args += ("--stage", "prune_c", "--stage", "prune_nomodel", "--stage", "bench_nomodels")
    done = run_cli(*args, cwd=root, timeout=900)  # every structured step fine-tunes twice (the control)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def jobs(root: Path) -> dict[str, dict]:
    engine = sa.create_engine(f"sqlite:///{root / 'state' / 'queue.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select id, stage, status, result, error, attempt, interruptions, progress_message from jobs")
        ).mappings()
        out = {}
        for r in rows:
            row = dict(r)
            if isinstance(row["result"], str):
                row["result"] = json.loads(row["result"])
            out[row["stage"]] = row
    engine.dispose()
    return out


def artifact(root: Path, job: dict, name: str) -> Path:
    return root / "state" / "artifacts" / "prune-test" / job["id"] / name


def newest_checkpoint(root: Path, job_id: str) -> dict | None:
    """The job's newest checkpoint file, loaded as a worker would (weights_only), or None."""
    directory = root / "state" / "checkpoints" / "prune-test" / job_id
    for path in sorted(directory.glob("*.ckpt"), reverse=True):  # named <time_ns>.<sha256>.ckpt
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError):
            continue  # pruned away (the store keeps two) while we read it
    return None


def in_fine_tuning(state: dict | None, step: int, epoch: int) -> bool:
    if not state or not state.get("pending") or not state.get("finetune"):
        return False
    ft = state["finetune"]
    return state["pending"]["step"] == step and ft["epoch"] == epoch and ft["batch"] > 0  # mid-epoch


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_step_is_a_triplet_and_the_result_is_the_last_accepted_model(sweep):
    all_jobs = jobs(sweep)
    train, job = all_jobs["train"], all_jobs["prune_a"]
    assert job["status"] == "done", job["error"]
    r = job["result"]
    assert r["input_job"] == train["id"]
    assert r["input_test_accuracy"] == pytest.approx(train["result"]["test_accuracy"])
    steps = r["triplets"]
    assert steps, "at least one step runs"
    before = control = r["input_test_accuracy"]
    assert r["control"] is True, "structured pruning with fine-tuning measures drops against a control"
    for i, t in enumerate(steps, start=1):
        assert t["step"] == i
        assert t["before"] == before, "each step starts from the last accepted model's accuracy"
        assert t["raw_drop"] == pytest.approx(t["before"] - t["after_finetune"])
        # the rule judges the assignment's drop, the raw triplet's first minus last number; the
        # control's gain is beside it as information (the controlled drop)
        assert t["drop"] == t["raw_drop"]
        assert t["controlled_drop"] == pytest.approx(t["raw_drop"] + t["control"] - control)
        assert t["total_drop"] == pytest.approx(t["control"] - t["after_finetune"]), "the input is unpruned"
        assert t["accepted"] == (t["raw_drop"] <= 1e-9), "max_step_drop 0 (up to float rounding)"
        control = t["control"]
        assert f"conv 3x3x{5 - i}," in t["architecture"]
        if not t["accepted"]:
            assert i == len(steps), "pruning stops at the first rejected step"
            break
        before = t["after_finetune"]
    accepted = [t for t in steps if t["accepted"]]
    assert r["result_step"] == (accepted[-1]["step"] if accepted else 0)
    # model.pt is byte for byte the last accepted step's model; every step's model is kept
    assert sha(artifact(sweep, job, "model.pt")) == sha(artifact(sweep, job, f"step-{r['result_step']}.pt"))
    assert sha(artifact(sweep, job, "step-0.pt")) == sha(artifact(sweep, train, "model.pt"))
    for t in steps:
        model = load_model(artifact(sweep, job, f"step-{t['step']}.pt"))
        assert model.conv1.weight.shape[0] == 5 - t["step"], "removal is physical"
        assert model.conv2.weight.shape[1] == 5 - t["step"], "conv2 lost the same input channel"
    assert (artifact(sweep, job, "pruning.csv")).read_text().count("\n") == len(steps) + 1


def test_pruning_stops_at_the_first_step_whose_drop_exceeds_max_step_drop(sweep):
    job = jobs(sweep)["prune_c"]
    assert job["status"] == "done", job["error"]
    r = job["result"]
    steps = r["triplets"]
    # without fine-tuning, removing conv1 channels one by one costs accuracy at some step
    assert steps[-1]["accepted"] is False and steps[-1]["drop"] > 0.0
    assert all(t["accepted"] for t in steps[:-1])
    assert all(t["after_finetune"] == t["after_prune"] for t in steps), "finetune_epochs: 0 measures once"
    assert r["control"] is False and all(t["drop"] == t["raw_drop"] for t in steps), "no fine-tuning: no control"
    assert r["result_step"] == len(steps) - 1
    assert "max_step_drop" in r["stop_reason"]
    kept = load_model(artifact(sweep, job, "model.pt"))
    assert kept.conv1.weight.shape[0] == 5 - r["result_step"], "the rejected step's model is not the result"
    rejected = load_model(artifact(sweep, job, f"step-{len(steps)}.pt"))
    assert rejected.conv1.weight.shape[0] == 5 - len(steps), "the rejected step's model is kept on file"


def test_magnitude_pruning_keeps_the_zeros_through_fine_tuning(sweep):
    job = jobs(sweep)["prune_mag"]
    assert job["status"] == "done", job["error"]
    r = job["result"]
    assert [t["step"] for t in r["triplets"]] == [1, 2]
    for t, amount in zip(r["triplets"], (0.5, 0.9), strict=True):
        model = load_model(artifact(sweep, job, f"step-{t['step']}.pt"))
        for name in ("conv1", "conv2", "fc1", "fc2"):
            w = getattr(model, name).weight
            assert int((w == 0).sum()) >= round(amount * w.numel()), f"{name} lost its zeros while fine-tuning"
        assert t["drop"] == pytest.approx(r["input_test_accuracy"] - t["after_finetune"])


def test_prune_without_a_model_reference_fails_once_with_a_clear_message(sweep):
    job = jobs(sweep)["prune_nomodel"]
    assert job["status"] == "failed"
    assert job["attempt"] == 1, "a param error is not retried"
    assert "param 'model' must refer to one upstream job's output" in job["error"]
    assert "best_of" in job["error"]


def test_benchmark_without_a_models_reference_fails_once_saying_how_to_write_it(sweep):
    job = jobs(sweep)["bench_nomodels"]
    assert job["status"] == "failed"
    assert job["attempt"] == 1
    assert "param 'models' must refer to one upstream job's output" in job["error"]
    assert "all_of: [prune_conv1, prune_conv2, prune_fc1]" in job["error"]


def test_killed_during_fine_tuning_resumes_mid_step_with_identical_triplets(sweep):
    log = sweep / "worker_b.log"
    worker = start_worker(*WORK, "--stage", "prune_b", cwd=sweep, log=log)
    try:
        # Watch the job's own checkpoints: once one was written in the middle of step 1's second
        # fine-tuning epoch, more than an epoch of step 1 is left, so the kill lands mid-step.
        job_id = jobs(sweep)["prune_b"]["id"]
        wait_for(
            lambda: in_fine_tuning(newest_checkpoint(sweep, job_id), step=1, epoch=1),
            timeout=120,
            interval=0.01,
            what="a checkpoint in the middle of prune_b's step-1 fine-tuning, second epoch",
        )
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        stop_process(worker)
    assert jobs(sweep)["prune_b"]["status"] == "running", "killed -9: nobody released the job"
    # --wait: the killed worker's lease may not have expired yet when this one starts
    resumed = run_cli("work", *WORK, "--stage", "prune_b", "--wait", "--poll", "0.2", cwd=sweep, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    all_jobs = jobs(sweep)
    a, b = all_jobs["prune_a"]["result"], all_jobs["prune_b"]
    assert b["status"] == "done", b["error"]
    assert b["attempt"] == 2
    where = b["result"]["resumes"]
    assert where and where[0]["phase"] == "fine-tuning" and where[0]["step"] == 1, where
    assert (where[0]["epoch"], where[0]["batch"]) > (1, 0), "resumed in the middle of fine-tuning"
    assert b["result"]["triplets"] == a["triplets"]
    a_model = load_model(artifact(sweep, all_jobs["prune_a"], "model.pt"))
    b_model = load_model(artifact(sweep, b, "model.pt"))
    for (name, wa), wb in zip(a_model.state_dict().items(), b_model.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), f"{name} differs after the resume"


def test_train_and_prune_declare_the_numbers_their_results_hold(sweep):
    # `enqueue` checks hand-off metrics against these declarations (tests/test_handoff_checks.py)
    from jobs.kinds.params import PruneParams, TrainParams

    all_jobs = jobs(sweep)
    for stage, model in (("train", TrainParams), ("prune_a", PruneParams)):
        result = all_jobs[stage]["result"]
        # a None is a number not measured; a bool is not a number a hand-off ranks by
        numbers = {k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers <= model.metrics, (stage, numbers - model.metrics)
        assert model.metrics <= set(result), (stage, model.metrics - set(result))
