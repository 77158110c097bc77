"""Hand-offs: how a dependent stage takes values and files from the stages it needs.

Three forms, all resolved once, when every upstream job has finished:

* `inherit:` on a stage copies named params from the best upstream job::

      inherit: {from: model_search, metric: images_to_target, mode: min, keys: [conv1, conv2, dense]}

* A reference as a param value stands for an upstream job's outputs::

      model: {best_of: train_search, metric: test_accuracy, mode: max}
      model: {result_of: prune_conv1}          # a stage with exactly one job
      models: {all_of: [prune_conv1, prune_fc1]}  # every successful job, in queue order

  It resolves to an `Outcome` dict: job id, stage, resolved params, result metrics and the
  artifacts the job recorded (name -> sha256, size, where it is stored).

* A repeat job (a `repeat:` stage, expanded by spec.py) has params `{rank_of: {stage, by, mode,
  rank}, seed: 1}`: they resolve to the params of the configuration ranked `rank` in `stage`,
  with `seed` (every key beside `rank_of`) set over them.

* A promote job (a `promote:` stage, see sweeper/grid/promote.py) has params `{rank_of: {stage,
  by, mode, rank, over_seeds, continue: true}, max_epochs: M}`: the same, plus `continue_from:
  JOB`, the upstream job whose final checkpoint it continues. With `over_seeds: none` each job
  ranks on its own; with `mean` a configuration ranks by the mean of its seeds and the job
  continued is its earliest seed's.

`inherit` and `best_of` may name several stages and rank over seeds (`over_seeds: mean`): jobs
whose params are identical except for `seed` are one configuration, ranked by the mean of its
seeds; `min_seeds: N` leaves out configurations with fewer seeds (a config that ran once must not
beat a repeated one by one lucky seed). Ties always go to the configuration (or job) earlier in
the queue, so a choice never depends on the order jobs finished in or on machine load.

This module is pure: it knows nothing about the database. The queue hands it upstream outcomes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sweeper.mappings import deep_copy as _deep_copy

REF_KEYS = ("best_of", "result_of", "all_of")
MODES = ("max", "min")
OVER_SEEDS = ("none", "mean")
SEED_KEY = "seed"  # the param that tells repeats of one configuration apart
RANK_KEY = "rank_of"  # the params of a repeat job: {rank_of: {stage, by, mode, rank}, seed: N}
# Set by a promote job's resolution: the upstream job whose final checkpoint it continues.
CONTINUE_KEY = "continue_from"


class HandOffError(ValueError):
    """A hand-off that cannot be resolved (the message says which stage and metric)."""


@dataclass(frozen=True)
class Ref:
    """A param value that refers to upstream output."""

    form: str  # best_of | result_of | all_of
    stages: tuple[str, ...]
    metric: str | None = None
    mode: str = "max"
    over_seeds: str = "none"
    min_seeds: int = 1


@dataclass(frozen=True)
class Inherit:
    from_stages: tuple[str, ...]
    keys: tuple[str, ...]
    metric: str
    mode: str = "max"
    over_seeds: str = "none"
    min_seeds: int = 1

    @property
    def from_stage(self) -> str:
        return ", ".join(self.from_stages)

    def to_json(self) -> dict[str, Any]:
        source: str | list[str] = self.from_stages[0] if len(self.from_stages) == 1 else list(self.from_stages)
        out: dict[str, Any] = {"from": source, "keys": list(self.keys), "metric": self.metric, "mode": self.mode}
        if self.over_seeds != "none":
            out.update(over_seeds=self.over_seeds, min_seeds=self.min_seeds)
        return out


@dataclass(frozen=True)
class RankOf:
    """A repeat job's source: the configuration ranked `rank` (1 = best) in `stage` by `metric`."""

    stage: str
    metric: str
    mode: str
    rank: int
    over_seeds: str = "mean"  # a repeat always ranks configurations; a promote says which
    continues: bool = False  # a promote job: continue the ranked job's final checkpoint

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "by": self.metric, "mode": self.mode, "rank": self.rank}
        if self.continues:  # only then, so that a repeat job's identity is what it always was
            out.update(over_seeds=self.over_seeds, **{"continue": True})
        return out


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
    allowed = {form, "metric", "mode"} | ({"over_seeds", "min_seeds"} if form == "best_of" else set())
    extra = sorted(set(value) - allowed)
    if extra:
        raise ValueError(f"unexpected key(s) {extra} in {form} reference; allowed: {sorted(allowed)}")
    target = value[form]
    stages = tuple(target) if isinstance(target, list) else (target,)
    if not stages or not all(isinstance(s, str) and s for s in stages):
        raise ValueError(f"{form} must name a stage (or, for all_of and best_of, a list of stages)")
    if form == "result_of" and len(stages) != 1:
        raise ValueError(f"{form} names exactly one stage")
    metric = value.get("metric")
    mode = value.get("mode", "max")
    if mode not in MODES:
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    if form == "best_of" and not isinstance(metric, str):
        raise ValueError("best_of needs a metric to rank by, e.g. metric: test_accuracy")
    over_seeds, min_seeds = _seed_options(value)
    return Ref(form, stages, metric, mode, over_seeds, min_seeds)


def _seed_options(value: Mapping[str, Any]) -> tuple[str, int]:
    over_seeds = value.get("over_seeds", "none")
    if over_seeds not in OVER_SEEDS:
        raise ValueError(f"over_seeds must be 'mean' or 'none', not {over_seeds!r}")
    min_seeds = value.get("min_seeds", 1)
    if isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or not 1 <= min_seeds <= 1000:
        raise ValueError(f"min_seeds must be an integer from 1 to 1,000, not {min_seeds!r}")
    if min_seeds > 1 and over_seeds != "mean":
        raise ValueError("min_seeds counts the seeds of a configuration: it needs over_seeds: mean")
    return over_seeds, min_seeds


def _stages(target: Any, what: str) -> tuple[str, ...]:
    stages = tuple(target) if isinstance(target, list) else (target,)
    if not stages or not all(isinstance(s, str) and s for s in stages):
        raise ValueError(f"{what} must name a stage or a list of stages")
    return stages


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
    allowed = {"from", "metric", "best", "mode", "keys", "over_seeds", "min_seeds"}
    extra = sorted(set(value) - allowed)
    if extra:
        raise ValueError(
            f"unexpected key(s) {extra} in inherit; allowed: from, metric, mode, keys, over_seeds, min_seeds"
        )
    source = value.get("from")
    metric = value.get("metric", value.get("best"))  # `best:` reads well too; DESIGN.md uses it
    keys = value.get("keys")
    mode = value.get("mode", "max")
    if source is None:
        raise ValueError("inherit needs 'from: STAGE' (or a list of stages)")
    sources = _stages(source, "inherit 'from'")
    if not isinstance(metric, str):
        raise ValueError("inherit needs 'metric: NAME' to choose the best upstream job")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError("inherit needs 'keys: [param, ...]', a non-empty list of param names")
    if mode not in MODES:
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    over_seeds, min_seeds = _seed_options(value)
    return Inherit(sources, tuple(keys), metric, mode, over_seeds, min_seeds)


def parse_rank_of(params: Mapping[str, Any]) -> RankOf | None:
    """The RankOf of a repeat job's params, or None for any other job."""
    value = params.get(RANK_KEY) if isinstance(params, Mapping) else None
    if not isinstance(value, Mapping):
        return None
    try:
        return RankOf(
            str(value["stage"]),
            str(value["by"]),
            str(value.get("mode", "max")),
            int(value["rank"]),
            str(value.get("over_seeds", "mean")),
            bool(value.get("continue", False)),
        )
    except (KeyError, TypeError, ValueError):
        return None


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
    # `params` are the effective params (the kind's defaults filled in: what inherit and best_of
    # hand on); `ran_with` the params as written and resolved, which a repeat job copies, so that
    # it stays the configuration as written with another seed. None: the same as params.
    ran_with: dict[str, Any] | None = None

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


def _names(stages: tuple[str, ...]) -> str:
    return ", ".join(f"'{s}'" for s in stages)


def _done(outcomes: list[Outcome], stages: tuple[str, ...]) -> list[Outcome]:
    done = sorted((o for o in outcomes if o.stage in stages and o.status == "done"), key=lambda o: o.position)
    if not done:
        raise HandOffError(f"no job of stage {_names(stages)} finished successfully")
    return done


def best(outcomes: list[Outcome], stages: str | tuple[str, ...], metric: str, mode: str) -> Outcome:
    """The done job of `stages` with the best `metric`; ties go to the earlier job in the queue."""
    stages = (stages,) if isinstance(stages, str) else stages
    scored = [(m, o) for o in _done(outcomes, stages) if (m := _metric(o, metric)) is not None]
    if not scored:
        raise HandOffError(f"no finished job of stage {_names(stages)} reported metric '{metric}'")
    sign = -1.0 if mode == "max" else 1.0
    return min(scored, key=lambda mo: (sign * mo[0], mo[1].position))[1]


@dataclass(frozen=True)
class Config:
    """The done jobs of one configuration: params identical except for `seed`, one job per seed."""

    members: tuple[Outcome, ...]  # in queue order
    values: tuple[float | None, ...]  # the metric of each member (None: not reported)

    @property
    def scored(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def mean(self) -> float:
        scored = self.scored
        return math.fsum(scored) / len(scored)

    @property
    def seeds(self) -> list[Any]:
        return [m.params.get(SEED_KEY) for m in self.members]

    def summary(self, metric: str) -> dict[str, Any]:
        scored = self.scored
        std = (
            math.sqrt(math.fsum((v - self.mean) ** 2 for v in scored) / (len(scored) - 1)) if len(scored) > 1 else None
        )
        return {
            "metric": metric,
            "mean": self.mean,
            "std": std,
            "n": len(scored),
            "seeds": self.seeds,
            "values": list(self.values),
            "jobs": [m.job_id for m in self.members],
        }


def config_key(params: Mapping[str, Any]) -> str:
    """What makes two jobs the same configuration: every param but the seed (and the job a promoted one continued)."""
    rest = {k: v for k, v in params.items() if k not in (SEED_KEY, CONTINUE_KEY)}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)


def ranked_configs(
    outcomes: list[Outcome],
    stages: tuple[str, ...],
    metric: str,
    mode: str,
    min_seeds: int = 1,
    over_seeds: str = "mean",
) -> list[Config]:
    """The configurations of `stages`, best mean first.

    A seed that ran twice (the same params in two stages, e.g. a training-grid point equal to a
    model-grid point) counts once, as its earliest job. A configuration some of whose seeds did
    not report the metric ranks after every configuration whose seeds all did (a run that never
    reached the target is not faster for it); one that reported nothing is left out. Ties go to
    the configuration whose first job is earlier in the queue. `over_seeds: none` ranks every
    job on its own (a configuration of one seed).
    """
    groups: dict[str, dict[str, Outcome]] = {}
    for o in _done(outcomes, stages):
        seeds = groups.setdefault(config_key(o.params) if over_seeds == "mean" else o.job_id, {})
        seeds.setdefault(json.dumps(o.params.get(SEED_KEY), default=str), o)
    configs = []
    for seeds in groups.values():
        members = tuple(seeds.values())
        config = Config(members, tuple(_metric(m, metric) for m in members))
        if config.scored and len(members) >= min_seeds:
            configs.append(config)
    if not configs:
        few = f" with at least {min_seeds} seeds" if min_seeds > 1 else ""
        raise HandOffError(f"no configuration of stage {_names(stages)}{few} reported metric '{metric}'")
    sign = -1.0 if mode == "max" else 1.0
    return sorted(configs, key=lambda c: (None in c.values, sign * c.mean, c.members[0].position))


def best_config(
    outcomes: list[Outcome], stages: tuple[str, ...], metric: str, mode: str, min_seeds: int
) -> tuple[Outcome, Config]:
    """The best configuration by its mean over seeds, and its best job (the model to hand on)."""
    config = ranked_configs(outcomes, stages, metric, mode, min_seeds)[0]
    return best(list(config.members), stages, metric, mode), config


def _choose(
    outcomes: list[Outcome], stages: tuple[str, ...], metric: str, mode: str, over_seeds: str, min_seeds: int
) -> tuple[Outcome, Config | None]:
    if over_seeds == "mean":
        return best_config(outcomes, stages, metric, mode, min_seeds)
    return best(outcomes, stages, metric, mode), None


def resolve_ref(ref: Ref, outcomes: list[Outcome]) -> Any:
    if ref.form == "best_of":
        chosen, config = _choose(outcomes, ref.stages, ref.metric or "", ref.mode, ref.over_seeds, ref.min_seeds)
        value = chosen.as_value()
        if config is not None:
            value["over_seeds"] = config.summary(ref.metric or "")
        return value
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


def resolve_rank_of(rank_of: RankOf, outcomes: list[Outcome]) -> Outcome:
    """The job whose params a repeat job takes: the earliest job of the rank-th configuration."""
    configs = ranked_configs(outcomes, (rank_of.stage,), rank_of.metric, rank_of.mode, over_seeds=rank_of.over_seeds)
    if rank_of.rank > len(configs):
        what = "promote" if rank_of.continues else "repeat"
        raise HandOffError(
            f"stage '{rank_of.stage}' has {len(configs)} configuration(s) that reported '{rank_of.metric}'; "
            f"there is no rank {rank_of.rank} to {what}"
        )
    return configs[rank_of.rank - 1].members[0]


def resolve_params(
    params: dict[str, Any], inherit: Inherit | None, outcomes: list[Outcome]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Params with inherited keys filled in and references replaced by upstream outcomes.

    Returns (resolved params, provenance) where provenance maps each filled path to the upstream
    job id it came from, for `sweeper show`.
    """
    rank_of = parse_rank_of(params)
    if rank_of is not None:
        # A repeat: the source job's params (already resolved) with the seed set over them.
        source = resolve_rank_of(rank_of, outcomes)
        resolved = _deep_copy(source.ran_with if source.ran_with is not None else source.params)
        resolved.update({k: _deep_copy(v) for k, v in params.items() if k != RANK_KEY})
        if rank_of.continues:
            resolved[CONTINUE_KEY] = source.job_id
        return resolved, {RANK_KEY: source.job_id}
    resolved = _deep_copy(params)
    provenance: dict[str, str] = {}
    if inherit is not None:
        source, _ = _choose(
            outcomes, inherit.from_stages, inherit.metric, inherit.mode, inherit.over_seeds, inherit.min_seeds
        )
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
