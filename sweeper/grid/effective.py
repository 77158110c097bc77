"""Effective params: every param a job runs with, the kind's defaults filled in.

A grid that writes only `lr` runs a `train` job with `batch_size: 32`, `conv2: {channels: 16,
kernel: 3}` and the rest of TrainParams' defaults. The worker records these with the job when an
attempt starts (jobs.params_effective), so that `show`, the CSV, MLflow and hand-offs see the
params that ran, not only those written. A kind without a param model (`sweeper.params` entry
point, see registry.py) records what it was given.
"""

from __future__ import annotations

from typing import Any

from sweeper.grid import registry
from sweeper.mappings import deep_copy


def effective_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` validated by the kind's param model with its defaults filled in (JSON values).

    Params the model refuses are returned as given: the job fails on them with its own message,
    and what it was given is still the truest record.
    """
    try:
        model = registry.load_params_model(kind)
    except registry.KindError:
        model = None
    if model is None:
        return deep_copy(params)
    try:
        return model.model_validate(params).model_dump(mode="json")
    except Exception:  # a ValidationError, or a model that cannot serialise a value
        return deep_copy(params)
