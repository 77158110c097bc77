"""Loss and accuracy curves of train jobs, from the history.json each one records (see jobs/kinds/outputs.py).

x is training progress in epochs (a point's fractional epoch), so runs with different batch sizes
line up. Curves are the running training loss per logged batch, and the test loss measured at the
end of each epoch.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.report.stats import number
from sweeper.plots import pyplot


@dataclass
class Curve:
    label: str
    history: Mapping[str, Any]
    style: str = "-"
    color: str | None = None

    @property
    def points(self) -> list[Mapping[str, Any]]:
        return [p for p in self.history.get("points") or [] if "loss" in p]

    @property
    def epochs(self) -> list[Mapping[str, Any]]:
        return list(self.history.get("epochs") or [])

    def xs(self) -> list[float]:
        return [float(p.get("epoch", p.get("step", 0))) for p in self.points]

    def losses(self) -> list[float]:
        return [_loss(p.get("loss")) for p in self.points]

    def epoch_x(self) -> list[float]:
        return [float(e.get("epoch", i + 1)) for i, e in enumerate(self.epochs)]

    def target_epoch(self) -> float | None:
        """Where the running train accuracy first reached the target, in epochs (None: never)."""
        time = self.history.get("time") or {}
        step = time.get("target_step")
        if step is None:
            return None
        for p in self.points:
            if p.get("step", -1) >= step:
                return float(p.get("epoch", p["step"]))
        return None


def _loss(v: Any) -> float:
    n = number(v)
    return float("nan") if n is None else n  # a diverged loss (NaN/inf) leaves a gap, not a crash


class Histories:
    """history.json of train jobs, read once each; a missing or damaged file costs only its curve."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self._cache: dict[str, tuple[Mapping[str, Any] | None, str | None]] = {}

    def get(self, job: Any) -> tuple[Mapping[str, Any] | None, str | None]:
        """The job's history, or None and why not."""
        if job.id not in self._cache:
            self._cache[job.id] = self._read(job)
        return self._cache[job.id]

    def _read(self, job: Any) -> tuple[Mapping[str, Any] | None, str | None]:
        if "history.json" not in self.view.artifact_names(job.id):
            return None, f"job `{job.id}` recorded no history.json"
        try:
            history = self.view.read_json(job.id, "history.json")
        except Exception as exc:
            return None, f"job `{job.id}`'s history.json could not be read ({type(exc).__name__})"
        if not isinstance(history, Mapping):
            return None, f"job `{job.id}`'s history.json is not a JSON object"
        return history, None

    def test_images(self, job: Any) -> int | None:
        """How many test images the job's accuracy was measured on."""
        history, _ = self.get(job)
        dataset = (history or {}).get("dataset")
        n = dataset.get("test") if isinstance(dataset, Mapping) else None
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def plot_loss(
    path: Any, curves: Sequence[Curve], title: str, *, log_y: bool = False, target: str | None = None
) -> None:
    """Training loss (running, lines) and test loss (circles, per epoch) against epochs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, c in enumerate(curves):
        color = c.color or f"C{i}"
        ax.plot(c.xs(), c.losses(), c.style, lw=0.9, color=color, label=f"{c.label}: training loss")
        tested = [(x, _loss(e.get("test_loss"))) for x, e in zip(c.epoch_x(), c.epochs, strict=False)]
        tested = [(x, y) for x, y in tested if y == y]
        if tested:
            ax.plot(*zip(*tested, strict=True), "o", ms=4, color=color, mfc="white", label=f"{c.label}: test loss")
        at = c.target_epoch() if target else None
        if at is not None:
            ax.axvline(at, ls=":", lw=1, color=color)
            ax.annotate(f"{target} train acc.", (at, ax.get_ylim()[1]), fontsize=7, color=color, rotation=90, va="top")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("training progress (epochs)")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)


def plot_failure(path: Any, run: Curve, reference: Curve | None, title: str) -> None:
    """One failure mode: loss on the left, train and test accuracy per epoch on the right, the baseline in grey."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    pairs = [(run, "tab:red")] + ([(reference, "0.55")] if reference is not None else [])
    for c, color in pairs:
        ax_loss.plot(c.xs(), c.losses(), lw=0.8, color=color, label=f"{c.label}: training loss")
        ex = c.epoch_x()
        test_loss = [_loss(e.get("test_loss")) for e in c.epochs]
        if ex:
            ax_loss.plot(ex, test_loss, "o-", ms=3, lw=0.8, color=color, mfc="white", label=f"{c.label}: test loss")
            ax_acc.plot(ex, [_loss(e.get("train_acc")) for e in c.epochs], "-", color=color, label=f"{c.label}: train")
            ax_acc.plot(ex, [_loss(e.get("test_acc")) for e in c.epochs], "--", color=color, label=f"{c.label}: test")
    # a loss that overflowed (NaN/inf) has no height: mark those points along the top, or the run vanishes
    gone = [x for x, v in zip(run.xs(), run.losses(), strict=True) if not math.isfinite(v)]
    if gone:
        ax_loss.plot(gone, [1.0] * len(gone), "x", color="tab:red", transform=ax_loss.get_xaxis_transform(),
                     clip_on=False, label=f"{run.label}: loss NaN (diverged)")  # fmt: skip
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, 100)), fontsize=10)  # wrapped: a long title is not clipped
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)
