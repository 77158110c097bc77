"""`kind: prune`: prune a trained model step by step, fine-tuning after each step (assignment step 3).

    structured (default): each step removes the least important unit of `layer` (squared L2 norm
        of its weights plus its squared bias) by surgery (jobs/ml/surgery.py: a smaller network),
        measures test accuracy after the removal, fine-tunes `finetune_epochs` with a fresh SGD
        optimizer and measures again. The triplet (before, after pruning, after fine-tuning) is
        the step's record. fc2 is the output layer (its 10 units are the classes): not pruned.

        The rule is the assignment's (items 14-15): "The difference between the first and last
        number is called the pruning drop", and a layer is pruned "until the incremental pruning
        drop does not exceed 1% for a single step". 1% is read as 1 point of test accuracy
        (max_step_drop 0.01). A step is accepted while its drop <= max_step_drop; the first step
        over it is kept on file but rejected (its model is not the result), and pruning of the
        layer stops there. It also stops when one unit is left, and, when set, after max_steps or
        at a cumulative drop over max_total_drop (neither is the assignment's; both off by default).

        The raw drop mixes two things: an input stopped at a train-accuracy target still gains
        from 5 more epochs, so a step can cost accuracy and still show a small or negative drop.
        So beside every step an unpruned *control*, a copy of the input, is fine-tuned with the
        same epochs, seed and optimizer settings (`control: true`, the default), as information:

            raw_drop        = accuracy before the step − after its fine-tuning (the assignment's)
            control_gain    = the control's accuracy after this step's epochs − before them
            controlled_drop = raw_drop + control_gain   (what pruning cost in this step)
            pruning_drop    = the drop the rule judges: raw_drop (drop: raw, the default) or
                              controlled_drop (drop: controlled)
            total_drop      = upstream total_drop + control accuracy − accuracy after fine-tuning
                              (the cumulative drop from the unpruned model; prune jobs chained with
                              {result_of: ...} carry it on, so conv1 → conv2 → fc1 add up)

        Without a control (control: false, or finetune_epochs 0), controlled_drop = raw_drop.

        MLflow: every step is also a row of the job's run (a child run named "step k", with the
        triplet, the drops and the verdict as columns), so the runs table shows a layer's pruning
        as a table; the job's own run logs the step figures against the step index, and its
        `test_accuracy` once, at the end: the accepted model's, not the rejected last step's.

        The control only costs while it tells something: once one of its fine-tunes gains less
        than `control_stop_gain` (default 0.003, about one standard error of the test accuracy at
        10,000 images), more training no longer moves the unpruned model, so it has converged and
        later steps keep its last accuracy with a gain of 0 (`control_measured: false` in their
        record) instead of paying a second fine-tune. A chained job (conv2 after conv1) starts a
        new control from its own input, which usually converges at its first step.
    magnitude: for each of `amounts`, zero that fraction of the smallest weights of `layer` (or
        of every layer) of the *input* model (seed 004), optionally fine-tune with the zeros held
        at zero, and measure. Drop = input accuracy − accuracy after (fine-tuning). Every amount
        runs. Drop = raw_drop; total_drop adds the upstream's, and max_total_drop applies too.

The stage's result (`model.pt`) is the last accepted model: for structured, the model after the
last accepted step (the input when the first step is rejected); for magnitude, the largest amount
whose drop is within max_step_drop. Every model is kept as an artifact: `step-0.pt` is the input,
`step-<k>.pt` the model of step k (after its fine-tuning), plus `pruning.json` / `pruning.csv`.

State: a PruneState (jobs/kinds/prune_state.py), with named fields; a dict only in a checkpoint.
Checkpoints: after the input is evaluated, when a step's unit is removed, inside fine-tuning
(every checkpoint_every_s of compute and at each epoch end, by jobs/training.fit) and when a step
is recorded. A killed job resumes mid-fine-tuning at the exact batch and its triplets come out
identical to an uninterrupted run's.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.kinds import upstream
from jobs.kinds.params import PruneParams, parse
from jobs.kinds.prune_state import (
    AcceptedModel,
    Control,
    InputRecord,
    ModelState,
    PendingStep,
    PruneState,
    Resume,
    StepRecord,
)
from jobs.ml import magnitude, surgery
from jobs.ml.data import Dataset, load_dataset
from jobs.ml.device import cpu_state, job_numerics, numerics, on_device, pick_device
from jobs.ml.flops import model_cost
from jobs.ml.model import CNN, Arch, count_params, load_model, save_model
from jobs.ml.training import LoopConfig, evaluate, fit, make_optimizer
from sweeper.context import Interrupted, JobContext, JobFailed

EXAMPLE = "{best_of: train_search, metric: test_accuracy, mode: max}"
OUTPUT_LAYER = "fc2 is the output layer: its 10 units are the 10 classes, so it is not pruned"


@dataclass(frozen=True)
class Settings:
    """Data and fine-tuning settings (the result's `training`): as given, else as upstream trained."""

    dataset: str
    train_subset: int | None
    test_subset: int | None
    seed: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int  # of fine-tuning per step


def settings(p: PruneParams, ref: dict[str, Any]) -> Settings:
    up = upstream.training(ref)
    return Settings(
        dataset=upstream.pick(p.dataset, up["dataset"]),
        train_subset=upstream.pick(p.train_subset, up["train_subset"]),
        test_subset=upstream.pick(p.test_subset, up["test_subset"]),
        seed=upstream.pick(p.seed, up["seed"]),
        lr=upstream.pick(p.finetune_lr, up["lr"]),
        momentum=upstream.pick(p.finetune_momentum, up["momentum"]),
        weight_decay=upstream.pick(p.finetune_weight_decay, up["weight_decay"]),
        batch_size=upstream.pick(p.finetune_batch_size, up["batch_size"]),
        epochs=p.finetune_epochs if p.finetune_epochs is not None else (5 if p.method == "structured" else 0),
    )


def run(ctx: JobContext, params: dict[str, Any]) -> Any:
    p = parse(PruneParams, params, "prune")
    ref = upstream.single(p.model, "model", EXAMPLE)
    if "model.pt" not in (ref.get("artifacts") or {}):
        raise JobFailed(
            f"upstream job {ref['job']} (stage {ref['stage']}) recorded no model.pt; "
            "prune needs a train or prune stage upstream",
            retry=False,
        )
    # Models are built and cut on the CPU (cheap); they move to `device` to be measured and
    # fine-tuned, and their state dicts go into checkpoints as CPU tensors (jobs/ml/device.py).
    device = pick_device(p.device)
    with job_numerics(device):  # deterministic kernels on a GPU, for this job only
        ctx.add_provenance(numerics(device))  # device, tf32, deterministic: with the attempt (show, MLflow)
        return prune(ctx, p, ref, device)


def prune(ctx: JobContext, p: PruneParams, ref: dict[str, Any], device: torch.device) -> Any:
    s = settings(p, ref)
    data = load_dataset(
        s.dataset,
        data_dir=p.data_dir or ctx.options.get("data_dir"),
        state_dir=ctx.state_dir,
        train_subset=s.train_subset,
        test_subset=s.test_subset,
    )
    data = on_device(data, device)
    saved = ctx.restore()
    if saved is None:
        state = start(ctx, p, ref, data)
    else:
        state = PruneState.from_checkpoint(saved)
        note_resume(ctx, state)

    while not state.done:
        if state.pending is None:
            plan_next_step(ctx, p, state, data)
        else:
            for control in (False, True):
                interrupted = finetune(ctx, p, s, state, data, control)
                if interrupted is not None:
                    return interrupted
            record_step(ctx, p, state, data)
        if ctx.should_stop() and not state.done:
            return ctx.interrupted()  # the state was just checkpointed
    return finish(ctx, p, s, ref, state)


# -- the steps -----------------------------------------------------------------------------------


def start(ctx: JobContext, p: PruneParams, ref: dict[str, Any], data: Dataset) -> PruneState:
    """Fetch and evaluate the input model; it is step 0."""
    path = ctx.fetch_artifact(ref, "model.pt")
    model = load_model(path)
    info = ctx.log_artifact(path, "step-0.pt")
    loss, acc = evaluate(model.to(data.test.x.device), data.test.x, data.test.y, p.eval_batch_size)
    ctx.log(f"job {ctx.job_id}: input {ref['stage']}:{ref['job']} {model.arch.describe()}: test accuracy {acc:.4f}")
    cost = model_cost(model.arch)
    input_record = InputRecord(
        arch=model.arch.to_dict(),
        architecture=model.arch.describe(),
        units=unit_count(p, model.arch),
        test_accuracy=acc,
        test_loss=loss,
        flops=cost.flops,
        macs=cost.macs,
        params=count_params(model),
        model="step-0.pt",
        sha256=info["sha256"],
    )
    ctx.log_metrics(step_metrics(input_record.to_dict(), acc), step=0)
    state = PruneState(
        method=p.method,
        layer=p.layer_name,
        input=input_record,
        # magnitude prunes the input at every amount; structured only needs the current model
        input_model=ModelState(model.arch.to_dict(), cpu_state(model)) if p.method == "magnitude" else None,
        current=AcceptedModel(step=0, arch=model.arch.to_dict(), state_dict=cpu_state(model), accuracy=acc),
        # the unpruned control: the input, fine-tuned beside every step with the same epochs and seed
        control=Control(cpu_state(model), acc) if uses_control(p) else None,
        # the cumulative drop the input already carries from upstream prune jobs (0 for a trained model)
        upstream_total_drop=float((ref.get("metrics") or {}).get("total_drop") or 0.0),
    )
    ctx.checkpoint(state.to_checkpoint())
    return state


def note_resume(ctx: JobContext, state: PruneState) -> None:
    """Say (in the log, and in the result's `resumes`) where this attempt picks the work up."""
    pending, ft, control = state.pending, state.finetune, state.control_finetune
    where = Resume(attempt=ctx.attempt, steps_done=len(state.steps), phase="between steps")
    if pending is None:
        pass
    elif ft is None:
        where.phase, where.step = "before fine-tuning", pending.step
    else:
        at = control if control is not None else ft
        where.phase = "control fine-tuning" if control is not None else "fine-tuning"
        where.step, where.epoch, where.batch = pending.step, at.epoch, at.batch
    state.resumes.append(where)
    detail = f" epoch {where.epoch + 1} batch {where.batch}" if where.epoch is not None else ""
    step = where.step if where.step is not None else len(state.steps) + 1
    ctx.log(f"job {ctx.job_id}: resuming {where.phase} of step {step}{detail}")


def uses_control(p: PruneParams) -> bool:
    return p.method == "structured" and p.control and p.finetune_epochs != 0


def unit_count(p: PruneParams, arch: Arch) -> int | None:
    return surgery.unit_count(arch, p.layer_name) if p.method == "structured" else None


def model_of(arch: dict[str, Any], state_dict: dict[str, Any]) -> CNN:
    model = CNN(Arch.from_dict(arch))
    model.load_state_dict(state_dict)
    return model


def plan_next_step(ctx: JobContext, p: PruneParams, state: PruneState, data: Dataset) -> None:
    """Prune the next unit (or amount), measure, and checkpoint; or mark the job done."""
    k = len(state.steps) + 1
    if p.method == "structured":
        current = model_of(state.current.arch, state.current.state_dict)
        units = surgery.unit_count(current.arch, p.layer_name)
        stop = None
        if units <= 1:
            stop = f"one unit left in {p.layer}"
        elif p.max_steps is not None and k > p.max_steps:
            stop = f"max_steps {p.max_steps} reached"
        if stop:
            state.stop(stop)
            ctx.checkpoint(state.to_checkpoint())
            return
        scores = surgery.importance(current, p.layer_name)
        unit = int(scores.argmin())
        pruned = surgery.remove_units(current, p.layer_name, [unit])
        before = state.current.accuracy
        masks = None
    else:
        if k > len(p.amounts):
            state.stop("every amount done")
            ctx.checkpoint(state.to_checkpoint())
            return
        original = load_input(state)
        amount = p.amounts[k - 1]
        pruned, masks = magnitude.prune(original, magnitude.layers_of(p.layer_name), amount)
        before = state.input.test_accuracy
    _, after = evaluate(pruned.to(data.test.x.device), data.test.x, data.test.y, p.eval_batch_size)
    pending = PendingStep(
        step=k,
        arch=pruned.arch.to_dict(),
        state_dict=cpu_state(pruned),
        accuracy_before=before,
        accuracy_after_prune=after,
        masks=masks,
    )
    if p.method == "structured":
        pending.unit, pending.importance, pending.units = unit, float(scores[unit]), units - 1
    else:
        pending.amount = amount
    state.pending, state.finetune, state.control_finetune = pending, None, None
    ctx.log(
        f"job {ctx.job_id}: step {k}: {describe(p, pending)}: accuracy {before:.4f} -> {after:.4f} (before fine-tuning)"
    )
    ctx.checkpoint(state.to_checkpoint())


def load_input(state: PruneState) -> CNN:
    """The input model, for magnitude pruning (which prunes the input at every amount)."""
    assert state.input_model is not None, "magnitude pruning keeps the input model"
    return model_of(state.input_model.arch, state.input_model.state_dict)


def describe(p: PruneParams, pending: PendingStep) -> str:
    if p.method == "structured":
        return f"{p.layer} unit {pending.unit} removed, {pending.units} left"
    return f"{p.layer} weights {pending.amount:.0%} zeroed"


def finetune(
    ctx: JobContext, p: PruneParams, s: Settings, state: PruneState, data: Dataset, control: bool = False
) -> Any:
    """Fine-tune the pending step's model, or (control=True) the unpruned control, with the same
    epochs, seed and settings, resuming mid-way from the checkpoint. None when finished."""
    pending = state.pending
    assert pending is not None
    if s.epochs == 0:
        return None
    if control:
        if state.control is None or state.control_converged:
            return None
        model = model_of(state.input.arch, state.control.state_dict)
    else:
        model = model_of(pending.arch, pending.state_dict)
    model = model.to(data.train.x.device)
    optimizer = make_optimizer(model, s.lr, s.momentum, s.weight_decay)  # fresh, every step
    k = pending.step
    cfg = LoopConfig(
        epochs=s.epochs,
        batch_size=s.batch_size,
        seed=s.seed + k,
        checkpoint_every_s=p.checkpoint_every_s,
        log_every=p.log_every,
        eval_batch_size=p.eval_batch_size,
        target_train_acc=None,
        # fit() counts its steps from 1 again on every call
        metric_prefix=f"control/step{k}/" if control else f"finetune/step{k}/",
    )
    masks = (None if control else pending.masks) or {}  # none: structured steps and the control
    if masks:
        masks = {name: m.to(data.train.x.device) for name, m in masks.items()}

    def keep_zeros(m: Any) -> None:
        magnitude.apply_masks(m, masks)

    def save(train_checkpoint: dict[str, Any]) -> None:
        state.set_fine_tuning(control, train_checkpoint)
        ctx.checkpoint(state.to_checkpoint())

    what = "the unpruned control" if control else describe(p, pending)

    def progress(fraction: float, message: str) -> None:
        ctx.progress(fraction, f"step {k} ({what}): {message}")

    so_far = state.fine_tuning(control)
    result = fit(
        ctx,
        model,
        optimizer,
        data.train,
        data.test,
        cfg,
        checkpoint=None if so_far is None else so_far.checkpoint,
        save=save,
        after_step=keep_zeros if masks else None,
        progress=progress,
    )
    if isinstance(result, Interrupted):
        return result
    # the state holds fit's last checkpoint, which it writes as it finishes (its weights are the model's)
    return None


def record_step(ctx: JobContext, p: PruneParams, state: PruneState, data: Dataset) -> None:
    """Measure the fine-tuned model, keep it as step-<k>.pt, accept or reject the step, checkpoint."""
    pending = state.pending
    assert pending is not None
    k = pending.step
    model = model_of(pending.arch, pending.state_dict)
    ft, control_ft = state.finetune, state.control_finetune
    if ft is not None:
        model.load_state_dict(ft.weights)
    loss, acc = evaluate(model.to(data.test.x.device), data.test.x, data.test.y, p.eval_batch_size)
    control_before, control_after = control_accuracies(p, state, data)
    control_measured = state.control is not None and control_ft is not None
    raw_drop = pending.accuracy_before - acc
    control_gain = control_after - control_before
    controlled_drop = raw_drop + control_gain
    drop = raw_drop if p.drop == "raw" else controlled_drop
    total_drop = state.upstream_total_drop + control_after - acc
    eps = 1e-9  # accuracies are counts / n: 0.8575 - 0.8475 is not exactly 0.01
    over_step = drop > p.max_step_drop + eps
    over_total = p.max_total_drop is not None and total_drop > p.max_total_drop + eps
    accepted = not over_step and not over_total
    path = save_model(step_dir(ctx, k) / "model.pt", model)
    info = ctx.log_artifact(path, f"step-{k}.pt")
    cost = model_cost(model.arch)
    record = StepRecord(
        step=k,
        layer=p.layer_name,
        arch=model.arch.to_dict(),
        architecture=model.arch.describe(),
        accuracy_before=pending.accuracy_before,
        accuracy_after_prune=pending.accuracy_after_prune,
        accuracy_after_finetune=acc,
        test_loss=loss,
        raw_drop=raw_drop,
        control_accuracy=control_after,
        control_gain=control_gain,
        control_measured=control_measured,
        pruning_drop=drop,
        controlled_drop=controlled_drop,
        total_drop=total_drop,
        accepted=accepted,
        flops=cost.flops,
        macs=cost.macs,
        params=count_params(model),
        finetune_s=ft.train_s if ft is not None else 0.0,
        control_finetune_s=control_ft.train_s if control_ft is not None else 0.0,
        model=f"step-{k}.pt",
        sha256=info["sha256"],
    )
    if p.method == "structured":
        record.unit, record.importance, record.units = pending.unit, pending.importance, pending.units
    else:
        record.amount = pending.amount
        record.density = magnitude.density(model)
        record.nonzero_params = magnitude.nonzero_params(model)
        record.effective_macs = magnitude.effective_macs(model)
    ctx.log_metrics(step_metrics(record.to_dict(), acc), step=k)
    ctx.log_row(f"step {k}", *step_row(record))
    state.steps.append(record)
    reasons = []
    if over_step:
        reasons.append(f"step {k}'s {p.drop} pruning drop {drop:.4f} > max_step_drop {p.max_step_drop:g}")
    if over_total:
        reasons.append(f"step {k}'s cumulative drop {total_drop:.4f} > max_total_drop {p.max_total_drop:g}")
    verdict = "accepted" if accepted else "rejected: " + "; ".join(reasons)
    ctx.log(
        f"job {ctx.job_id}: step {k}: {record.architecture}: "
        f"{record.accuracy_before:.4f} / {record.accuracy_after_prune:.4f} / {acc:.4f}, "
        f"control {control_after:.4f}, drop {raw_drop:+.4f} (controlled {controlled_drop:+.4f}), "
        f"total {total_drop:+.4f}: {verdict}"
    )
    if accepted:
        state.current = AcceptedModel(
            step=k, arch=record.arch, state_dict=cpu_state(model), accuracy=acc, total_drop=total_drop
        )
    if control_measured:
        assert control_ft is not None
        # the control moves on whatever the verdict: it stays as trained as the pruned chain
        state.control = Control(control_ft.weights, control_after)
        if p.control_stop_gain is not None and control_gain < p.control_stop_gain:
            state.control_converged = k
            ctx.log(
                f"job {ctx.job_id}: step {k}: the control gained {control_gain:+.4f} "
                f"(< control_stop_gain {p.control_stop_gain:g}): converged, later steps keep its accuracy"
            )
    if p.method == "structured" and not accepted:
        state.stop("; ".join(reasons))
    state.pending, state.finetune, state.control_finetune = None, None, None
    ctx.checkpoint(state.to_checkpoint())


def control_accuracies(p: PruneParams, state: PruneState, data: Dataset) -> tuple[float, float]:
    """The control's test accuracy before and after this step's epochs (both the input's without a
    control; both its last accuracy once it has converged)."""
    control = state.control
    if control is None:
        base = state.input.test_accuracy  # no control: drops are against the unpruned input as it is
        return base, base
    if state.control_finetune is None:
        return control.accuracy, control.accuracy
    model = model_of(state.input.arch, state.control_finetune.weights).to(data.test.x.device)
    _, after = evaluate(model, data.test.x, data.test.y, p.eval_batch_size)
    return control.accuracy, after


def step_metrics(record: dict[str, Any], accuracy: float) -> dict[str, float]:
    """The figures of a step (or of the input, step 0) as MLflow metrics of the job's run, against
    the step index. `step_accuracy`, not `test_accuracy`: the run's test_accuracy is its result's."""
    arch = Arch.from_dict(record["arch"])
    metrics = {
        "step_accuracy": accuracy,
        "flops": record["flops"],
        "params": record["params"],
        "conv1_channels": arch.conv1.channels,
        "conv2_channels": arch.conv2.channels,
        "dense": arch.dense,
    }
    keys = ("accuracy_before", "accuracy_after_prune", "accuracy_after_finetune", "pruning_drop", "amount")
    for key in (*keys, "raw_drop", "controlled_drop", "total_drop", "control_accuracy"):
        if key in record:
            metrics[key] = record[key]
    if "accepted" in record:
        metrics["accepted"] = 1.0 if record["accepted"] else 0.0
    if "nonzero_params" in record:
        metrics["nonzero_params"] = record["nonzero_params"]
        metrics["effective_macs"] = record["effective_macs"]
    return {k: float(v) for k, v in metrics.items()}


def step_row(record: StepRecord) -> tuple[dict[str, Any], dict[str, float]]:
    """A step as a row of the MLflow runs table: (params, metrics). Params are the columns that
    say what was done (layer, units left, the verdict); metrics the triplet and the drops."""
    params: dict[str, Any] = {
        "layer": record.layer,
        "step": record.step,
        "architecture": record.architecture,
        "verdict": "accepted" if record.accepted else "rejected",
    }
    if record.units is not None:
        params["units_left"] = record.units
        params["unit_removed"] = record.unit
    if record.amount is not None:
        params["amount"] = record.amount
    metrics = {
        "step": record.step,
        "accuracy_before": record.accuracy_before,
        "accuracy_after_prune": record.accuracy_after_prune,
        "accuracy_after_finetune": record.accuracy_after_finetune,
        "test_accuracy": record.accuracy_after_finetune,
        "pruning_drop": record.pruning_drop,
        "raw_drop": record.raw_drop,
        "control_accuracy": record.control_accuracy,
        "accepted": 1.0 if record.accepted else 0.0,
        "flops": record.flops,
        "params": record.params,
    }
    if record.controlled_drop is not None:
        metrics["controlled_drop"] = record.controlled_drop
    if record.units is not None:
        metrics["units"] = record.units
    return params, {k: float(v) for k, v in metrics.items()}


def step_dir(ctx: JobContext, k: int | str) -> Path:
    # Always `.../model.pt`: torch.save names its archive after the file, so equal weights give
    # equal bytes (and equal sha256) whatever the step, and the benchmark can tell duplicates apart.
    path = ctx.work_dir() / "out" / f"step-{k}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the result ----------------------------------------------------------------------------------


def finish(ctx: JobContext, p: PruneParams, s: Settings, ref: dict[str, Any], state: PruneState) -> dict:
    current = state.current
    model = model_of(current.arch, current.state_dict)
    info = ctx.log_artifact(save_model(step_dir(ctx, "result") / "model.pt", model), "model.pt")
    steps = state.steps
    records = [r.to_dict() for r in steps]
    training = asdict(s)
    table = {
        "version": 1,
        "job": ctx.job_id,
        "method": p.method,
        "layer": p.layer,
        "input": {"job": ref["job"], "stage": ref["stage"], **state.input.to_dict()},
        "steps": records,
        "result_step": current.step,
        "stop_reason": state.stop_reason,
        "training": training,
    }
    out = step_dir(ctx, "tables")
    (out / "pruning.json").write_text(json.dumps(table, indent=1) + "\n")
    ctx.log_artifact(out / "pruning.json", "pruning.json")
    write_csv(out / "pruning.csv", records)
    ctx.log_artifact(out / "pruning.csv", "pruning.csv")
    cost = model_cost(model.arch)
    models = [{"name": "step-0.pt", "step": 0, "test_accuracy": state.input.test_accuracy, "accepted": True}]
    models += [
        {"name": r.model, "step": r.step, "test_accuracy": r.accuracy_after_finetune, "accepted": r.accepted}
        for r in steps
    ]
    accepted = [r for r in steps if r.accepted]
    # the run's headline figures, the accepted model's, once, one index past the last step, so that
    # they are the latest points of flops and params too (the rejected last step's accuracy is its
    # row's and its step_accuracy, never the run's test_accuracy)
    final = {"test_accuracy": current.accuracy, "flops": cost.flops, "params": count_params(model)}
    ctx.log_metrics({**final, "result_step": current.step, "steps_accepted": len(accepted)}, step=len(steps) + 1)
    result: dict[str, Any] = {
        "test_accuracy": current.accuracy,
        "flops": cost.flops,
        "macs": cost.macs,
        "params": count_params(model),
        "arch": model.arch.to_dict(),
        "architecture": model.arch.describe(),
        "method": p.method,
        "layer": p.layer,
        "result_step": current.step,
        "steps_tried": len(steps),
        "steps_accepted": len(accepted),
        "stop_reason": state.stop_reason,
        "max_step_drop": p.max_step_drop,
        "drop_rule": p.drop,
        "max_steps": p.max_steps,
        "max_total_drop": p.max_total_drop,
        "control": state.control is not None,  # drops measured against an unpruned, equally fine-tuned control
        # the step after which the control stopped (its gain fell under control_stop_gain); None: every step
        "control_converged_at_step": state.control_converged,
        "control_stop_gain": p.control_stop_gain,
        # the cumulative drop from the unpruned model of the result, through upstream prune jobs
        "total_drop": current.total_drop if current.total_drop is not None else state.upstream_total_drop,
        "upstream_total_drop": state.upstream_total_drop,
        "output_layer": OUTPUT_LAYER,
        "input_test_accuracy": state.input.test_accuracy,
        "input_job": ref["job"],
        "input_stage": ref["stage"],
        "triplets": [
            {
                "step": r.step,
                "architecture": r.architecture,
                "before": r.accuracy_before,
                "after_prune": r.accuracy_after_prune,
                "after_finetune": r.accuracy_after_finetune,
                "control": r.control_accuracy,
                "control_measured": r.control_measured,
                "raw_drop": r.raw_drop,
                "controlled_drop": r.controlled_drop,
                "drop": r.pruning_drop,
                "total_drop": r.total_drop,
                "accepted": r.accepted,
            }
            for r in steps
        ],
        "models": models,
        "model_sha256": info["sha256"],
        "training": training,
        "finetune_s": sum(r.finetune_s for r in steps),
        "control_finetune_s": sum(r.control_finetune_s for r in steps),
        "resumes": [r.to_dict() for r in state.resumes],
    }
    ctx.log(
        f"job {ctx.job_id}: {len(accepted)}/{len(steps)} step(s) accepted ({state.stop_reason}); "
        f"result {model.arch.describe()} at test accuracy {current.accuracy:.4f}"
    )
    return result


CSV_COLUMNS = (
    "step",
    "architecture",
    "unit",
    "amount",
    "accuracy_before",
    "accuracy_after_prune",
    "accuracy_after_finetune",
    "control_accuracy",
    "control_measured",
    "raw_drop",
    "controlled_drop",
    "pruning_drop",
    "total_drop",
    "accepted",
    "flops",
    "params",
    "nonzero_params",
    "finetune_s",
)


def write_csv(path: Path, steps: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in steps:
            w.writerow(r)
    return path
