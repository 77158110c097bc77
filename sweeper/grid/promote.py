"""Promote stages and the `halving:` shorthand: successive halving as plain dependent stages.

A `promote:` stage takes the `top` jobs of another stage by a metric and trains each further, to
`max_epochs`, continuing from that job's final checkpoint::

    rung1:
      promote: {stage: rung0, top: 24, by: val_accuracy, mode: max, max_epochs: 3}

It expands to `top` blocked jobs whose params are `{rank_of: {..., continue: true}, max_epochs}`;
when the upstream stage settles, each resolves (in that transaction, from the database, ties to
queue order: handoff.py) to the params of the configuration at its rank, with `max_epochs` set and
`continue_from: JOB` naming the job whose checkpoint it continues. So the choice never depends on
which worker finished first, and a kill anywhere changes nothing.

`halving: {by, mode, eta, epochs: [1, 3, 9]}` on an ordinary stage writes the rungs for you: the
stage itself trains every configuration to `epochs[0]`, and stages `NAME_rung1`, `NAME_rung2`, ...
each keep 1/eta of the one before (at least one job) and train them to the next number of epochs.

This module is pure: it reads and rewrites the grid file's mappings; spec.py does the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweeper.grid import handoff

PROMOTE_KEYS = ("stage", "top", "eta", "by", "mode", "max_epochs", "over_seeds")
HALVING_KEYS = ("by", "mode", "eta", "epochs", "over_seeds")
# A promote stage takes its kind and params from the stage it promotes from.
PROMOTE_EXCLUDES = ("kind", "params", "grid", "configs", "inherit", "repeat")
EPOCHS_KEY = "max_epochs"  # the param a promote raises; the kind must take it and CONTINUE_KEY
# Copied from a halving stage onto its rungs.
RUNG_INHERITS = ("priority", "max_failures", "max_interruptions", "description")


class PromoteProblem(ValueError):
    """What is wrong with a promote or halving mapping, and under which key."""

    def __init__(self, message: str, key: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.key, self.hint = message, key, hint


@dataclass(frozen=True)
class Promote:
    """`promote:` of a stage: the best `top` (or 1/eta) of `stage` by `by`, trained on to `max_epochs`."""

    stage: str
    by: str
    mode: str
    max_epochs: int
    top: int | None = None  # one of top and eta is set
    eta: int | None = None
    over_seeds: str = "none"

    def count(self, upstream_jobs: int) -> int:
        """How many jobs this rung promotes out of the upstream stage's."""
        return self.top if self.top is not None else max(1, upstream_jobs // (self.eta or 1))

    def to_json(self) -> dict[str, Any]:
        out = {"stage": self.stage, "by": self.by, "mode": self.mode, "max_epochs": self.max_epochs}
        out.update({"top": self.top} if self.top is not None else {"eta": self.eta})
        return {**out, "over_seeds": self.over_seeds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Promote:
        top, eta = data.get("top"), data.get("eta")
        return cls(
            str(data["stage"]),
            str(data["by"]),
            str(data.get("mode", "max")),
            int(data["max_epochs"]),
            None if top is None else int(top),
            None if eta is None else int(eta),
            str(data.get("over_seeds", "none")),
        )


def _positive(value: Any, key: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise PromoteProblem(f"promote '{key}' must be {what}, not {value!r}", key)
    return value


def parse_promote(value: Any) -> Promote:
    """A Promote from its mapping; PromoteProblem naming the key otherwise (stages are checked by spec.py)."""
    if not isinstance(value, Mapping):
        raise PromoteProblem(
            "'promote' takes a mapping",
            "",
            "for example: promote: {stage: rung0, top: 3, by: val_accuracy, mode: max, max_epochs: 3}",
        )
    extra = [k for k in value if k not in PROMOTE_KEYS]
    if extra:
        raise PromoteProblem(
            f"unknown promote key '{extra[0]}'", str(extra[0]), f"allowed keys: {', '.join(PROMOTE_KEYS)}"
        )
    source = value.get("stage")
    if not isinstance(source, str) or not source:
        raise PromoteProblem(f"promote 'stage' must name the stage to promote from, not {source!r}", "stage")
    by = value.get("by")
    if not isinstance(by, str) or not by:
        raise PromoteProblem(
            f"promote 'by' must name a metric of {source}'s results, not {by!r}", "by", "for example: by: val_accuracy"
        )
    mode = value.get("mode", "max")
    if mode not in handoff.MODES:
        raise PromoteProblem(f"promote 'mode' must be 'max' or 'min', not {mode!r}", "mode")
    over_seeds = value.get("over_seeds", "none")
    if over_seeds not in handoff.OVER_SEEDS:
        raise PromoteProblem(f"promote 'over_seeds' must be 'mean' or 'none', not {over_seeds!r}", "over_seeds")
    if ("top" in value) == ("eta" in value):
        raise PromoteProblem(
            "promote takes one of 'top' (how many jobs) and 'eta' (keep 1/eta of them)", "top", "for example: top: 3"
        )
    top = _positive(value["top"], "top", "a positive integer") if "top" in value else None
    eta = _positive(value["eta"], "eta", "an integer of at least 2") if "eta" in value else None
    if eta is not None and eta < 2:
        raise PromoteProblem(f"promote 'eta' must be an integer of at least 2, not {eta!r}", "eta")
    if EPOCHS_KEY not in value:
        raise PromoteProblem("promote needs 'max_epochs': how far to train the promoted jobs", "max_epochs")
    max_epochs = _positive(value[EPOCHS_KEY], "max_epochs", "a positive integer")
    return Promote(source, by, mode, max_epochs, top, eta, over_seeds)


def rung_name(stage: str, rung: int) -> str:
    return stage if rung == 0 else f"{stage}_rung{rung}"


def expand_halving(name: str, raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The stages a `halving:` stage stands for, in order: the stage at epochs[0], then one promote per rung."""
    spec = raw["halving"]
    if not isinstance(spec, Mapping):
        raise PromoteProblem(
            "'halving' takes a mapping",
            "",
            "for example: halving: {by: val_accuracy, mode: max, eta: 3, epochs: [1, 3, 9]}",
        )
    extra = [k for k in spec if k not in HALVING_KEYS]
    if extra:
        raise PromoteProblem(
            f"unknown halving key '{extra[0]}'", str(extra[0]), f"allowed keys: {', '.join(HALVING_KEYS)}"
        )
    epochs = spec.get("epochs")
    if (
        not isinstance(epochs, list)
        or len(epochs) < 2
        or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in epochs)
        or any(b <= a for a, b in itertools.pairwise(epochs))
    ):
        raise PromoteProblem(
            f"halving 'epochs' must be a rising list of at least two epoch counts, not {epochs!r}",
            "epochs",
            "for example: epochs: [1, 3, 9]",
        )
    for key in ("by", "eta"):
        if key not in spec:
            raise PromoteProblem(
                f"halving needs '{key}'", key, "for example: halving: {by: val_accuracy, eta: 3, epochs: [1, 3, 9]}"
            )
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise PromoteProblem("'params' must be a mapping", "params")
    base = {k: v for k, v in raw.items() if k != "halving"}
    base["params"] = {**params, EPOCHS_KEY: epochs[0]}
    out: dict[str, dict[str, Any]] = {name: base}
    for rung, max_epochs in enumerate(epochs[1:], start=1):
        promote = {k: spec[k] for k in ("by", "mode", "eta", "over_seeds") if k in spec}
        promote.update(stage=rung_name(name, rung - 1), max_epochs=max_epochs)
        out[rung_name(name, rung)] = {"promote": promote, **{k: raw[k] for k in RUNG_INHERITS if k in raw}}
    return out
