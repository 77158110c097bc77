"""grid.yaml -> validated stages and job specs.

A grid file names a sweep, shared `defaults` and `stages`. Each stage has a `kind` and makes one
job per point of its `grid` (cartesian product) times its `configs` (an explicit list); a stage
with neither makes one job. Every problem is reported as a SpecError naming the file, line, stage
and key. Nothing here touches the database.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.errors import SpecError
from sweeper.grid import handoff, registry
from sweeper.grid.yamlfile import LineIndex, load_yaml
from sweeper.mappings import deep_copy as _copy
from sweeper.mappings import flatten

TOP_KEYS = ("sweep", "description", "defaults", "stages")
STAGE_KEYS = (
    "kind",
    "description",
    "params",
    "grid",
    "configs",
    "needs",
    "require_all",
    "inherit",
    "priority",
    "max_failures",
    "max_interruptions",
    "repeat",
)
# A repeat stage takes its kind and params from the stage it repeats.
REPEAT_EXCLUDES = ("kind", "params", "grid", "configs", "inherit")
REPEAT_KEYS = ("stage", "top", "by", "mode", "seeds")
DEFAULT_MAX_FAILURES = 3
DEFAULT_MAX_INTERRUPTIONS = 20
# Far above any real sweep; a grid past it is a mistake (a typo'd axis) that would exhaust memory.
MAX_JOBS_PER_STAGE = 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # so never "..", never a leading "."
# Sweep and stage names go into VARCHAR(200) columns (store/db.py: sweeps.name, stages.name,
# jobs.sweep, jobs.stage; PostgreSQL refuses longer, SQLite would keep them) and the sweep name
# becomes a directory under the state directory (a file name: 255 bytes). A kind goes into
# VARCHAR(300). Checked here, so that enqueue refuses the file instead of every job failing later.
NAME_MAX = 200
KIND_MAX = 300
_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")  # as sweeper/grid/ranking.py reads metric names


@dataclass(frozen=True)
class Repeat:
    """`repeat:` of a stage: the `top` configurations of `stage` by `by`, run again with each seed."""

    stage: str
    top: int
    by: str
    mode: str
    seeds: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "top": self.top, "by": self.by, "mode": self.mode, "seeds": list(self.seeds)}


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: str
    needs: tuple[str, ...] = ()
    require_all: bool = False
    inherit: handoff.Inherit | None = None
    priority: int = 0
    max_failures: int = DEFAULT_MAX_FAILURES
    max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS
    description: str = ""
    repeat: Repeat | None = None

    def to_json(self) -> dict[str, Any]:
        inherit = None if self.inherit is None else self.inherit.to_json()
        return {
            "kind": self.kind,
            "needs": list(self.needs),
            "require_all": self.require_all,
            "inherit": inherit,
            "priority": self.priority,
            "description": self.description,
            "repeat": None if self.repeat is None else self.repeat.to_json(),
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> StageSpec:
        inherit = handoff.parse_inherit(data["inherit"]) if data.get("inherit") else None
        repeat = data.get("repeat")
        return cls(
            name=name,
            kind=data["kind"],
            needs=tuple(data.get("needs") or ()),
            require_all=bool(data.get("require_all")),
            inherit=inherit,
            priority=int(data.get("priority") or 0),
            description=data.get("description") or "",
            repeat=Repeat(**{**repeat, "seeds": tuple(repeat["seeds"])}) if repeat else None,
        )


@dataclass(frozen=True)
class JobSpec:
    id: str
    sweep: str
    stage: str
    kind: str
    params: dict[str, Any]
    label: str  # the values that vary within the stage, e.g. "conv1.channels=8 dense=64"
    priority: int = 0
    max_failures: int = DEFAULT_MAX_FAILURES
    max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS


@dataclass
class SweepSpec:
    name: str
    file: str
    text: str
    description: str = ""
    stages: list[StageSpec] = field(default_factory=list)
    jobs: list[JobSpec] = field(default_factory=list)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_identity(sweep: str, stage: str, kind: str, params: Mapping[str, Any]) -> str:
    """A job's id: the same sweep, stage, kind and params always give the same id."""
    payload = canonical_json({"sweep": sweep, "stage": stage, "kind": kind, "params": params})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class _Reader:
    """Validation helpers that know the file and its line index."""

    def __init__(self, file: str, lines: LineIndex) -> None:
        self.file = file
        self.lines = lines

    def error(
        self, message: str, *path: object, stage: str | None = None, key: str | None = None, hint: str | None = None
    ) -> SpecError:
        return SpecError(message, file=self.file, line=self.lines.line(*path), stage=stage, key=key, hint=hint)

    def check_keys(
        self, mapping: Mapping[str, Any], allowed: Iterable[str], *path: object, stage: str | None = None, what: str
    ) -> None:
        allowed = tuple(allowed)
        for key in mapping:
            if key not in allowed:
                raise self.error(
                    f"unknown {what} key '{key}'",
                    *path,
                    key,
                    stage=stage,
                    key=str(key),
                    hint=_suggest(str(key), allowed) or f"allowed keys: {', '.join(allowed)}",
                )


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no such grid file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read grid file {path}: {exc}") from None
    return parse_spec(text, str(path))


def parse_spec(text: str, file: str = "<grid>") -> SweepSpec:
    data, lines = load_yaml(text, file)
    r = _Reader(file, lines)
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise r.error(
            f"expected a mapping with keys sweep, defaults, stages; got {got}",
            hint="see jobs/grids/quickstart.yaml for an example",
        )
    r.check_keys(data, TOP_KEYS, what="top-level")

    name = data.get("sweep")
    if not isinstance(name, str) or not _NAME.match(name):
        raise r.error(
            "'sweep' must be a name made of letters, digits, '_', '-' or '.'",
            "sweep",
            key="sweep",
            hint="for example: sweep: fmnist-assignment",
        )
    _check_length(r, name, "the sweep name", "sweep", key="sweep")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise r.error("'defaults' must be a mapping of param names to values", "defaults", key="defaults")
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, Mapping) or not stages_raw:
        raise r.error("'stages' must be a non-empty mapping of stage names to stages", "stages", key="stages")

    stages: dict[str, StageSpec] = {}
    raw_by_stage: dict[str, Mapping[str, Any]] = {}
    for stage_name, raw in stages_raw.items():
        stage_name = str(stage_name)
        if not _NAME.match(stage_name):
            raise r.error(
                "a stage name is made of letters, digits, '_', '-' or '.'", "stages", stage_name, stage=stage_name
            )
        _check_length(r, stage_name, "a stage name", "stages", stage_name, stage=stage_name[:40] + "...")
        if not isinstance(raw, Mapping):
            raise r.error("a stage must be a mapping with at least 'kind'", "stages", stage_name, stage=stage_name)
        r.check_keys(raw, STAGE_KEYS, "stages", stage_name, stage=stage_name, what="stage")
        raw_by_stage[stage_name] = raw
        if "repeat" not in raw:  # a repeat stage is read once the stage it repeats is known
            stages[stage_name] = _read_stage(r, stage_name, raw)
    for stage_name, raw in raw_by_stage.items():
        if "repeat" in raw:
            repeats = {n for n, raw in raw_by_stage.items() if "repeat" in raw}
            stages[stage_name] = _read_repeat(r, stage_name, raw, stages, repeats)
    stages = {stage_name: stages[stage_name] for stage_name in raw_by_stage}  # file order

    for stage in stages.values():
        for need in stage.needs:
            if need not in stages:
                raise r.error(
                    f"needs unknown stage '{need}'",
                    "stages",
                    stage.name,
                    "needs",
                    stage=stage.name,
                    key="needs",
                    hint=_suggest(need, stages) or f"stages: {', '.join(stages)}",
                )
            if need == stage.name:
                raise r.error(
                    "a stage cannot need itself", "stages", stage.name, "needs", stage=stage.name, key="needs"
                )
    _check_acyclic(r, stages)

    _check_defaults(r, defaults, stages.values())

    spec = SweepSpec(name=name, file=file, text=text, description=str(data.get("description") or ""))
    spec.stages = list(stages.values())
    job_counts: dict[str, int] = {}
    expanded = {
        s.name: _expand_stage(r, name, s, raw_by_stage[s.name], defaults) for s in spec.stages if s.repeat is None
    }
    for stage in spec.stages:
        if stage.repeat is not None:
            expanded[stage.name] = _expand_repeat(r, name, stage, expanded[stage.repeat.stage])
    for stage in spec.stages:
        jobs = expanded[stage.name]
        job_counts[stage.name] = len(jobs)
        spec.jobs.extend(jobs)
    _check_refs(r, spec, job_counts)
    _check_handoff_names(r, spec)
    return spec


def _check_length(r: _Reader, value: str, what: str, *path: object, limit: int = NAME_MAX, **where: Any) -> None:
    if len(value) > limit:
        raise r.error(
            f"{what} is {len(value)} characters long; at most {limit} fit the queue (and a file name)",
            *path,
            hint=f"shorten it to {limit} characters or fewer",
            **where,
        )


def _read_stage(r: _Reader, name: str, raw: Mapping[str, Any]) -> StageSpec:
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise r.error(
            "every stage needs 'kind' (train, prune, benchmark, or module:function)",
            "stages",
            name,
            stage=name,
            key="kind",
        )
    _check_length(r, kind, "'kind'", "stages", name, "kind", limit=KIND_MAX, stage=name, key="kind")
    try:
        registry.lookup(kind)
    except registry.KindError as exc:
        raise r.error(exc.message, "stages", name, "kind", stage=name, key="kind", hint=exc.hint) from None

    needs_raw = raw.get("needs") or []
    needs_list = [needs_raw] if isinstance(needs_raw, str) else needs_raw
    if not isinstance(needs_list, list) or not all(isinstance(n, str) for n in needs_list):
        raise r.error("'needs' must be a list of stage names", "stages", name, "needs", stage=name, key="needs")

    inherit = None
    if raw.get("inherit") is not None:
        try:
            inherit = handoff.parse_inherit(raw["inherit"])
        except ValueError as exc:
            raise r.error(str(exc), "stages", name, "inherit", stage=name, key="inherit") from None
        for source in inherit.from_stages:
            if source not in needs_list:
                raise r.error(
                    f"inherits from '{source}', which is not in 'needs'",
                    "stages",
                    name,
                    "inherit",
                    stage=name,
                    key="inherit",
                    hint=f"add it: needs: [{', '.join([*needs_list, source])}]",
                )

    def integer(key: str, default: int, minimum: int, maximum: int = 1_000_000) -> int:
        # The bound keeps the value inside the database's INTEGER column (32 bits on PostgreSQL).
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise r.error(
                f"'{key}' must be an integer from {minimum:,} to {maximum:,}", "stages", name, key, stage=name, key=key
            )
        return value

    require_all = raw.get("require_all", False)
    if not isinstance(require_all, bool):
        raise r.error(
            "'require_all' must be true or false", "stages", name, "require_all", stage=name, key="require_all"
        )
    return StageSpec(
        name=name,
        kind=kind,
        needs=tuple(needs_list),
        require_all=require_all,
        inherit=inherit,
        priority=integer("priority", 0, -1_000_000),
        max_failures=integer("max_failures", DEFAULT_MAX_FAILURES, 1),
        max_interruptions=integer("max_interruptions", DEFAULT_MAX_INTERRUPTIONS, 1),
        description=str(raw.get("description") or ""),
    )


def _check_defaults(r: _Reader, defaults: Mapping[str, Any], stages: Iterable[StageSpec]) -> None:
    """Every key in `defaults` must be a param of some stage's kind.

    A default applies only to the stages whose kind takes it, so a misspelled one (max_epoch for
    max_epochs) would otherwise vanish without a word and every job would run with the kind's own
    default. A kind without a param model takes any key.
    """
    takes: dict[str, set[str]] = {}  # kind -> its param names
    for stage in stages:
        model = registry.load_params_model(stage.kind)
        if model is None:
            return  # an untyped kind takes every default
        takes.setdefault(stage.kind, set(model.model_fields))
    known = set().union(*takes.values())
    for key in defaults:
        if str(key) in known:
            continue
        kinds = ("kind " if len(takes) == 1 else "kinds ") + ", ".join(sorted(takes))
        raise r.error(
            f"unknown param '{key}' in defaults: no stage's kind takes it (checked {kinds})",
            "defaults",
            key,
            key=str(key),
            hint=_suggest(str(key), sorted(known)) or f"params these kinds take: {', '.join(sorted(known))}",
        )


def _check_acyclic(r: _Reader, stages: Mapping[str, StageSpec]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for need in stages[name].needs:
            if state.get(need) == 1:
                cycle = [*path[path.index(need) :], need] if need in path else [name, need]
                raise r.error(
                    f"dependency cycle: {' -> '.join(cycle)}",
                    "stages",
                    name,
                    "needs",
                    stage=name,
                    key="needs",
                    hint="remove one of these 'needs' so the stages form a chain",
                )
            if state.get(need) is None:
                visit(need, [*path, need])
        state[name] = 2

    for name in stages:
        if state.get(name) is None:
            visit(name, [name])


# ---------------------------------------------------------------------------------------------
# Expansion


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = _copy(value)
    return out


def _set_path(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, Mapping) else {}
        node = node[part]
    if isinstance(value, Mapping) and isinstance(node.get(last), Mapping):
        node[last] = _deep_merge(dict(node[last]), value)
    else:
        node[last] = _copy(value)


def apply_axis(
    params: dict[str, Any], axis: str, value: Any, kind_params: Iterable[str] | None = None
) -> dict[str, Any]:
    """Set one grid axis value on params.

    * `conv1.kernel: 5` sets a nested value.
    * `conv1: {channels: 8, kernel: 3}` merges into the mapping `conv1` holds.
    * `optim: {lr: 0.01, momentum: 0.9}`, where `optim` is not a param but `lr` and `momentum` are,
      is a tied group: both keys are set together at the top level.

    A key "is a param" when params already hold it or when it is one of `kind_params` (the
    fields of the kind's param model): a tied group of params left at the kind's defaults is
    still a tied group.
    """
    out = _copy(params)
    known = set(params) | set(kind_params or ())
    is_tied_group = (
        isinstance(value, Mapping)
        and value
        and "." not in axis
        and axis not in known
        and all(str(k) in known for k in value)
    )
    if is_tied_group:
        for key, v in value.items():
            _set_path(out, str(key), v)
    else:
        _set_path(out, axis, value)
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    # For a job's label: any value, not only a mapping; an empty mapping shows as `{}` and no key
    # ends in '.' (an empty key shows as its parent's).
    if isinstance(value, Mapping) and value:
        return {k.rstrip("."): v for k, v in flatten(value, prefix, whole=lambda v: not v).items()}
    return {prefix.rstrip("."): value}


def _label(overrides: list[tuple[str, Any]]) -> str:
    parts = []
    for axis, value in overrides:
        for key, v in _flatten(value, f"{axis}.").items():
            parts.append(f"{key}={v}")
    return " ".join(parts)


def _expand_stage(
    r: _Reader, sweep: str, stage: StageSpec, raw: Mapping[str, Any], defaults: Mapping[str, Any]
) -> list[JobSpec]:
    name = stage.name
    stage_params = raw.get("params") or {}
    if not isinstance(stage_params, Mapping):
        raise r.error("'params' must be a mapping", "stages", name, "params", stage=name, key="params")

    model = registry.load_params_model(stage.kind)
    known = set(model.model_fields) if model is not None else None
    # Defaults apply to every stage whose kind takes that param (all of them for untyped kinds).
    base = {k: _copy(v) for k, v in defaults.items() if known is None or k in known}
    base = _deep_merge(base, stage_params)

    grid = raw.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise r.error("'grid' must map param names to lists of values", "stages", name, "grid", stage=name, key="grid")
    axes: list[tuple[str, list[Any]]] = []
    for axis, values in grid.items():
        axis = str(axis)
        if not isinstance(values, list):
            raise r.error(
                f"grid axis '{axis}' must be a list of values",
                "stages",
                name,
                "grid",
                axis,
                stage=name,
                key=axis,
                hint=f"write {axis}: [{values!r}] for a single value",
            )
        if not values:
            raise r.error(
                f"grid axis '{axis}' has an empty list of values",
                "stages",
                name,
                "grid",
                axis,
                stage=name,
                key=axis,
                hint="give at least one value, or remove the axis",
            )
        axes.append((axis, values))

    configs = raw.get("configs")
    if configs is not None:
        if not isinstance(configs, list) or not configs:
            raise r.error(
                "'configs' must be a non-empty list of param mappings",
                "stages",
                name,
                "configs",
                stage=name,
                key="configs",
            )
        for i, config in enumerate(configs):
            if not isinstance(config, Mapping) or not config:
                raise r.error(
                    f"configs[{i}] must be a non-empty mapping of params",
                    "stages",
                    name,
                    "configs",
                    i,
                    stage=name,
                    key="configs",
                )

    if stage.inherit is not None:
        for axis, _ in axes:
            if axis.split(".")[0] in stage.inherit.keys:
                raise r.error(
                    f"'{axis}' is both a grid axis and inherited from '{stage.inherit.from_stage}'",
                    "stages",
                    name,
                    "grid",
                    axis,
                    stage=name,
                    key=axis,
                    hint="remove it from the grid or from inherit.keys",
                )

    config_list: list[Mapping[str, Any] | None] = list(configs) if configs else [None]
    count = math.prod(len(values) for _, values in axes) * len(config_list)
    if count > MAX_JOBS_PER_STAGE:
        raise r.error(
            f"the grid makes {count:,} jobs, more than the {MAX_JOBS_PER_STAGE:,} a stage may have",
            "stages",
            name,
            "grid",
            stage=name,
            key="grid",
            hint="check for an axis that should have been a tied group ({lr: ..., momentum: ...}) or a stray value",
        )
    points = list(itertools.product(*[[(axis, v) for v in values] for axis, values in axes])) or [()]

    jobs: list[JobSpec] = []
    seen: dict[str, str] = {}
    for point in points:
        for config in config_list:
            params = _copy(base)
            overrides: list[tuple[str, Any]] = []
            for axis, value in point:
                params = apply_axis(params, axis, value, known)
                overrides.append((axis, value))
            if config is not None:
                for key, value in config.items():
                    params = apply_axis(params, str(key), value, known)
                    overrides.append((str(key), value))
            _validate_params(r, stage, params, model, raw)
            job_id = job_identity(sweep, name, stage.kind, params)
            label = _label(overrides)
            if job_id in seen:
                raise r.error(
                    f"two points of this stage give the same job ({label or 'no overrides'})",
                    "stages",
                    name,
                    stage=name,
                    hint="remove the duplicated value or config",
                )
            seen[job_id] = label
            jobs.append(
                JobSpec(
                    job_id,
                    sweep,
                    name,
                    stage.kind,
                    params,
                    label,
                    stage.priority,
                    stage.max_failures,
                    stage.max_interruptions,
                )
            )
    return jobs


def _validate_params(r: _Reader, stage: StageSpec, params: dict[str, Any], model: Any, raw: Mapping[str, Any]) -> None:
    """Check names and types against the kind's param model, skipping hand-off references."""
    if model is None:
        return
    skip = {path.split(".")[0] for path, _ in _safe_refs(r, stage, params)}
    if stage.inherit is not None:
        skip.update(stage.inherit.keys)
    checked = {k: v for k, v in params.items() if k not in skip}
    try:
        model.model_validate(checked)
    except Exception as exc:  # pydantic.ValidationError, without importing pydantic here
        errors = getattr(exc, "errors", None)
        if not callable(errors):
            raise
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        top = loc.split(".")[0]
        where = ("stages", stage.name, "grid", top) if top in (raw.get("grid") or {}) else ("stages", stage.name)
        if first.get("type") == "extra_forbidden":
            hint = _suggest(top, model.model_fields) or f"{stage.kind} takes: {', '.join(sorted(model.model_fields))}"
            raise r.error(
                f"unknown param '{loc}' for kind '{stage.kind}'", *where, stage=stage.name, key=loc, hint=hint
            ) from None
        raise r.error(
            f"param '{loc}': {first.get('msg')} (got {first.get('input')!r})", *where, stage=stage.name, key=loc
        ) from None


def _safe_refs(r: _Reader, stage: StageSpec, params: Mapping[str, Any]) -> list[tuple[str, handoff.Ref]]:
    try:
        return list(handoff.find_refs(params))
    except ValueError as exc:
        raise r.error(str(exc), "stages", stage.name, "params", stage=stage.name, key="params") from None


def _check_refs(r: _Reader, spec: SweepSpec, job_counts: Mapping[str, int]) -> None:
    stages = {s.name: s for s in spec.stages}
    checked: set[str] = set()
    for job in spec.jobs:
        if job.stage in checked:
            continue
        checked.add(job.stage)
        stage = stages[job.stage]
        for path, ref in _safe_refs(r, stage, job.params):

            def bad(message: str, hint: str | None, stage: StageSpec = stage, path: str = path) -> SpecError:
                where = ("stages", stage.name, "params", path.split(".")[0])
                return r.error(message, *where, stage=stage.name, key=path, hint=hint)

            for target in ref.stages:
                if target not in stages:
                    raise bad(f"{ref.form} names unknown stage '{target}'", _suggest(target, stages))
                if target not in stage.needs:
                    raise bad(
                        f"{ref.form} refers to '{target}', which is not in 'needs'",
                        f"add it: needs: [{', '.join([*stage.needs, target])}]",
                    )
            count = job_counts[ref.stages[0]]
            if ref.form == "result_of" and ref.metric is None and count != 1:
                raise bad(
                    f"result_of '{ref.stages[0]}' is ambiguous: that stage has {count} jobs",
                    f"use best_of: {ref.stages[0]} with a metric and mode",
                )


def _check_handoff_names(r: _Reader, spec: SweepSpec) -> None:
    """Every metric a hand-off ranks by, and every key `inherit` copies, must exist upstream.

    Checked against what the upstream kinds declare (registry.declared_metrics, param models), so
    `metric: test_acc` or `keys: [convv2]` stops `enqueue` instead of failing the dependent jobs
    hours later, when the upstream stage has finished. Over several upstream stages a metric must
    be reported by one of them (resolution ranks the jobs that report it) and an inherited key
    must be a param of all of them (the chosen job may come from any). A kind that declares
    nothing is left to the check at resolution time.
    """
    stages = {s.name: s for s in spec.stages}
    checked: set[str] = set()

    def check_metric(metric: str, targets: Iterable[str], what: str, *where: object, stage: str, key: str) -> None:
        declared = [registry.declared_metrics(stages[t].kind) for t in targets]
        if any(d is None for d in declared):
            return
        known = set().union(*(d or () for d in declared))
        if metric in known:
            return
        kinds = sorted({stages[t].kind for t in targets})
        raise r.error(
            f"{what} ranks by metric '{metric}', which {_stage_names(targets)} (kind {', '.join(kinds)}) "
            f"{'does' if len(set(targets)) == 1 else 'do'} not report",
            *where,
            stage=stage,
            key=key,
            hint=_suggest(metric, sorted(known)) or f"metrics it reports: {', '.join(sorted(known))}",
        )

    for stage in spec.stages:
        if stage.repeat is not None:
            rep = stage.repeat
            check_metric(
                rep.by, [rep.stage], "repeat", "stages", stage.name, "repeat", "by", stage=stage.name, key="repeat.by"
            )
        if stage.inherit is not None:
            inherit = stage.inherit
            where = ("stages", stage.name, "inherit")
            check_metric(inherit.metric, inherit.from_stages, "inherit", *where, stage=stage.name, key="inherit.metric")
            for key in inherit.keys:
                for source in (*inherit.from_stages, None):
                    names = registry.param_names(stages[source].kind if source else stage.kind)
                    if names is None or key in names:
                        continue
                    whose = f"stage '{source}' (kind {stages[source].kind})" if source else f"kind '{stage.kind}'"
                    raise r.error(
                        f"inherit key '{key}' is not a param of {whose}",
                        *where,
                        stage=stage.name,
                        key="inherit.keys",
                        hint=_suggest(key, sorted(names)) or f"params it takes: {', '.join(sorted(names))}",
                    )
    for job in spec.jobs:
        if job.stage in checked:
            continue
        checked.add(job.stage)
        stage = stages[job.stage]
        for path, ref in _safe_refs(r, stage, job.params):
            if ref.metric is None or ref.form == "all_of":  # all_of hands on every job; it ranks nothing
                continue
            at = ("stages", stage.name, "params", path.split(".")[0])
            check_metric(ref.metric, ref.stages, ref.form, *at, stage=stage.name, key=path)


def _stage_names(names: Iterable[str]) -> str:
    names = list(names)
    return ("stage " if len(names) == 1 else "stages ") + ", ".join(f"'{n}'" for n in names)


# ---------------------------------------------------------------------------------------------
# Repeat stages: the top configurations of another stage, run again with more seeds


def _read_repeat(
    r: _Reader, name: str, raw: Mapping[str, Any], stages: Mapping[str, StageSpec], repeats: set[str]
) -> StageSpec:
    """A `repeat:` stage: validated against the stage it repeats, whose kind it takes."""
    where = ("stages", name, "repeat")

    def bad(message: str, key: str, hint: str | None = None, *path: object) -> SpecError:
        return r.error(message, *where, *path, stage=name, key=f"repeat.{key}" if key else "repeat", hint=hint)

    for key in REPEAT_EXCLUDES:
        if key in raw:
            raise r.error(
                f"a repeat stage takes its kind and params from the stage it repeats; remove '{key}'",
                "stages",
                name,
                key,
                stage=name,
                key=key,
            )
    spec = raw["repeat"]
    if not isinstance(spec, Mapping):
        raise bad(
            "'repeat' takes a mapping",
            "",
            "for example: repeat: {stage: model_search, top: 5, by: test_accuracy, mode: max, seeds: [1, 2]}",
        )
    r.check_keys(spec, REPEAT_KEYS, *where, stage=name, what="repeat")
    source = spec.get("stage")
    if source == name:
        raise bad("a stage cannot repeat itself", "stage", None, "stage")
    if source in repeats:
        raise bad(f"'{source}' is itself a repeat stage; repeat the stage it repeats", "stage", None, "stage")
    if not isinstance(source, str) or source not in stages:
        raise bad(
            f"repeat names unknown stage {source!r}",
            "stage",
            (_suggest(source, stages) if isinstance(source, str) else None) or f"stages: {', '.join(stages)}",
            "stage",
        )
    by = spec.get("by")
    if not isinstance(by, str) or not _METRIC.match(by):
        raise bad(
            f"repeat 'by' must name a metric of {source}'s results, not {by!r}",
            "by",
            "for example: by: test_accuracy",
            "by",
        )
    mode = spec.get("mode", "max")
    if mode not in handoff.MODES:
        raise bad(f"repeat 'mode' must be 'max' or 'min', not {mode!r}", "mode", None, "mode")
    top = spec.get("top")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise bad(f"repeat 'top' must be a positive integer, not {top!r}", "top", None, "top")
    seeds = spec.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 2**31 - 1 for x in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise bad(
            f"repeat 'seeds' must be a non-empty list of distinct non-negative integers, not {seeds!r}",
            "seeds",
            "for example: seeds: [1, 2]",
            "seeds",
        )
    model = registry.load_params_model(stages[source].kind)
    if model is not None and handoff.SEED_KEY not in model.model_fields:
        raise bad(f"kind '{stages[source].kind}' of stage '{source}' takes no 'seed' param to repeat with", "stage")

    needs_raw = raw.get("needs") or []
    needs_list = [needs_raw] if isinstance(needs_raw, str) else needs_raw
    if isinstance(needs_list, list):  # otherwise _read_stage reports the malformed 'needs'
        needs_list = [source, *(n for n in needs_list if n != source)]
    stage = _read_stage(r, name, {**raw, "kind": stages[source].kind, "needs": needs_list})
    return dataclasses.replace(stage, repeat=Repeat(source, top, by, mode, tuple(seeds)))


def _expand_repeat(r: _Reader, sweep: str, stage: StageSpec, source_jobs: list[JobSpec]) -> list[JobSpec]:
    """top x seeds blocked jobs; each resolves at settle time to a ranked source job's params, reseeded."""
    rep = stage.repeat
    assert rep is not None
    where = ("stages", stage.name, "repeat")
    if rep.top > len(source_jobs):
        raise r.error(
            f"repeat 'top' is {rep.top}, but stage '{rep.stage}' has {len(source_jobs)} job(s)",
            *where,
            "top",
            stage=stage.name,
            key="repeat.top",
        )
    model = registry.load_params_model(stage.kind)
    field = model.model_fields.get(handoff.SEED_KEY) if model is not None else None
    default = field.default if field is not None else None  # the seed a job that sets none runs with
    used = sorted(set(rep.seeds) & {j.params.get(handoff.SEED_KEY, default) for j in source_jobs})
    if used:
        raise r.error(
            f"repeat seed(s) {used} are already seeds of stage '{rep.stage}': a repeat would rerun the same job",
            *where,
            "seeds",
            stage=stage.name,
            key="repeat.seeds",
            hint="choose seeds that stage does not use",
        )
    jobs = []
    for rank in range(1, rep.top + 1):
        rank_of = handoff.RankOf(rep.stage, rep.by, rep.mode, rank)
        for seed in rep.seeds:
            params = {handoff.RANK_KEY: rank_of.to_json(), handoff.SEED_KEY: seed}
            jobs.append(
                JobSpec(
                    job_identity(sweep, stage.name, stage.kind, params),
                    sweep,
                    stage.name,
                    stage.kind,
                    params,
                    f"{rep.stage}#{rank} seed={seed}",
                    stage.priority,
                    stage.max_failures,
                    stage.max_interruptions,
                )
            )
    return jobs
