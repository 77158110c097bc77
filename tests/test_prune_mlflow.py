"""A prune job in MLflow (real SQLite MLflow store, prune.run in-process on a real queue): every
step is a row of the runs table (a child run with the triplet, the drops and the verdict), and the
job's own `test_accuracy` is its accepted model's, not the rejected last step's (issue 21)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sweeper.running.tracking import MLflowTracker, RunInfo, make_tracker

from .onejob import Job, one_thread  # noqa: F401  (an autouse fixture)
from .prunekit import attempt, upstream_model


def tracked(job: Job, uri: str, run_id: str | None = None) -> tuple[object, MLflowTracker, str]:
    """A fresh attempt of `job` logging to the MLflow store at `uri` (reopening run_id if given)."""
    ctx = job.attempt()
    tracker = make_tracker(uri, job.state_dir)
    assert isinstance(tracker, MLflowTracker)
    run = RunInfo("prune-mlflow", "prune_conv1", ctx.job_id, "prune", "conv1", ctx.attempt, {"layer": "conv1"})
    rid = tracker.start(run, run_id)
    assert rid is not None
    ctx.tracker = tracker
    return ctx, tracker, rid


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> tuple[dict, str, str]:
    root = tmp_path_factory.mktemp("prune-mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    job = Job(root / "job")
    try:
        # no fine-tuning and max_step_drop 0: the first step that costs any accuracy is rejected
        params = {"model": upstream_model(job), "layer": "conv1", "finetune_epochs": 0, "max_step_drop": 0.0}
        ctx, tracker, run_id = tracked(job, uri)
        # stopped once after step 1 is recorded, resumed by a second attempt on the same run
        first = attempt_with(ctx, params, lambda s: len(s["steps"]) == 1 and s["pending"] is None)
        assert type(first).__name__ == "Interrupted"
        tracker.end("KILLED")
        ctx, tracker, again = tracked(job, uri, run_id)
        assert again == run_id
        result = attempt_with(ctx, params, None)
        tracker.end("FINISHED")
    finally:
        job.db.dispose()
    return result, uri, run_id


def attempt_with(ctx, params, stop_when):
    """prunekit.attempt on this test's tracked context (it asks its job for a fresh one)."""
    return attempt(_Given(ctx), params, stop_when)  # type: ignore[arg-type]


class _Given:
    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def attempt(self):
        return self.ctx


def rows(uri: str, run_id: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_run(run_id).info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    return sorted(children, key=lambda r: r.data.metrics["step"])


def test_every_prune_step_is_one_mlflow_row_with_its_triplet_and_verdict(pruned):
    result, uri, run_id = pruned
    steps = result["triplets"]
    found = rows(uri, run_id)
    assert len(found) == len(steps) >= 2, "one row per step, none twice across the two attempts"
    for row, t in zip(found, steps, strict=True):
        m, p = row.data.metrics, row.data.params
        assert m["step"] == t["step"] and p["layer"] == "conv1"
        assert m["accuracy_before"] == pytest.approx(t["before"])
        assert m["accuracy_after_prune"] == pytest.approx(t["after_prune"])
        assert m["accuracy_after_finetune"] == pytest.approx(t["after_finetune"])
        assert m["pruning_drop"] == pytest.approx(t["drop"])
        assert p["verdict"] == ("accepted" if t["accepted"] else "rejected")
        assert row.info.status == "FINISHED" and "job_id" not in row.data.tags, "a row is not a job's run"


def test_the_runs_test_accuracy_is_the_accepted_models_not_the_rejected_last_steps(pruned):
    result, uri, run_id = pruned
    last = result["triplets"][-1]
    assert not last["accepted"], "max_step_drop 0 without fine-tuning rejects a step"
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(result["test_accuracy"])
    kept = result["triplets"][result["result_step"] - 1]["after_finetune"] if result["result_step"] else None
    assert result["test_accuracy"] == (kept if kept is not None else result["input_test_accuracy"])
    assert run.data.metrics["step_accuracy"] == pytest.approx(last["after_finetune"]), "per step, under its own name"


def test_a_row_logged_again_under_its_name_is_not_written_twice(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = make_tracker(uri, tmp_path)
    run_id = t.start(RunInfo("rows", "s", "job-1", "prune", "x", 1, {}), None)
    for _ in range(2):  # a step replayed after a kill between its row and its checkpoint
        t.log_row("step 1", {"layer": "fc1"}, {"pruning_drop": 0.004})
    t.log_row("step 2", {"layer": "fc1"}, {"pruning_drop": 0.02})
    t.end("FINISHED")
    found = rows_by_name(uri, run_id)
    assert found == {"step 1": 0.004, "step 2": 0.02}


def rows_by_name(uri: str, run_id: str) -> dict[str, float]:
    client = MlflowClient(uri)
    exp = client.get_run(run_id).info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    names = [c.data.tags["row"] for c in children]
    assert len(names) == len(set(names))
    return {c.data.tags["row"]: c.data.metrics["pruning_drop"] for c in children}


def test_a_zombie_writes_no_step_row(tmp_path):
    """A step row goes to MLflow at once, so log_row checks the lease first: after a takeover the
    old attempt's row is refused (LeaseLost) and the run gets no child."""
    import sqlalchemy as sa

    from sweeper.errors import LeaseLost
    from sweeper.store.db import jobs

    job = Job(tmp_path / "job")
    ctx, tracker, run_id = tracked(job, f"sqlite:///{tmp_path / 'mlflow.db'}")
    ctx.log_row("step 1", {"units": 7}, {"step_accuracy": 0.5})  # the owner: written
    with job.queue.db.write() as conn:  # another worker takes the job over: a new lease token
        conn.execute(sa.update(jobs).where(jobs.c.id == ctx.job_id).values(lease_token="taken-over"))
    with pytest.raises(LeaseLost):
        ctx.log_row("step 2", {"units": 6}, {"step_accuracy": 0.4})
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_run(run_id).info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert [r.info.run_name.rsplit(" ", 2)[-2:] for r in children] == [["step", "1"]]  # "... step 1"
    tracker.end("KILLED")
