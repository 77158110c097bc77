"""Figures shared by the train job and the report: torch-free, so `sweeper report` stays light."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jobs.ml.classes import CLASSES
from sweeper.plots import pyplot


def plot_confusion(path: Path, counts: Sequence[Sequence[int]], title: str, dpi: int = 90) -> Path:
    """A 10x10 confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(counts, cmap="Blues")
    top = max(max(row) for row in counts) or 1
    for t, row in enumerate(counts):
        for p, value in enumerate(row):
            if value:
                color = "white" if value > top / 2 else "black"
                ax.text(p, t, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
