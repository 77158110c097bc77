"""Hand-offs: how a dependent stage takes values and files from the stages it needs.

Two forms, both resolved once, when every upstream job has finished:

* `inherit:` on a stage copies named params from the best upstream job::

      inherit: {from: model_search, metric: time_to_target_s, mode: min, keys: [conv1, conv2, dense]}

* A reference as a param value stands for an upstream job's outputs::

      model: {best_of: train_search, metric: test_accuracy, mode: max}
      model: {result_of: prune_conv1}          # a stage with exactly one job
      models: {all_of: [prune_conv1, prune_fc1]}  # every successful job, in queue order

  It resolves to an `Outcome` dict: job id, stage, resolved params, result metrics and the
  artifacts the job recorded (name -> sha256, size, where it is stored).

This module is pure: it knows nothing about the database. The queue hands it upstream outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .mappings import deep_copy as _deep_copy

REF_KEYS = ("best_of", "result_of", "all_of")
MODES = ("max", "min")


class HandOffError(ValueError):
    """A hand-off that cannot be resolved (the message says which stage and metric)."""


@dataclass(frozen=True)
class Ref:
    """A param value that refers to upstream output."""

    form: str  # best_of | result_of | all_of
    stages: tuple[str, ...]
    metric: str | None = None
    mode: str = "max"


@dataclass(frozen=True)
class Inherit:
    from_stage: str
    keys: tuple[str, ...]
    metric: str
    mode: str = "max"


def parse_ref(value: Any) -> Ref | None:
    """Return the Ref a param value stands for, or None if it is a plain value.

    Raises ValueError with a readable message when the value looks like a reference but is not
    well formed.
    """
    if not isinstance(value, Mapping):
        return None
    forms = [k for k in REF_KEYS if k in value]
    if not forms:
        return None
    if len(forms) > 1:
        raise ValueError(f"a reference takes one of {', '.join(REF_KEYS)}, not {' and '.join(forms)}")
    form = forms[0]
    allowed = {form, "metric", "mode"}
    extra = sorted(set(value) - allowed)
    if extra:
        raise ValueError(f"unexpected key(s) {extra} in {form} reference; allowed: {sorted(allowed)}")
    target = value[form]
    stages = tuple(target) if isinstance(target, list) else (target,)
    if not stages or not all(isinstance(s, str) and s for s in stages):
        raise ValueError(f"{form} must name a stage (or, for all_of, a list of stages)")
    if form != "all_of" and len(stages) != 1:
        raise ValueError(f"{form} names exactly one stage")
    metric = value.get("metric")
    mode = value.get("mode", "max")
    if mode not in MODES:
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    if form == "best_of" and not isinstance(metric, str):
        raise ValueError("best_of needs a metric to rank by, e.g. metric: test_accuracy")
    return Ref(form, stages, metric, mode)


def find_refs(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Ref]]:
    """Every (dotted path, Ref) inside params."""
    for key, value in params.items():
        path = f"{prefix}{key}"
        ref = parse_ref(value)
        if ref is not None:
            yield path, ref
        elif isinstance(value, Mapping):
            yield from find_refs(value, path + ".")


def parse_inherit(value: Any) -> Inherit:
    if not isinstance(value, Mapping):
        raise ValueError("inherit takes a mapping: {from: STAGE, metric: M, mode: max|min, keys: [...]}")
    allowed = {"from", "metric", "best", "mode", "keys"}
    extra = sorted(set(value) - allowed)
    if extra:
        raise ValueError(f"unexpected key(s) {extra} in inherit; allowed: from, metric, mode, keys")
    source = value.get("from")
    metric = value.get("metric", value.get("best"))  # `best:` reads well too; DESIGN.md uses it
    keys = value.get("keys")
    mode = value.get("mode", "max")
    if not isinstance(source, str):
        raise ValueError("inherit needs 'from: STAGE'")
    if not isinstance(metric, str):
        raise ValueError("inherit needs 'metric: NAME' to choose the best upstream job")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError("inherit needs 'keys: [param, ...]', a non-empty list of param names")
    if mode not in MODES:
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    return Inherit(source, tuple(keys), metric, mode)


# ---------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class Outcome:
    """What an upstream job left behind, as the queue reports it."""

    job_id: str
    stage: str
    status: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    artifacts: dict[str, dict[str, Any]]
    position: int

    def as_value(self) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "stage": self.stage,
            "params": self.params,
            "metrics": self.result or {},
            "artifacts": self.artifacts,
        }


def _metric(outcome: Outcome, metric: str) -> float | None:
    value = (outcome.result or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def best(outcomes: list[Outcome], stage: str, metric: str, mode: str) -> Outcome:
    """The done job of `stage` with the best `metric`; ties go to the earlier job in the queue."""
    done = [o for o in outcomes if o.stage == stage and o.status == "done"]
    if not done:
        raise HandOffError(f"no job of stage '{stage}' finished successfully")
    scored = [(m, o) for o in done if (m := _metric(o, metric)) is not None]
    if not scored:
        raise HandOffError(f"no finished job of stage '{stage}' reported metric '{metric}'")
    sign = -1.0 if mode == "max" else 1.0
    return min(scored, key=lambda mo: (sign * mo[0], mo[1].position))[1]


def resolve_ref(ref: Ref, outcomes: list[Outcome]) -> Any:
    if ref.form == "best_of":
        return best(outcomes, ref.stages[0], ref.metric or "", ref.mode).as_value()
    if ref.form == "result_of":
        done = [o for o in outcomes if o.stage == ref.stages[0] and o.status == "done"]
        if not done:
            raise HandOffError(f"the job of stage '{ref.stages[0]}' did not finish successfully")
        if ref.metric:
            return best(done, ref.stages[0], ref.metric, ref.mode).as_value()
        return done[0].as_value()
    picked = [o for o in outcomes if o.stage in ref.stages and o.status == "done"]
    if not picked:
        raise HandOffError(f"no job of {', '.join(ref.stages)} finished successfully")
    return [o.as_value() for o in sorted(picked, key=lambda o: o.position)]


def resolve_params(
    params: dict[str, Any], inherit: Inherit | None, outcomes: list[Outcome]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Params with inherited keys filled in and references replaced by upstream outcomes.

    Returns (resolved params, provenance) where provenance maps each filled path to the upstream
    job id it came from, for `sweeper show`.
    """
    resolved = _deep_copy(params)
    provenance: dict[str, str] = {}
    if inherit is not None:
        source = best(outcomes, inherit.from_stage, inherit.metric, inherit.mode)
        for key in inherit.keys:
            if key not in source.params:
                raise HandOffError(f"upstream job {source.job_id} has no param '{key}' to inherit")
            resolved[key] = _deep_copy(source.params[key])
            provenance[key] = source.job_id
    for path, ref in list(find_refs(resolved)):
        value = resolve_ref(ref, outcomes)
        _set_path(resolved, path, value)
        provenance[path] = ",".join(v["job"] for v in value) if isinstance(value, list) else value["job"]
    return resolved, provenance


def _set_path(params: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
