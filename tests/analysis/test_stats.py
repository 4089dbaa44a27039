"""The statistics against hand computations and scipy, on small synthetic samples with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import stats

from .conftest import runs_frame

T5 = np.array([3.0, 5.0, 5.0, 8.0, 10.0])
S5 = np.array([True, True, False, True, False])  # runs 3 and 5 never solved: censored at 5 and 10


def test_iqm_is_the_mean_of_the_middle_half():
    x = np.arange(1.0, 11.0)  # n=10: int(2.5)=2 cut from each end -> mean of 3..8
    assert stats.iqm(x) == pytest.approx(np.mean(np.arange(3.0, 9.0)))
    y = np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -50.0])  # n=8: cut 2 each side -> 2..5
    assert stats.iqm(y) == pytest.approx(3.5)


def test_solve_times_censor_unsolved_runs_at_their_episode_count():
    runs = runs_frame({"a": [12, None, 7]}, budget=40)
    t, solved = stats.solve_times(runs)
    np.testing.assert_array_equal(t, [12, 40, 7])
    np.testing.assert_array_equal(solved, [True, False, True])


def test_kaplan_meier_matches_a_hand_computation():
    km = stats.kaplan_meier(T5, S5)
    # at risk 5, 4, 2, 1 at episodes 3, 5, 8, 10; S = 4/5, then *3/4, then *1/2
    assert km["episode"].tolist() == [0, 3, 5, 8, 10]
    assert km["at_risk"].tolist() == [5, 5, 4, 2, 1]
    np.testing.assert_allclose(km["fraction_solved"], [0, 0.2, 0.4, 0.7, 0.7])
    assert km["solved_here"].tolist() == [0, 1, 1, 1, 0]
    assert km["censored_here"].tolist() == [0, 0, 1, 0, 1]
    # log-log (exponential Greenwood) band at episode 3 by hand: S=0.8, sum d/(n(n-d)) = 1/20
    v = (1 / 20) / math.log(0.8) ** 2
    z = sps.norm.ppf(0.975)
    s_lo, s_hi = 0.8 ** math.exp(z * math.sqrt(v)), 0.8 ** math.exp(-z * math.sqrt(v))
    assert km.loc[1, "lo"] == pytest.approx(1 - s_hi) and km.loc[1, "hi"] == pytest.approx(1 - s_lo)
    # KM median: first episode with F >= 1/2 is 8; upper band reaches 1/2 at 3; lower band never
    assert stats.km_median(km) == (8.0, 3.0, math.inf)


def test_kaplan_meier_without_censoring_is_the_empirical_cdf():
    t = np.array([4.0, 2.0, 9.0, 2.0])
    km = stats.kaplan_meier(t, np.ones(4, bool))
    np.testing.assert_allclose(km["fraction_solved"], [0, 0.5, 0.75, 1.0])
    assert stats.km_median(km)[0] == 2.0
    assert (km["lo"] <= km["fraction_solved"]).all() and (km["hi"] >= km["fraction_solved"]).all()


def test_kaplan_meier_all_censored_solves_nothing_and_has_no_median():
    km = stats.kaplan_meier(np.array([50.0, 50.0, 30.0]), np.zeros(3, bool))
    assert (km["fraction_solved"] == 0).all()
    assert stats.km_median(km) == (math.inf, math.inf, math.inf)


def test_logrank_matches_scipy_and_is_nan_without_any_solve():
    ta, sa = np.array([3.0, 4.0, 6.0, 9.0]), np.array([True, True, True, False])
    tb, sb = np.array([7.0, 8.0, 12.0, 12.0]), np.array([True, True, False, False])
    expected = sps.logrank(sps.CensoredData.right_censored(ta, ~sa), sps.CensoredData.right_censored(tb, ~sb))
    assert stats.logrank(ta, sa, tb, sb) == pytest.approx((expected.statistic, expected.pvalue))
    none = np.zeros(2, bool)
    assert all(map(math.isnan, stats.logrank(np.array([5.0, 5]), none, np.array([5.0, 5]), none)))


def test_prob_improvement_by_hand_with_censoring():
    ta, sa = np.array([2.0, 5.0, 10.0]), np.array([True, True, False])
    tb, sb = np.array([3.0, 5.0, 6.0]), np.array([True, True, False])
    w = stats.win_matrix(ta, sa, tb, sb)
    expected = np.array(
        [
            [1, 1, 1],  # solved at 2 beats all, including the run censored at 6
            [0, 0.5, 1],  # solved at 5: loses to 3, ties 5, beats censored-at-6
            [0, 0, 0.5],
        ]
    )  # censored at 10: loses to both solved runs, ties censored
    np.testing.assert_array_equal(w, expected)
    assert stats.prob_improvement(ta, sa, tb, sb) == pytest.approx(5 / 9)
    # solved at 7 against a run censored at 6: order unknown -> 1/2; solved at 6 vs censored at 6 -> 1
    assert stats.win_matrix(
        np.array([7.0, 6.0]), np.array([True, True]), np.array([6.0]), np.array([False])
    ).ravel().tolist() == [0.5, 1.0]
    assert stats.prob_improvement(tb, sb, ta, sa) == pytest.approx(1 - 5 / 9)


def test_prob_improvement_without_censoring_is_mann_whitney():
    rng = np.random.default_rng(3)
    ta, tb = rng.integers(10, 40, 9).astype(float), rng.integers(15, 45, 7).astype(float)
    u = sps.mannwhitneyu(ta, tb).statistic  # U of A: pairs with a > b, ties 1/2
    assert stats.prob_improvement(ta, np.ones(9, bool), tb, np.ones(7, bool)) == pytest.approx(
        1 - u / (9 * 7)
    )


def test_prob_improvement_ci_is_seeded_bounded_and_degenerate_when_all_tie():
    rng = np.random.default_rng(0)
    ta, tb = rng.normal(50, 10, 10), rng.normal(60, 10, 10)
    s = np.ones(10, bool)
    ci = stats.prob_improvement_ci(ta, s, tb, s, seed=1)
    assert ci == stats.prob_improvement_ci(ta, s, tb, s, seed=1)
    assert 0 <= ci[0] <= stats.prob_improvement(ta, s, tb, s) <= ci[1] <= 1
    none = np.zeros(4, bool)
    assert stats.prob_improvement_ci(np.full(4, 9.0), none, np.full(4, 9.0), none) == (0.5, 0.5)


def test_bootstrap_ci_is_scipys_and_handles_tiny_or_constant_samples():
    x = np.array([12.0, 15, 9, 30, 22, 18, 14, 11, 25, 16])
    expected = sps.bootstrap(
        (x,), np.median, n_resamples=1000, method="percentile", vectorized=True, rng=np.random.default_rng(7)
    ).confidence_interval
    got = stats.bootstrap_ci((x,), stats.median, n_resamples=1000, method="percentile", seed=7)
    assert got == pytest.approx((expected.low, expected.high))
    assert all(map(math.isnan, stats.bootstrap_ci((np.array([3.0]),), stats.median)))
    for method in ("percentile", "BCa", "basic", "expanded-percentile"):
        assert stats.bootstrap_ci((np.full(6, 4.0),), stats.median, method=method) == (4.0, 4.0)


def test_expanded_percentile_widens_small_samples_only():
    # n=10: z = sqrt(10/9) * t_0.975(9) = 1.0541 * 2.2622 = 2.3846 -> 2 * Phi(2.3846) - 1 = 0.9829
    assert stats.expanded_confidence(0.95, 10) == pytest.approx(0.9829, abs=1e-4)
    assert 0.95 < stats.expanded_confidence(0.95, 10_000) < 0.9502
    x = np.random.default_rng(0).normal(size=10)
    wide = stats.bootstrap_ci((x,), stats.median, method="expanded-percentile", seed=1)
    plain = stats.bootstrap_ci((x,), stats.median, method="percentile", confidence=0.9829, seed=1)
    assert wide == plain


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.20 -> 4*0.01, 3*0.03, max(0.09, 2*0.04), max(0.09, 0.20)
    got = stats.holm([0.01, 0.04, 0.03, 0.20])
    np.testing.assert_allclose(got, [0.04, 0.09, 0.09, 0.20])
    got = stats.holm([0.5, np.nan, 0.4])  # NaN is not counted as a test
    np.testing.assert_allclose(got, [0.8, np.nan, 0.8])
    assert stats.holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # 2*0.8 capped at 1 and stats.holm([]).size == 0


def test_summarize_flags_lower_bounds_and_keeps_all_censored_arms():
    runs = runs_frame({"fast": [10, 12, 14, 16, 18, 20], "never": [None] * 4}, budget=100)
    s = stats.summarize(runs, n_resamples=500).set_index("algo")
    assert s.index.tolist() == ["fast", "never"]  # fastest first
    fast, never = s.loc["fast"], s.loc["never"]
    assert (fast["runs"], fast["solved"], fast["censored"], fast["lower_bound"]) == (6, 6, 0, False)
    assert fast["median"] == 15 and fast["iqm"] == pytest.approx(15)  # middle of 10..20 (int(1.5)=1 cut)
    assert fast["median_lo"] <= 15 <= fast["median_hi"] and fast["km_median"] == 14
    assert (never["solved"], never["censored"], never["lower_bound"]) == (0, 4, True)
    assert never["median"] == 100 and math.isinf(never["km_median"])  # a lower bound, not a value


def _row(pairs: pd.DataFrame, a: str, b: str) -> dict:
    return pairs[(pairs["a"] == a) & (pairs["b"] == b)].iloc[0].to_dict()


def test_compare_claims_a_clear_difference_with_its_figures():
    runs = runs_frame({"slow": list(range(50, 60)), "fast": list(range(10, 20))})
    r = _row(stats.compare(runs, n_resamples=500), "fast", "slow")
    assert r["p_a_faster"] == 1 and (r["p_lo"], r["p_hi"]) == (1, 1)
    assert r["logrank_p_holm"] < 0.001 and r["paired_n"] == 10 and r["wilcoxon_p"] < 0.01
    assert r["warnings"].startswith("P(improvement) CI is a point (every resample agrees)")
    assert r["verdict"].startswith("fast solves in fewer episodes than slow: P = 1.00 [1.00, 1.00]")


def test_compare_on_equal_arms_and_few_seeds_says_so():
    same = runs_frame({"a": [20, 30, 40, 50, 60, 70], "b": [25, 35, 45, 55, 65, 75]})
    r = stats.compare(same, n_resamples=500).iloc[0]
    assert r["verdict"].startswith("no clear difference between")
    assert "P(improvement) CI includes 0.5" in r["warnings"] and "median CIs overlap" in r["warnings"]
    few = stats.compare(runs_frame({"a": [10, 11, 12], "b": [90, 91, 92]}), n_resamples=500).iloc[0]
    assert "fewer than 5 seeds (a: 3, b: 3)" in few["warnings"]


def test_compare_handles_censored_arms_and_holm_over_all_pairs():
    runs = runs_frame({"x": [10, 12, 14, 16, 18], "y": [None] * 5, "z": [None] * 5}, budget=50)
    pairs = stats.compare(runs, n_resamples=500)
    assert len(pairs) == 3
    xy, yz = _row(pairs, "x", "y"), pairs[pairs["a"].isin(["y", "z"]) & pairs["b"].isin(["y", "z"])].iloc[0]
    assert xy["p_a_faster"] == 1 and xy["verdict"].startswith("x solves in fewer episodes than y")
    assert yz["p_a_faster"] == 0.5 and math.isnan(yz["logrank_p"])
    assert "no run of either solved" in yz["warnings"]
    np.testing.assert_allclose(pairs["logrank_p_holm"], stats.holm(pairs["logrank_p"]))
    np.testing.assert_allclose(pairs["mannwhitney_p_holm"], stats.holm(pairs["mannwhitney_p"]))


def test_paired_seeds_keeps_seeds_run_once_by_both():
    a = runs_frame({"a": [10, 20, 30, 40]})
    b = runs_frame({"b": [11, 21, None]}, budget=99)
    b = pd.concat([b, b.iloc[[0]]])  # seed 0 twice in b: ambiguous, dropped
    xa, xb = stats.paired_seeds(a, b)
    np.testing.assert_array_equal(xa, [20, 30]) and np.testing.assert_array_equal(xb, [21, 99])


def test_improvement_matrix_is_complementary():
    pairs = pd.DataFrame({"a": ["p"], "b": ["q"], "p_a_faster": [0.8]})
    m = stats.improvement_matrix(pairs, ["p", "q"])
    assert m.loc["p", "q"] == 0.8 and m.loc["q", "p"] == pytest.approx(0.2) and np.isnan(m.loc["p", "p"])


def test_learning_curve_keeps_episodes_reached_by_enough_runs():
    ep = pd.DataFrame(
        {
            "run_id": ["r1"] * 2 + ["r2"] * 4 + ["r3"] * 4,
            "algo": "a",
            "episode": [1, 2, 1, 2, 3, 4, 1, 2, 3, 4],
            "return": [10.0, 20, 12, 22, 30, 40, 14, 24, 34, 44],
        }
    )
    curve = stats.learning_curve(ep, min_frac=0.5)  # need ceil(1.5) = 2 runs
    assert curve["episode"].tolist() == [1, 2, 3, 4] and curve["n"].tolist() == [3, 3, 2, 2]
    assert curve["mean"].tolist() == pytest.approx([12, 22, 32, 42])
    half = sps.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)  # episode 1: sd of 10, 12, 14 is 2
    assert curve.loc[0, "hi"] - 12 == pytest.approx(half)
    assert stats.learning_curve(ep, min_frac=1.0)["episode"].tolist() == [1, 2]
