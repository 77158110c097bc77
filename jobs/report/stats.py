"""Small statistics for the assignment report: seeds, noise and intervals, in plain Python.

Everything a sentence of the report claims ("within noise", "clearly better") is decided here,
from numbers the jobs reported, so the rules are written once:

* a configuration is the params of a job without its `seed`; its jobs are its seeds;
* the spread of a configuration is the sample standard deviation over its seeds;
* two means are compared with Welch's t test (unequal variances): t = gap / sqrt(sd1²/n1 + sd2²/n2)
  with the Welch-Satterthwaite degrees of freedom, two-sided p from the t distribution (computed
  here, `t_p_value`). With n = 3 seeds a side has 2 degrees of freedom, so a gap needs t > 4.3 to
  reach p < 0.05: the test says "we cannot tell" far more often than a 2-standard-error rule on
  the normal curve would. A gap is beyond noise when p < 0.05. With a single seed on a side, the
  test-set standard error sqrt(p(1-p)/n_test) stands in for its missing spread, as a known
  variance (no degrees of freedom of its own);
* several tests of one table (one per hyper-parameter) are corrected with Holm's method, so the
  chance of any false "beyond noise" in the table stays at 5% (`holm`);
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


ALPHA = 0.05  # a gap is beyond noise when a two-sided test gives p below this


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            last = d * c
        if abs(last - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_p_value(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with df degrees of freedom (df = inf: the normal curve)."""
    if not math.isfinite(t):
        return 0.0
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class Test:
    """Welch's t test of mean(a) − mean(b)."""

    gap: float
    se: float
    df: float  # Welch-Satterthwaite; inf when both spreads are known (single runs on the test-set error)
    t: float
    p: float
    n_a: int
    n_b: int

    @property
    def beyond(self) -> bool:
        return self.p < ALPHA

    def words(self) -> str:
        """'t = 2.98, 2.2 degrees of freedom, p = 0.09'."""
        df = "normal curve" if math.isinf(self.df) else f"{self.df:.1f} degrees of freedom"
        p = "p < 0.001" if self.p < 0.001 else f"p = {self.p:.3f}" if self.p < 0.01 else f"p = {self.p:.2f}"
        return f"Welch's t = {self.t:.2f}, {df}, {p}"


def welch(a: Sequence[float], b: Sequence[float], fallback_sd: float) -> Test:
    """Welch's t test of mean(a) − mean(b). A side with one value takes `fallback_sd` as a known
    spread (it adds to the standard error but has no degrees of freedom to add)."""
    gap = mean(a) - mean(b)
    terms, dfs = [], []
    for side in (a, b):
        sd = std(side) if len(side) > 1 else None
        var = (sd if sd is not None else fallback_sd) ** 2 / len(side)
        terms.append(var)
        dfs.append(len(side) - 1 if sd is not None else math.inf)
    se = math.sqrt(sum(terms))
    if se == 0.0:
        return Test(gap, 0.0, math.inf, math.inf if gap else 0.0, 0.0 if gap else 1.0, len(a), len(b))
    denom = sum(v * v / d for v, d in zip(terms, dfs, strict=True) if math.isfinite(d) and d > 0)
    df = sum(terms) ** 2 / denom if denom > 0 else math.inf
    t = gap / se
    return Test(gap, se, df, t, t_p_value(t, df), len(a), len(b))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Which of several tests stay significant under Holm's step-down correction (family-wise alpha)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    keep = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] >= alpha / (len(p_values) - rank):
            break
        keep[i] = True
    return keep


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

    def test(self, fallback_sd: float) -> Test:
        """Welch's t of the best value's runs against the worst's. The runs of a value differ in the
        other hyper-parameters too, so their spread overstates seed noise: the test is conservative."""
        return welch(self.best.values, self.worst.values, fallback_sd)


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
