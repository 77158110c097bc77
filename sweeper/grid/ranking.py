"""Ranking jobs by a metric of their result: which way is better, and how to read it in SQL.

A metric is named as `NAME` or `NAME:max` / `NAME:min`. Without a direction, names that look like
costs (times, losses, errors, sizes, FLOPs) are minimised and everything else is maximised, so
`--by test_accuracy` and `--by time_to_target_s` both do what a user means.

`metric_value()` reads a numeric metric out of `jobs.result` with SQLAlchemy's JSON element
access, so the leaderboard is sorted by the database (SQLite and PostgreSQL alike) and only the
top rows travel. It returns NULL, never an error, for a result that lacks the metric, holds a
non-number there, or (on SQLite) is not valid JSON at all: one odd job must not take the
dashboard down.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from sweeper.errors import UsageError

MODES = ("max", "min")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# Substrings of metric names where smaller is better.
_COST_WORDS = ("time", "loss", "error", "latency", "flops", "macs", "params", "size", "bytes", "duration", "to_target")


@dataclass(frozen=True)
class Metric:
    name: str
    mode: str = "max"  # max: larger is better

    @property
    def better(self) -> str:
        return "higher" if self.mode == "max" else "lower"

    def __str__(self) -> str:
        return f"{self.name}:{self.mode}"

    def sort_key(self, value: float) -> float:
        """A key for sorted() that puts the best value first."""
        return -value if self.mode == "max" else value


def is_seconds(name: str) -> bool:
    """`total_train_s` is a duration; `images_per_s` is a rate, not seconds."""
    lowered = name.lower()
    return lowered.endswith("_s") and not lowered.endswith("_per_s")


def default_mode(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith("_per_s"):
        return "max"  # a rate: more per second is better
    if is_seconds(lowered) or any(w in lowered for w in _COST_WORDS):
        return "min"
    return "max"


def parse_metric(text: str, *, option: str = "--by") -> Metric:
    """`test_accuracy`, `test_accuracy:max` or `time_to_target_s:min` -> Metric."""
    name, _, mode = text.strip().partition(":")
    if not _NAME.match(name):
        raise UsageError(
            f"{option} {text!r}: a metric is the name of a key in the jobs' results",
            hint=f"for example {option} test_accuracy or {option} time_to_target_s:min",
        )
    if mode and mode not in MODES:
        raise UsageError(f"{option} {text!r}: the direction after ':' is max or min, not {mode!r}")
    return Metric(name, mode or default_mode(name))


def rank_metrics(name: str, counts: Mapping[str, int]) -> list[str]:
    """The metrics that exist, the likeliest meant first: most similar to `name`, then most common.

    Similarity is rounded to one decimal so that near ties go to the metric more jobs report:
    `accuracy` ranks test_accuracy (every training job) above min_test_accuracy (a benchmark's
    threshold), and a name like nothing at all lists the most common metrics first.
    """

    def similarity(metric: str) -> float:
        return round(difflib.SequenceMatcher(None, name.lower(), metric.lower()).ratio(), 1)

    return sorted(counts, key=lambda m: (-similarity(m), -counts[m], m))


def unknown_metric(metric: Metric, counts: Mapping[str, int], *, option: str, scope: str) -> UsageError:
    """The error for a metric that no finished job reports, listing those that exist."""
    ranked = rank_metrics(metric.name, counts)
    shown = ", ".join(f"{m} ({counts[m]})" for m in ranked[:10]) + (", ..." if len(ranked) > 10 else "")
    close = difflib.get_close_matches(metric.name, ranked, n=1, cutoff=0.6)
    guess = f"did you mean {option} {ranked[0]}? " if close else ""
    return UsageError(
        f"{option} {metric.name}: no finished job{scope} reports a metric '{metric.name}'",
        hint=f"{guess}metrics that finished jobs report (how many): {shown}",
    )


def metric_value(column: sa.Column, name: str, dialect: str) -> ColumnElement:
    """SQL for the float value of `column[name]`, NULL where it is missing or not a number."""
    element = column[name]
    value = element.as_float()
    if dialect == "postgresql":
        # ->> then a cast would raise on a string; json_typeof tells numbers apart first.
        return sa.case((sa.func.json_typeof(element) == "number", value), else_=None)
    if dialect == "sqlite":
        # json_extract raises "malformed JSON" on a row that is not JSON (Python's json writes NaN),
        # so check the document first; CASE evaluates lazily.
        path = '$."' + name.replace('"', '""') + '"'
        return sa.case(
            (
                sa.func.json_valid(column) == 1,
                sa.case((sa.func.json_type(column, path).in_(["integer", "real"]), value), else_=None),
            ),
            else_=None,
        )
    return value
