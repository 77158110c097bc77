"""Markdown and wording helpers of the assignment report: tables, percentages, plain names."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.report.stats import number

# Hyper-parameter names as a student would write them.
PLAIN = {
    "conv1.kernel": "conv1 filter size",
    "conv1.channels": "conv1 channels",
    "conv2.kernel": "conv2 filter size",
    "conv2.channels": "conv2 channels",
    "dense": "hidden dense size",
    "init": "initialisation",
    "batch_size": "batch size",
    "lr": "learning rate",
    "momentum": "momentum",
    "seed": "seed",
}
ARCH_KEYS = ("conv1.kernel", "conv1.channels", "conv2.kernel", "conv2.channels", "dense")


def plain(key: str) -> str:
    return PLAIN.get(key, key.replace("_", " "))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "x"


def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; `align` is one letter per column (l or r), numbers right by default."""
    rows = [list(r) for r in rows]
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(v: Any, digits: int = 2) -> str:
    n = number(v)
    return "-" if n is None else f"{100 * n:.{digits}f} %"


def pts(v: Any, signed: bool = True) -> str:
    """A difference of accuracies in percentage points."""
    n = number(v)
    if n is None:
        return "-"
    return f"{100 * n:+.2f} pt" if signed else f"{100 * n:.2f} pt"


def mean_sd(mean: float | None, sd: float | None, n: int) -> str:
    if mean is None:
        return "-"
    if sd is None or n < 2:
        return f"{100 * mean:.2f} %"
    return f"{100 * mean:.2f} ± {100 * sd:.2f} %"


def seconds(v: Any, digits: int = 1) -> str:
    n = number(v)
    return "-" if n is None else f"{n:.{digits}f} s"


def count(v: Any) -> str:
    n = number(v)
    return "-" if n is None else f"{round(n):,}"


def arch_text(flat: Mapping[str, Any]) -> str:
    """conv 5x5x16, conv 3x3x32, dense 100: the architecture of a job's flat params."""
    try:
        k1, c1 = flat["conv1.kernel"], flat["conv1.channels"]
        k2, c2 = flat["conv2.kernel"], flat["conv2.channels"]
        return f"conv {k1}x{k1}x{c1}, conv {k2}x{k2}x{c2}, dense {flat['dense']}"
    except KeyError:
        return "?"


def config_text(flat: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A configuration in a few words: the architecture when the keys are architecture keys."""
    if keys and all(k in ARCH_KEYS for k in keys):
        return arch_text(flat)
    return ", ".join(f"{plain(k)} {cell(flat.get(k))}" for k in keys) or "(all defaults)"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def section(title: str, body: str | Sequence[str], figures: Sequence[str] = (), level: int = 3) -> dict[str, Any]:
    text = body if isinstance(body, str) else "\n\n".join(b for b in body if b)
    return {"title": title, "body": text, "figures": list(figures), "level": level}
