"""`kind: train`: train the assignment's CNN on Fashion-MNIST, resumable bit-exactly.

Reads top to bottom: check params, load data, build the model, resume or start, train (the loop is
jobs/training.fit), evaluate, write artifacts, return the result metrics.
"""

from __future__ import annotations

from typing import Any

import torch

from jobs.kinds import outputs
from jobs.kinds.params import TrainParams, parse
from jobs.ml import figures
from jobs.ml.data import load_dataset
from jobs.ml.device import describe, job_numerics, numerics, on_device, pick_device
from jobs.ml.model import Arch, build, count_params, save_model
from jobs.ml.training import LoopConfig, TrainState, evaluate, fit, make_optimizer, predict, window_batches
from sweeper.context import Interrupted, JobContext, JobFailed


def run(ctx: JobContext, params: dict[str, Any]) -> Any:
    p = parse(TrainParams, params, "train")
    arch = Arch.from_params(p.model_dump())
    arch.validate()  # kernel too large for the input etc.: fail now, not after loading data
    device = pick_device(p.device)  # device: cuda without a GPU fails here, before any work
    with job_numerics(device):  # deterministic kernels on a GPU, for this job only
        ctx.add_provenance(numerics(device))  # device, tf32, deterministic: with the attempt (show, MLflow)
        return train(ctx, p, arch, device)


def train(ctx: JobContext, p: TrainParams, arch: Arch, device: torch.device) -> Any:
    data = load_dataset(
        p.dataset,
        data_dir=p.data_dir or ctx.options.get("data_dir"),
        state_dir=ctx.state_dir,
        train_subset=p.train_subset,
        test_subset=p.test_subset,
        val_subset=p.val_subset,
    )
    held_out = f", {len(data.val)} validation" if data.val is not None else ""
    ctx.log(
        f"job {ctx.job_id}: {data.name} from {data.source}: {len(data.train)} train{held_out}, {len(data.test)} test; "
        f"on {describe(device)}"
    )
    data = on_device(data, device)

    model = build(arch, p.init, p.seed).to(device)  # initialized on the CPU: the same weights on any device
    optimizer = make_optimizer(model, p.lr, p.momentum, p.weight_decay)
    cfg = LoopConfig(
        epochs=p.max_epochs,
        batch_size=p.batch_size,
        seed=p.seed,
        checkpoint_every_s=p.checkpoint_every_s,
        log_every=p.log_every,
        eval_batch_size=p.eval_batch_size,
        target_train_acc=p.target_train_acc,
        target_window=p.target_window,
        stop_at_target=p.stop_at_target,
    )
    checkpoint = ctx.restore()
    if checkpoint is None and p.continue_from:  # a promoted job's first attempt: its upstream's final state
        checkpoint = continued(ctx, p.continue_from, p.max_epochs, window_batches(cfg, len(data.train)))
    state = fit(ctx, model, optimizer, data.train, data.test, cfg, checkpoint=checkpoint, val=data.val)
    if isinstance(state, Interrupted):
        return state  # interrupted at a checkpoint; the worker releases the job

    # -- final evaluation (not training time) --
    time = state.summary()
    ctx.progress(1.0, f"trained {time.epochs:.2f} epochs; evaluating and writing artifacts")
    test_loss, test_acc = evaluate(model, data.test.x, data.test.y, p.eval_batch_size)
    running = state.history.epochs[-1] if state.history.epochs else None
    if p.eval_train:
        train_loss, train_acc = evaluate(model, data.train.x, data.train.y, p.eval_batch_size)
    elif running is not None:
        train_loss, train_acc = running["train_loss"], running["train_acc"]
    else:
        train_loss, train_acc = float("nan"), float("nan")
    images = state.epoch * len(data.train) + min(state.batch * p.batch_size, len(data.train))
    target_step = time.target_step
    result: dict[str, Any] = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "train_accuracy": train_acc,
        "train_loss": train_loss,
        **(validation(model, data.val, p.eval_batch_size) if data.val is not None else {}),
        "time_to_target_s": time.time_to_target_s,
        # The same moment in images seen: deterministic, so speed rankings do not depend on machine load.
        "images_to_target": None
        if target_step is None
        else images_seen(target_step, state.batches_per_epoch, len(data.train), p.batch_size),
        "reached": time.reached,
        "target_step": time.target_step,
        "epochs": time.epochs,
        "total_train_s": time.total_train_s,
        "params": count_params(model),
        "images_per_s": images / time.total_train_s if time.total_train_s > 0 else None,
        "train_running_accuracy": running["train_acc"] if running else None,
        "eval_s": time.eval_s,
        "checkpoint_s": time.checkpoint_s,
        "checkpoints": time.checkpoints,
        "dataset": data.name,
        "device": device.type,
    }
    if p.continue_from:
        result["continued_from"] = p.continue_from
    ctx.log_metrics(
        # time_to_target_s was logged at the step it was reached
        {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and k != "time_to_target_s"},
        step=state.step,
    )

    # -- artifacts: model.pt is the hand-off to prune/benchmark; the rest is for people and `sweeper report` --
    out = ctx.work_dir() / "out"
    out.mkdir(parents=True, exist_ok=True)
    predicted = predict(model, data.test.x, p.eval_batch_size).cpu()
    title = f"{ctx.stage}: {arch.describe()}, lr {p.lr}, momentum {p.momentum}, batch {p.batch_size}"
    history = {
        "version": 1,
        "job": ctx.job_id,
        "arch": arch.to_dict(),
        "dataset": {"name": data.name, "source": data.source, "train": len(data.train), "test": len(data.test)},
        "target": {
            "train_acc": p.target_train_acc,
            "window_images": p.target_window,
            "window_batches": window_batches(cfg, len(data.train)),
        },
        "time": time.to_dict(),
        "points": state.history.points,
        "epochs": state.history.epochs,
        "final": result,
    }
    files = {
        "model.pt": save_model(out / "model.pt", model),
        "history.json": outputs.write_history(out / "history.json", history),
        "predictions.csv": outputs.write_predictions(out / "predictions.csv", data.test.y.cpu(), predicted),
        "curves.png": outputs.plot_curves(out / "curves.png", state.history.points, state.history.epochs, title),
        "confusion.png": figures.plot_confusion(
            out / "confusion.png",
            outputs.confusion(data.test.y.cpu(), predicted).tolist(),
            f"{title}\ntest accuracy {test_acc:.4f}",
        ),
    }
    for name, path in files.items():
        ctx.log_artifact(path, name)
    return result


def continued(ctx: JobContext, upstream: str, max_epochs: int, window_size: int) -> dict[str, Any]:
    """The final checkpoint of the upstream job a promoted job continues (model, optimizer, RNG, counters).

    Time to target, images to target and the curves carry on from it, so they stay true for the
    configuration across rungs; the metric points logged from here on continue its step numbers.
    """
    checkpoint = ctx.restore_upstream(upstream)
    if checkpoint is None:
        raise JobFailed(
            f"job {ctx.job_id} continues job {upstream}, which has no valid checkpoint left to continue from; "
            f"retry {upstream} (sweeper retry {upstream}), then this job",
            retry=False,
        )
    state = TrainState.from_dict(checkpoint, window_size)
    if state.epoch > max_epochs or state.batch:
        raise JobFailed(
            f"job {upstream}'s last checkpoint is at epoch {state.epoch} batch {state.batch}: "
            f"not the end of an epoch at or below max_epochs {max_epochs}",
            retry=False,
        )
    # The upstream's curve, into this job's run: the run holds the configuration's whole history.
    for record in state.history.epochs:
        ctx.log_metrics(
            {f"epoch_{k}": v for k, v in record.items() if k not in ("epoch", "step", "train_s")}, record["epoch"]
        )
    for point in state.history.points:
        ctx.log_metrics({"loss": point["loss"], "train_acc": point["train_acc"]}, point["step"])
    if state.time_to_target_s is not None and state.target_step is not None:
        ctx.log_metrics({"time_to_target_s": state.time_to_target_s}, state.target_step)
    return checkpoint


def validation(model: Any, val: Any, batch_size: int) -> dict[str, float]:
    val_loss, val_acc = evaluate(model, val.x, val.y, batch_size)
    return {"val_accuracy": val_acc, "val_loss": val_loss}


def images_seen(steps: int, batches_per_epoch: int, n_train: int, batch_size: int) -> int:
    """Training images processed in the first `steps` batches (each epoch's last batch may be short)."""
    epochs, batches = divmod(steps, batches_per_epoch)
    return epochs * n_train + min(batches * batch_size, n_train)
