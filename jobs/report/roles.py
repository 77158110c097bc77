"""Which stage of an assignment sweep answers which question, found by kind and content, not by name alone.

The report must work on grids that name their stages differently, add stages (seed repeats, a
second baseline) or lack some. Rules, in order, over the `train` stages:

* baseline: a stage whose name starts with "baseline" (Step 1). Of several, the one trained to the
  target is "the" Step 1 model; one with a fixed epoch count is shown beside it, labelled;
* diagnostics: a stage whose name mentions "diagnos" or "failure" (12d);
* repeats: a stage whose jobs were written as `{rank_of: {stage: S, ...}, seed: N}` (a `repeat:`
  stage), or whose every configuration (params without the seed) is one of stage S's, with other
  seeds: its jobs are extra seeds of S's configurations;
* grids: the rest. The architecture grid (12a) varies only conv/dense keys; the training grid
  (12b) varies init, batch size, learning rate or momentum. Names ("model", "train") break ties.

`prune` and `benchmark` stages are found by kind. What is missing becomes a one-line note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.report.md import ARCH_KEYS
from jobs.report.stats import SEED_KEY, config_key

TRAIN_KEYS = ("init", "batch_size", "lr", "momentum")


@dataclass
class Grid:
    """A search grid and the stages that repeat its configurations with more seeds."""

    stage: str
    repeats: list[str] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)  # done jobs of the grid stage itself (one seed each)
    repeat_jobs: list[Any] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the hyper-parameters it varies (flat names, no seed)

    @property
    def all_jobs(self) -> list[Any]:
        return [*self.jobs, *self.repeat_jobs]

    @property
    def stages(self) -> list[str]:
        return [self.stage, *self.repeats]


@dataclass
class Roles:
    baselines: list[Any] = field(default_factory=list)  # done baseline jobs
    model_grid: Grid | None = None
    train_grid: Grid | None = None
    diagnostics: list[str] = field(default_factory=list)
    prune: list[str] = field(default_factory=list)
    benchmark: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Any | None:
        """The Step 1 model: trained to the target if such a baseline exists, else the first."""
        to_target = [j for j in self.baselines if j.params.get("stop_at_target", True)]
        return (to_target or self.baselines or [None])[0]

    @property
    def reference(self) -> Any | None:
        """What the failure-mode runs are compared with: a baseline trained a fixed number of epochs."""
        fixed = [j for j in self.baselines if not j.params.get("stop_at_target", True)]
        return (fixed or self.baselines or [None])[0]

    @property
    def target_text(self) -> str:
        """The train-accuracy target the runs were timed to ("90%"), from the baseline or the first grid run."""
        jobs = [*self.baselines, *(j for g in self.grids for j in g.jobs)]
        value = next((j.params.get("target_train_acc") for j in jobs if j.params.get("target_train_acc")), 0.9)
        return f"{100 * float(value):g}%"

    @property
    def grids(self) -> list[Grid]:
        return [g for g in (self.model_grid, self.train_grid) if g is not None]


def varying(jobs: list[Any]) -> list[str]:
    """Flat param keys whose value differs between jobs, first-seen order, seed left out."""
    flats = [j.flat_params() for j in jobs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if k != SEED_KEY and len({repr(f.get(k)) for f in flats}) > 1]


def _repeat_source(view: Any, stage: str, others: list[str]) -> str | None:
    jobs = view.jobs(stage, status=None)
    for job in jobs:
        rank_of = job.params_written.get("rank_of")
        if isinstance(rank_of, dict) and isinstance(rank_of.get("stage"), str):
            return rank_of["stage"]
    done = view.jobs(stage)
    if not done:
        return None
    keys = {config_key(j.params) for j in done}
    for other in others:
        theirs = view.jobs(other)
        seeds = {repr(j.params.get(SEED_KEY)) for j in theirs}
        same_configs = keys <= {config_key(j.params) for j in theirs}
        if len(theirs) > len(done) and same_configs and all(repr(j.params.get(SEED_KEY)) not in seeds for j in done):
            return other
    return None


def find_roles(view: Any) -> Roles:
    roles = Roles()
    train = [s.name for s in view.stages if s.kind == "train"]
    rest: list[str] = []
    for name in train:
        low = name.lower()
        if low.startswith("baseline"):
            roles.baselines += view.jobs(name)
        elif "diagnos" in low or "failure" in low:
            roles.diagnostics.append(name)
        else:
            rest.append(name)
    repeats: dict[str, list[str]] = {}
    grids = []
    for name in rest:
        source = _repeat_source(view, name, [n for n in rest if n != name])
        if source is not None and source in rest:
            repeats.setdefault(source, []).append(name)
        else:
            grids.append(name)
    found = []
    for name in grids:
        jobs = view.jobs(name)
        grid = Grid(name, repeats.get(name, []), jobs, [j for r in repeats.get(name, []) for j in view.jobs(r)])
        grid.keys = varying(jobs)
        found.append(grid)

    def score(grid: Grid, arch: bool) -> tuple[int, int]:
        keys = set(grid.keys)
        wanted = set(ARCH_KEYS) if arch else set(TRAIN_KEYS)
        hint = ("model" if arch else "train") in grid.stage.lower()
        return (len(keys & wanted) - len(keys - wanted - set(ARCH_KEYS + TRAIN_KEYS)), int(hint))

    model = [g for g in found if set(g.keys) and set(g.keys) <= set(ARCH_KEYS)]
    model = model or [g for g in found if "model" in g.stage.lower()]
    if model:
        roles.model_grid = max(model, key=lambda g: score(g, True))
    others = [g for g in found if g is not roles.model_grid and set(g.keys) & set(TRAIN_KEYS)]
    others = others or [g for g in found if g is not roles.model_grid and "train" in g.stage.lower()]
    if others:
        roles.train_grid = max(others, key=lambda g: score(g, False))
    roles.prune = [s.name for s in view.stages if s.kind == "prune"]
    roles.benchmark = [s.name for s in view.stages if s.kind == "benchmark"]
    return roles
