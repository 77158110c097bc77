"""`kind: prune` run in-process on one claimed job of a real SQLite queue (tests/onejob.py).

The upstream model is a tiny CNN trained one epoch on synthetic data and stored as a real
artifact; `ref` is the resolved hand-off that points at it, as the queue would pass it. A prune
attempt can be stopped at a chosen checkpoint (`stop_when`), through the job's real stop flag.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.kinds import prune
from jobs.ml.data import load_dataset
from jobs.ml.model import Arch, Conv, build, save_model
from jobs.ml.training import LoopConfig, fit, make_optimizer
from sweeper.context import JobContext

from .onejob import Job

ARCH = Arch(Conv(4, 5), Conv(4, 5), 8, pool=True)  # pooled: a small fc1, so a small checkpoint
TRAINING = {
    "dataset": "synthetic",
    "train_subset": 2000,
    "test_subset": 200,
    "seed": 3,
    "lr": 0.02,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "batch_size": 32,
}


def upstream_model(job: Job) -> dict[str, Any]:
    """Train the input model for two epochs (about 34% test accuracy), store it as the job's artifact, return the hand-off to it."""
    ctx = job.attempt()
    data = load_dataset("synthetic", train_subset=TRAINING["train_subset"], test_subset=TRAINING["test_subset"])
    model = build(ARCH, "xavier_uniform", TRAINING["seed"])
    cfg = LoopConfig(epochs=2, batch_size=32, seed=TRAINING["seed"], checkpoint_every_s=1e9, target_train_acc=None)
    fit(
        ctx,
        model,
        make_optimizer(model, lr=TRAINING["lr"], momentum=0.9),
        data.train,
        data.test,
        cfg,
        save=lambda _: None,
    )
    out = ctx.work_dir() / "upstream"
    out.mkdir(parents=True, exist_ok=True)
    info = ctx.log_artifact(save_model(out / "model.pt", model), "model.pt")
    return {
        "job": ctx.job_id,
        "stage": "train",
        "params": dict(TRAINING),
        "metrics": {},
        "artifacts": {"model.pt": info},
    }


def attempt(job: Job, params: dict[str, Any], stop_when: Callable[[dict[str, Any]], bool] | None = None) -> Any:
    """One attempt of prune.run on `job`; it is stopped (as by SIGTERM) after the first checkpoint
    for which stop_when(checkpoint) is true."""
    ctx = job.attempt()
    if stop_when is not None:
        write = ctx.checkpoint

        def checkpoint(state: Any) -> None:
            write(state)
            if stop_when(dict(state)):
                ctx.request_stop()

        ctx.checkpoint = checkpoint  # type: ignore[method-assign]  # the prune code calls ctx.checkpoint
    return prune.run(ctx, params)


def resume_elsewhere(root: Path, checkpoint: dict[str, Any], params: dict[str, Any]) -> tuple[Any, Path]:
    """Put `checkpoint` in a fresh job's store and let prune run it to the end: (result, result model)."""
    job = Job(root)
    try:
        ctx: JobContext = job.attempt()
        ctx.checkpoint(checkpoint)
        result = attempt(job, params)
        return result, ctx.work_dir() / "out" / "step-result" / "model.pt"
    finally:
        job.db.dispose()
