"""Small statistics for the assignment report: seeds, noise and intervals, in plain Python.

Everything a sentence of the report claims ("within noise", "clearly better") is decided here,
from numbers the jobs reported, so the rules are written once:

* a configuration is the params of a job without its `seed`; its jobs are its seeds;
* the spread of a configuration is the sample standard deviation over its seeds;
* two means differ beyond noise when the gap exceeds 2 standard errors of the difference
  (sqrt(sd1²/n1 + sd2²/n2)); with a single seed on either side, the test-set standard error
  sqrt(p(1-p)/n_test) stands in for the missing spread (about 0.32 points at 10,000 images);
* an accuracy's 95% interval over the test set is the Wilson score interval, which stays inside
  [0, 1] and is accurate near 0 and 1, unlike the normal approximation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SEED_KEY = "seed"
Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); None with fewer than 2 values."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def accuracy_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n test images (binomial)."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion p observed over n trials."""
    if n <= 0:
        return (float("nan"), float("nan"))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def config_key(params: Mapping[str, Any]) -> str:
    """What makes two jobs the same configuration: every param but the seed (as sweeper's hand-off does)."""
    return json.dumps({k: v for k, v in params.items() if k != SEED_KEY}, sort_keys=True, default=str)


@dataclass
class Config:
    """The finished jobs of one configuration, one per seed, in queue order."""

    jobs: list[Any] = field(default_factory=list)  # JobRecords
    metric: str = "test_accuracy"

    @property
    def first(self) -> Any:
        return self.jobs[0]

    @property
    def values(self) -> list[float]:
        return [v for j in self.jobs if (v := number(j.result.get(self.metric))) is not None]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        vals = self.values
        return mean(vals) if vals else None

    @property
    def std(self) -> float | None:
        return std(self.values)

    @property
    def seeds(self) -> list[Any]:
        return [j.params.get(SEED_KEY) for j in self.jobs]

    def mean_of(self, key: str) -> float | None:
        vals = [v for j in self.jobs if (v := number(j.result.get(key))) is not None]
        return mean(vals) if vals else None


def group_configs(jobs: Iterable[Any], metric: str = "test_accuracy") -> list[Config]:
    """Jobs grouped by configuration, best mean first; ties (and configs without a value) in queue order.

    A seed that ran twice (the same params in two stages) counts once, as its first job.
    """
    groups: dict[str, Config] = {}
    seen: set[tuple[str, str]] = set()
    for job in jobs:
        key = config_key(job.params)
        seed = json.dumps(job.params.get(SEED_KEY), default=str)
        if (key, seed) in seen:
            continue
        seen.add((key, seed))
        groups.setdefault(key, Config(metric=metric)).jobs.append(job)
    configs = list(groups.values())
    return sorted(configs, key=lambda c: (c.mean is None, -(c.mean or 0.0), c.first.position))


def diff_se(a: Sequence[float], b: Sequence[float], fallback_sd: float) -> float:
    """Standard error of mean(a) - mean(b); a side with one value uses `fallback_sd` as its spread."""
    sa = std(a) if len(a) > 1 else fallback_sd
    sb = std(b) if len(b) > 1 else fallback_sd
    return math.sqrt((sa or 0.0) ** 2 / len(a) + (sb or 0.0) ** 2 / len(b))


def beyond_noise(gap: float, se: float, k: float = 2.0) -> bool:
    return abs(gap) > k * se


@dataclass
class Marginal:
    """Test accuracy of every job of a grid that used one value of one hyper-parameter."""

    key: str
    value: Any
    values: list[float]
    rows: list[int] = field(default_factory=list)  # which runs (their index in the grid) used the value

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float | None:
        return std(self.values)


@dataclass
class Effect:
    """A hyper-parameter's marginal effect: its best and worst value, and whether the gap is beyond noise."""

    key: str
    levels: list[Marginal]  # in the order the values first appear

    @property
    def best(self) -> Marginal:
        return max(self.levels, key=lambda m: m.mean)

    @property
    def worst(self) -> Marginal:
        return min(self.levels, key=lambda m: m.mean)

    @property
    def gap(self) -> float:
        return self.best.mean - self.worst.mean

    def se(self, fallback_sd: float) -> float:
        return diff_se(self.best.values, self.worst.values, fallback_sd)


def marginal_effects(rows: Iterable[tuple[Mapping[str, Any], float]], keys: Sequence[str]) -> list[Effect]:
    """For each key: the metric grouped by the key's value; strongest gap first.

    `rows` are (flat params, metric) pairs of one grid, so every value of a key is averaged over
    the same combinations of the other keys (a full grid is balanced).
    """
    rows = list(rows)
    effects = []
    for key in keys:
        by_value: dict[str, Marginal] = {}
        for i, (flat, metric) in enumerate(rows):
            value = flat.get(key)
            level = by_value.setdefault(json.dumps(value, default=str), Marginal(key, value, []))
            level.values.append(metric)
            level.rows.append(i)
        if len(by_value) > 1:
            effects.append(Effect(key, list(by_value.values())))
    return sorted(effects, key=lambda e: -e.gap)
