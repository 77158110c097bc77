"""Helpers for the nested dicts that params and results are: flatten, copy, clean, summarize.

Imports nothing from sweeper, so any module may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any


def flatten(
    value: Mapping[str, Any], prefix: str = "", *, whole: Callable[[Any], bool] | None = None
) -> dict[str, Any]:
    """{"conv1": {"channels": 8}} -> {"conv1.channels": 8}: every nested mapping is walked into,
    except those that `whole` says are one value (a hand-off, say); those stay whole under their key.

    Only the walk: what a leaf becomes (text for MLflow, a job id for a table) is the caller's.
    """
    out: dict[str, Any] = {}
    for key, v in value.items():
        path = f"{prefix}{key}"
        if isinstance(v, Mapping) and not (whole is not None and whole(v)):
            out.update(flatten(v, path + ".", whole=whole))
        else:
            out[path] = v
    return out


def deep_copy(value: Any) -> Any:
    """A copy of nested mappings and lists (mappings become dicts) that shares only the leaves."""
    if isinstance(value, Mapping):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def finite(value: Any, *, key: Callable[[Any], Any] | None = None, leaf: Callable[[Any], Any] | None = None) -> Any:
    """`value` with every NaN and infinity made None (JSON has neither), through dicts, lists and
    tuples (tuples become lists). `key` maps each dict key and `leaf` every other non-float value;
    both default to leaving them as they are."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(key(k) if key else k): finite(v, key=key, leaf=leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, key=key, leaf=leaf) for v in value]
    return leaf(value) if leaf else value


def summary_line(result: Any, limit: int = 6) -> str:
    """A job's result in one line: `key=value` for the scalars among its first `limit` entries,
    floats to 4 significant digits (lists and tables are left out)."""
    if not isinstance(result, dict):
        return ""
    parts = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in list(result.items())[:limit]
        if isinstance(v, (int, float, str, bool))
    ]
    return " ".join(parts)
