"""The generic report figures: a Pareto plot of two metrics and a scatter per hyperparameter.

matplotlib with the Agg backend (no display needed); imported only when a report is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.grid.ranking import Metric


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str = ""


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[Point], x: Metric, y: Metric) -> list[Point]:
    """The points no other point beats on both metrics, ordered along x from best to worst."""
    ordered = sorted(points, key=lambda p: (x.sort_key(p.x), y.sort_key(p.y)))
    front: list[Point] = []
    for p in ordered:
        if not front or y.sort_key(p.y) < y.sort_key(front[-1].y):
            front.append(p)
    return front


def axis_label(m: Metric) -> str:
    return f"{m.name} ({m.better} is better)"


def pareto_plot(
    path: Path,
    points: Sequence[Point],
    x: Metric,
    y: Metric,
    title: str,
    *,
    highlight: Point | None = None,
    highlight_label: str = "selected",
) -> list[Point]:
    """Scatter of all points with the Pareto front drawn and labelled; returns the front."""
    plt = pyplot()
    front = pareto_front(points, x, y)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter([p.x for p in points], [p.y for p in points], s=22, alpha=0.55, color="tab:blue", label="jobs")
    # A staircase: everything below and to the bad side of it is dominated.
    ax.plot(
        [p.x for p in front],
        [p.y for p in front],
        "o-",
        color="tab:red",
        ms=5,
        lw=1.2,
        drawstyle="steps-post",
        label="Pareto front",
    )
    for p in front[:12]:
        if p.label:
            ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=6.5)
    if highlight is not None:
        ax.scatter([highlight.x], [highlight.y], s=160, marker="*", color="gold", edgecolor="black", zorder=5)
        ax.annotate(highlight_label, (highlight.x, highlight.y), textcoords="offset points", xytext=(6, -12))
        ax.scatter([], [], s=80, marker="*", color="gold", edgecolor="black", label=highlight_label)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return front


def scatter_by(
    path: Path, points: Sequence[Point], values: Sequence[Any], param: str, x: Metric, y: Metric, title: str
) -> None:
    """One colour (and marker) per value of `param`: how that hyperparameter moves both metrics."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    distinct = sorted({str(v) for v in values}, key=_natural)
    markers = "osD^vP*Xh<>"
    for i, value in enumerate(distinct):
        pts = [p for p, v in zip(points, values, strict=True) if str(v) == value]
        ax.scatter(
            [p.x for p in pts], [p.y for p in pts], s=28, alpha=0.75, marker=markers[i % len(markers)], label=value
        )
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title=param, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def strip_by(path: Path, values: Sequence[Any], ys: Sequence[float], param: str, y: Metric, title: str) -> None:
    """With one metric only: the metric against the param's values."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    distinct = sorted({str(v) for v in values}, key=_natural)
    pos = {v: i for i, v in enumerate(distinct)}
    ax.scatter([pos[str(v)] for v in values], ys, s=28, alpha=0.75)
    ax.set_xticks(range(len(distinct)), distinct, fontsize=8)
    ax.set_xlabel(param)
    ax.set_ylabel(axis_label(y))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _natural(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)
