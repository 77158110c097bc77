"""Welch's t test and the t distribution's p-value of jobs/report/stats.py (plain Python), checked
against scipy where it is installed and against values printed in tables."""

from __future__ import annotations

import math

import pytest

from jobs.report.stats import holm, incomplete_beta, t_p_value, welch


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [(4.303, 2, 0.05), (2.776, 4, 0.05), (2.228, 10, 0.05), (1.96, math.inf, 0.05), (9.925, 2, 0.01)],
)
def test_t_p_values_match_the_printed_critical_values(t, df, p):
    assert t_p_value(t, df) == pytest.approx(p, abs=2e-4)


def test_t_p_values_and_the_incomplete_beta_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    for df in (1, 1.5, 2.2, 3, 7.9, 30, 200):
        for t in (0.0, 0.3, 1.0, 2.98, 5.0, 12.0):
            assert t_p_value(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-12), (t, df)
    for a, b, x in ((0.5, 0.5, 0.3), (2.0, 3.0, 0.9), (10.0, 0.5, 0.99), (1.1, 0.5, 0.01)):
        assert incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


def test_welch_gives_the_issues_example_within_noise():
    # issue 21: #1 (sd 0.04) against #3 (sd ~0.3) on 3 seeds each: t near 3 with about 2.2 degrees
    # of freedom, p near 0.09, which a 2-standard-error rule on the normal curve called "beyond noise"
    a = [0.8940, 0.8944, 0.8948]
    b = [0.8940, 0.8880, 0.8896]
    w = welch(a, b, fallback_sd=0.003)
    assert w.gap == pytest.approx(0.00387, abs=1e-4)
    assert 2.0 < w.df < 2.5 and 2.0 < w.t < 3.5
    assert 0.05 < w.p < 0.2 and not w.beyond, "with 2.2 degrees of freedom this gap cannot be told from noise"
    assert abs(w.gap) > 2 * w.se, "the old 2-SE rule would have called it beyond noise"
    stats = pytest.importorskip("scipy.stats")
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(ref.statistic) and w.p == pytest.approx(ref.pvalue)


def test_a_single_run_uses_the_test_set_error_as_a_known_spread():
    one = welch([0.90], [0.88], fallback_sd=0.0032)
    assert math.isinf(one.df) and one.se == pytest.approx(0.0032 * math.sqrt(2))
    assert one.beyond and "normal curve" in one.words()
    mixed = welch([0.90, 0.91, 0.89], [0.88], fallback_sd=0.0032)
    assert mixed.df > 2, "the known side adds variance, not degrees of freedom"


def test_holm_keeps_only_what_survives_the_correction():
    assert holm([0.001, 0.04, 0.03]) == [True, False, False]
    assert holm([0.001, 0.02, 0.01]) == [True, True, True]
    assert holm([0.2, 0.01]) == [False, True]
