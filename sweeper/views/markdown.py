"""Markdown for reports: a report Section, and values from the queue written so they show literally.

Values in a report come from the queue (labels, errors, names a grid chose), so every one goes
through md_text/md_code/md_table: control characters are made visible and Markdown syntax in them
is escaped, so a label cannot become a link, an image or a heading.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from sweeper.grid.ranking import is_seconds
from sweeper.views.safe_text import visible


class Section(BaseModel):
    """One part of the report: a title, a markdown body and the figures (file names) it uses."""

    model_config = ConfigDict(extra="forbid")

    title: str
    body: str = ""
    figures: list[str] = []
    level: int = 2  # markdown heading level: 2 for a section, 3 inside one
    # A leading section opens the report, and the stage-by-stage part goes to its own file (stages.md,
    # linked from the appendix): for a plug-in whose sections are the report a reader came for.
    lead: bool = False


def fmt(name: str, value: Any) -> str:
    """A metric or param for a table: accuracies as %, seconds with a unit, others 4 significant digits."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        v = float(value)
        if v != v:
            return "nan"
        if "acc" in name.lower() and 0.0 <= v <= 1.0 and isinstance(value, float):
            return f"{100 * v:.2f} %"
        if is_seconds(name):
            return f"{v:.1f} s"
        if isinstance(value, int):
            return f"{value:,}" if abs(value) >= 10_000 else str(value)
        return f"{v:.4g}"
    return md_text(value)


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# Markdown that a value from the queue could use: emphasis, code, links and images ([..](..)),
# raw HTML (<..>), entities (&#x202e;) (a table cell's | is md_table's); and at a line's start a heading or list.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&!])")
_MD_LINE_START = re.compile(r"^([#>+-]|\d+[.)])")


def md_text(value: Any) -> str:
    """A value from the queue (a label, an error, a name) as Markdown that shows it literally, on one line."""
    text = visible(value)  # control characters visible, newlines too: one line
    return _MD_LINE_START.sub(r"\\\1", _MD_SPECIAL.sub(r"\\\1", text))


def md_code(value: Any) -> str:
    """A name shown as inline code: a backtick in it would end the span early, so it becomes a quote."""
    return "`" + visible(value).replace("`", "'") + "`"


def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"
