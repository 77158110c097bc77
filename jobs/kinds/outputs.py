"""The files a training job leaves behind: history.json, predictions.csv, curve and confusion PNGs.

`sweeper report` reads history.json and predictions.csv from the artifact store, so their shape is
a contract (documented in docs/jobs.md "What a train job leaves"):

    history.json   {"version": 1, "points": [{step, epoch, loss, train_acc, train_s}, ...],   (null: NaN/inf)
                    "epochs": [{epoch, step, train_loss, train_acc, test_loss, test_acc, train_s}, ...],
                    "time": {...}, "final": {...}, "target": {...}, "arch": {...}, "dataset": {...}}
    predictions.csv  index,true,predicted,true_name,predicted_name (one row per test image)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from jobs.ml.classes import CLASSES
from sweeper.mappings import finite
from sweeper.plots import pyplot


def write_history(path: Path, history: Mapping[str, Any]) -> Path:
    """NaN and infinities (a loss that diverged) are written as null: JSON has neither, and the
    report draws a null as a gap in the curve."""
    plain = finite(dict(history), leaf=lambda v: finite(v.item()) if hasattr(v, "item") else v)
    path.write_text(json.dumps(plain, indent=1, allow_nan=False, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_predictions(path: Path, true: torch.Tensor, predicted: torch.Tensor) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "true", "predicted", "true_name", "predicted_name"])
        for i, (t, p) in enumerate(zip(true.tolist(), predicted.tolist(), strict=True)):
            w.writerow([i, t, p, CLASSES[t], CLASSES[p]])
    return path


def confusion(true: torch.Tensor, predicted: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """counts[t, p]: how many test images of class t were predicted as p."""
    return torch.bincount(true * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def plot_curves(
    path: Path, points: Sequence[Mapping[str, Any]], epochs: Sequence[Mapping[str, Any]], title: str
) -> Path:
    """Loss and accuracy against training progress (batches), with the per-epoch test figures."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [p["step"] for p in points]
    ax_loss.plot(steps, [p["loss"] for p in points], lw=0.8, label="train (running)")
    ax_acc.plot(steps, [p["train_acc"] for p in points], lw=0.8, label="train (running)")
    tested = [e for e in epochs if "test_loss" in e]
    if tested:
        ax_loss.plot([e["step"] for e in tested], [e["test_loss"] for e in tested], "o-", label="test (epoch end)")
        ax_acc.plot([e["step"] for e in tested], [e["test_acc"] for e in tested], "o-", label="test (epoch end)")
    for ax, name in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("batches")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
