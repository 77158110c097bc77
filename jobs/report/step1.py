"""Step 1 of the assignment: the given network's loss curve, its accuracies and the saved model."""

from __future__ import annotations

import shutil
from typing import Any

from jobs.report.curves import Curve, Histories, plot_loss
from jobs.report.md import arch_text, cell, count, pct, seconds, section, table
from jobs.report.roles import Roles
from jobs.report.stats import number, wilson

MODEL_FILE = "step1_model.pt"


def run_label(job: Any) -> str:
    """How a baseline was trained, in words: to the target, or a fixed number of epochs."""
    p = job.params
    if p.get("stop_at_target", True):
        return f"trained to {100 * float(p.get('target_train_acc', 0.9)):.0f}% train accuracy"
    return f"trained a fixed {p.get('max_epochs')} epochs"


def step1(view: Any, roles: Roles, hist: Histories) -> tuple[list[dict[str, Any]], list[str]]:
    T = roles.target_text
    base = roles.baseline
    if base is None:
        return [], ["Step 1: the sweep has no finished `baseline` train stage."]
    notes: list[str] = []
    runs = [base, *(j for j in roles.baselines if j is not base)]
    p = base.params
    flat = base.flat_params()
    intro = (
        f"The network of item 6: {arch_text(flat)} (two 2-D convolutions with ReLU, a hidden fully connected "
        f"layer with ReLU and a 10-way output), Xavier-uniform initialisation"
        f"{'' if p.get('init', 'xavier_uniform') == 'xavier_uniform' else ' (here: ' + str(p.get('init')) + ')'}, "
        f"cross-entropy loss and SGD with learning rate {cell(p.get('lr'))} and momentum {cell(p.get('momentum'))}, "
        f"batch size {cell(p.get('batch_size'))}, trained on the CPU."
    )
    out = [section("Step 1: the given network", intro, level=2)]

    curves, figures = [], []
    for i, job in enumerate(runs):
        history, why = hist.get(job)
        if history is None:
            notes.append(f"Step 1 loss curve: {why}.")
            continue
        curves.append(Curve(run_label(job), history, "-" if i == 0 else "--"))
    if curves:
        name = "step1_loss.png"
        plot_loss(view.figure_path(name), curves, "Step 1: loss against training progress", log_y=True, target=T)
        figures.append(name)
        body = [
            "Training loss (running mean over the logged batches) and test loss (circles, at the end of each "
            "epoch) against training progress in epochs. The dotted line marks where the running train "
            f"accuracy first reached {T}.",
            f"![Step 1 loss curve]({name})",
        ]
        out.append(section("8. Loss during training", body, figures))

    rows = []
    for job in runs:
        r = job.result
        test = number(r.get("test_accuracy"))
        n_test = hist.test_images(job)
        ci = "-"
        if test is not None and n_test:
            lo, hi = wilson(test, n_test)
            ci = f"{100 * lo:.2f} to {100 * hi:.2f} %"
        rows.append(
            [
                run_label(job),
                cell(round(number(r.get("epochs")) or 0.0, 2)),
                pct(r.get("train_accuracy")),
                pct(r.get("test_accuracy")),
                ci,
                count(r.get("images_to_target")) if r.get("reached", True) else "never",
                seconds(r.get("time_to_target_s")),
                seconds(r.get("total_train_s")),
            ]
        )
    acc = [
        table(
            [
                "run",
                "epochs",
                "train accuracy",
                "test accuracy",
                "95% interval (Wilson)",
                f"images to {T}",
                f"time to {T}",
                "training time",
            ],
            rows,
            "lrrrrrrr",
        ),
        "Train accuracy is measured on the whole training set after training, test accuracy on the test set "
        f"({hist.test_images(base) or '?'} images); the interval is the Wilson score interval over the test images. "
        f"The {T} that stops training is the running train accuracy, over a sliding window of the most recent "
        "training images, seen while the weights were still changing (defined under “How this was run”); "
        "measured afterwards over all training images, the train accuracy can read a little below it.",
    ]
    if len(runs) > 1:
        acc.append(
            f"The first run is the Step 1 model, trained until the running train accuracy first reached {T} (the "
            "same rule as every Step 2 run, so the two are comparable); the second is the same network trained "
            "a fixed number of epochs, for comparison."
        )
    out.append(section("8. Final train and test accuracy", acc))

    if "model.pt" in view.artifact_names(base.id):
        try:
            shutil.copyfile(view.artifact(base.id, "model.pt"), view.figure_path(MODEL_FILE))
            saved = (
                f"The trained model is saved next to this report as [{MODEL_FILE}]({MODEL_FILE}), written with "
                "`torch.save` (a dict with `arch` and `state_dict`); load it with "
                f"`torch.load('{MODEL_FILE}', weights_only=True)`."
            )
            out.append(section("8. The saved model", saved, [MODEL_FILE]))
        except Exception as exc:
            notes.append(f"Step 1 model file: job `{base.id}`'s model.pt could not be read ({type(exc).__name__}).")
    else:
        notes.append(f"Step 1 model file: job `{base.id}` recorded no model.pt.")
    return out, notes
