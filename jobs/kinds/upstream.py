"""Reading resolved hand-offs: which upstream jobs a prune or benchmark job works on, and how they trained.

A resolved reference (sweeper/grid/handoff.py) is a dict
`{"job", "stage", "params", "metrics", "artifacts"}`; `all_of` gives a list of them. The
training settings a prune job fine-tunes with (and the data a benchmark evaluates on) default
to those of the upstream model: a train job has them in its params; a prune job reports the
ones it used under `training` in its result, so a chain of prune stages passes them along.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeper.outcome import JobFailed

TRAINING_KEYS = ("dataset", "train_subset", "test_subset", "seed", "lr", "momentum", "weight_decay", "batch_size")
FALLBACK = {"dataset": "fashion-mnist", "seed": 0, "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 32}


def is_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and "job" in value and "stage" in value and "artifacts" in value


def single(value: Any, param: str, example: str) -> dict[str, Any]:
    """The one upstream outcome a param refers to, or JobFailed saying how to write it."""
    if isinstance(value, list) and len(value) == 1 and is_ref(value[0]):
        value = value[0]
    if not is_ref(value):
        got = "nothing" if value is None else f"{type(value).__name__} {value!r}"[:200]
        raise JobFailed(
            f"param '{param}' must refer to one upstream job's output, like {param}: {example} (got {got}); "
            "the stage also needs that stage in 'needs'",
            retry=False,
        )
    return dict(value)


def many(value: Any, param: str, example: str) -> list[dict[str, Any]]:
    """The upstream outcomes a param refers to (all_of gives several, best_of/result_of one)."""
    if isinstance(value, list) and value and all(is_ref(v) for v in value):
        return [dict(v) for v in value]
    return [single(value, param, example)]


def training(ref: Mapping[str, Any]) -> dict[str, Any]:
    """The data and optimizer settings the upstream model was trained with (fallbacks for the rest)."""
    params = ref.get("params") or {}
    reported = (ref.get("metrics") or {}).get("training") or {}
    out: dict[str, Any] = {}
    for key in TRAINING_KEYS:
        if params.get(key) is not None:
            out[key] = params[key]
        elif reported.get(key) is not None:
            out[key] = reported[key]
        else:
            out[key] = FALLBACK.get(key)
    return out


def pick(explicit: Any, inherited: Any) -> Any:
    return inherited if explicit is None else explicit
