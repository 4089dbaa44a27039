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


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.20 -> 4*0.01, 3*0.03, max(0.09, 2*0.04), max(0.09, 0.20)
    got = stats.holm([0.01, 0.04, 0.03, 0.20])
    np.testing.assert_allclose(got, [0.04, 0.09, 0.09, 0.20])
    got = stats.holm([0.5, np.nan, 0.4])  # NaN is not counted as a test
    np.testing.assert_allclose(got, [0.8, np.nan, 0.8])
    assert stats.holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # 2*0.8 capped at 1 and stats.holm([]).size == 0


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
    # the band: a bootstrap over runs, inside the returns observed (a t-interval at 3 runs, 12 +- 4.97,
    # would leave them: 7.0 and 17.0 are returns no run had)
    assert (curve["lo"] >= [10, 20, 30, 40]).all() and (curve["hi"] <= [14, 24, 34, 44]).all()
    assert (curve["lo"] < curve["mean"]).all() and (curve["hi"] > curve["mean"]).all()
    assert curve.loc[0, "hi"] - 12 < sps.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)
    assert stats.learning_curve(ep, min_frac=1.0)["episode"].tolist() == [1, 2]


def test_learning_curve_against_env_steps_holds_each_run_at_its_last_episode_until_it_stops():
    ep = pd.DataFrame(
        {
            "run_id": ["r1"] * 2 + ["r2"] * 2,
            "algo": "a",
            "episode": [1, 2, 1, 2],
            "env_step": [10.0, 40, 20, 30],
            "return": [1.0, 5, 3, 7],
        }
    )
    curve = stats.learning_curve(ep, x="env_step", points=4, min_frac=0.5)  # steps 10, 20, 30, 40
    assert curve["env_step"].tolist() == [10, 20, 30, 40]
    assert curve["n"].tolist() == [1, 2, 2, 1]  # r2 has ended no episode by 10 and has stopped by 40
    assert curve["mean"].tolist() == pytest.approx([1, 2, 4, 5])  # at 30: r1's 1 and r2's 7
    assert curve["lo"].isna().tolist() == [True, False, False, True]  # one run: no band
    assert stats.learning_curve(ep.assign(env_step=np.nan), x="env_step").empty  # not recorded


def test_bootstrap_band_is_seeded_and_inside_the_values():
    rng = np.random.default_rng(1)
    values = np.where(rng.random((50, 6)) < 0.2, np.nan, rng.normal(100, 30, (50, 6)))
    lo, hi = stats.bootstrap_mean_ci(values, seed=3)
    again = stats.bootstrap_mean_ci(values, seed=3)
    assert np.array_equal(lo, again[0], equal_nan=True) and np.array_equal(hi, again[1], equal_nan=True)
    ok = np.sum(~np.isnan(values), axis=1) >= 2
    assert (lo[ok] >= np.nanmin(values[ok], axis=1)).all() and (hi[ok] <= np.nanmax(values[ok], axis=1)).all()
    assert (lo[ok] <= np.nanmean(values[ok], axis=1)).all() and (hi[ok] >= np.nanmean(values[ok], axis=1)).all()


def test_kaplan_meier_matches_a_hand_computation_with_an_exact_binomial_band():
    km = stats.kaplan_meier(T5, S5)
    # at risk 5, 4, 2, 1 at episodes 3, 5, 8, 10; S = 4/5, then *3/4, then *1/2
    assert km["episode"].tolist() == [0, 3, 5, 8, 10]
    assert km["at_risk"].tolist() == [5, 5, 4, 2, 1]
    np.testing.assert_allclose(km["fraction_solved"], [0, 0.2, 0.4, 0.7, 0.7])
    assert km["solved_here"].tolist() == [0, 1, 1, 1, 0]
    assert km["censored_here"].tolist() == [0, 0, 1, 0, 1]
    # no censoring before episode 5: Greenwood's effective n is 5 and the band is Clopper-Pearson
    np.testing.assert_allclose(km["n_eff"].iloc[:3], [5, 5, 5])
    cp = sps.binomtest(2, 5).proportion_ci(0.95, method="exact")
    assert km.loc[2, "lo"] == pytest.approx(cp.low) and km.loc[2, "hi"] == pytest.approx(cp.high)
    # after the censored run: Var = S^2 (1/20 + 1/12 + 1/2) and n_eff = F (1 - F) / Var
    v = 0.3**2 * (1 / 20 + 1 / 12 + 1 / 2)
    assert km.loc[3, "n_eff"] == pytest.approx(0.7 * 0.3 / v)


def test_kaplan_meier_band_has_no_interval_from_one_run():
    km = stats.kaplan_meier(np.array([7.0]), np.array([True]))
    assert km["fraction_solved"].tolist() == [0, 1] and km[["lo", "hi"]].isna().all().all()


def test_km_median_is_numpys_median_without_censoring():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5, 6, 9, 10, 20):
        t = rng.integers(20, 60, n).astype(float)  # integer episodes: ties and even n included
        med = stats.km_median(t, np.ones(n, bool))
        assert med["median"] == pytest.approx(np.median(t)) and med["kind"] == "exact"


def test_km_median_interval_is_the_exact_order_statistic_one():
    x = np.array([31.0, 12, 45, 27, 19, 38, 22, 50, 15, 41])  # n=10: [x(2), x(9)], 97.9%
    med = stats.km_median(x, np.ones(10, bool))
    assert (med["lo"], med["hi"], med["level"]) == (15, 45, 0.95)
    five = stats.km_median(x[:5], np.ones(5, bool))  # no 95% interval: [min, max] at 1 - 2/32
    assert (five["lo"], five["hi"], five["level"]) == (12, 45, pytest.approx(0.9375))
    four = stats.km_median(x[:4], np.ones(4, bool))  # 4 runs cannot bound a median
    assert math.isnan(four["level"]) and math.isnan(four["lo"]) and math.isnan(four["hi"])
    assert all(math.isnan(v) for v in (stats.km_median(x[:1], np.ones(1, bool))[k] for k in ("lo", "hi")))


def test_km_median_beyond_the_budget_is_not_a_number():
    t, s = np.array([10.0, 20, 100, 100, 100]), np.array([True, True, False, False, False])
    med = stats.km_median(t, s)
    assert med["kind"] == "not reached" and med["median"] == 100 and math.isnan(med["hi"])
    flat = stats.km_median(np.array([10.0, 20, 100, 100]), np.array([True, True, False, False]))
    assert flat["kind"] == "lower bound" and flat["median"] == 20  # curve ends at exactly 1/2


def test_iqm_is_exact_while_the_censored_runs_are_trimmed():
    t = np.array([10.0, 12, 14, 16, 18, 20, 22, 100])  # n=8: 2 trimmed each side
    one = stats.iqm_ci(t, np.array([True] * 7 + [False]))
    assert one["exact"] and one["iqm"] == pytest.approx(17) and one["lo"] < 17
    assert math.isnan(one["hi"]) or one["hi"] > 17  # NaN: resamples with 3 censored runs leave it open
    three = stats.iqm_ci(t, np.array([True] * 5 + [False] * 3))
    assert not three["exact"] and math.isnan(three["hi"]) and three["lo"] < three["iqm"]
    early = stats.iqm_ci(t, np.array([False] + [True] * 7))  # censored at 10: could be anywhere
    assert not early["exact"]


def test_iqm_interval_is_seeded_and_contains_the_estimate():
    x = np.random.default_rng(1).lognormal(5, 0.5, 10)
    assert stats.trimmed_mean_ci(x, seed=3) == stats.trimmed_mean_ci(x, seed=3)
    lo, hi = stats.trimmed_mean_ci(x)
    assert lo < stats.iqm(x) < hi
    assert all(map(math.isnan, stats.trimmed_mean_ci(np.array([4.0, 5.0]))))


def test_newcombe_interval_by_hand_and_never_a_point():
    lo, hi = stats.newcombe_ci(1.0, 5, 5)
    # at the lower end 1 - theta = z sqrt(V(theta)), N* = 4
    v = lo * (1 - lo) / 25 * (1 + 4 * ((1 - lo) / (2 - lo) + lo / (1 + lo)))
    assert hi == 1 and 1 - lo == pytest.approx(sps.norm.ppf(0.975) * math.sqrt(v))
    assert 0.5 < lo < 0.9
    a, b = stats.newcombe_ci(0.3, 8, 6)
    c, d = stats.newcombe_ci(0.7, 6, 8)
    assert (a, b) == pytest.approx((1 - d, 1 - c))
    assert all(map(math.isnan, stats.newcombe_ci(1.0, 1, 5)))


def test_permutation_tests_by_enumeration():
    ta, tb = np.array([10.0, 11, 12]), np.array([20.0, 21, 22])
    s = np.ones(3, bool)
    gehan, logrank = stats.pair_tests(ta, s, tb, s)
    assert gehan == pytest.approx(2 / 20) and logrank == pytest.approx(2 / 20)  # 2 extreme splits of 20
    mixed = stats.pair_tests(np.array([10.0, 21, 12]), s, np.array([20.0, 11, 22]), s)
    assert mixed[0] > 0.3
    none = np.zeros(3, bool)
    assert all(map(math.isnan, stats.pair_tests(ta, none, tb, none)))


def test_gehan_scores_and_logrank_scores_by_hand():
    t, s = np.array([3.0, 5, 5, 8]), np.array([True, True, False, True])
    # wins minus losses: 3 beats all; 5 (solved) beats 8 and the run censored at 5, loses to 3;
    # censored at 5 loses to 3 and 5, its order with 8 is unknown; 8 loses to 3 and 5
    np.testing.assert_allclose(stats.gehan_scores(t, s), [3, 1, -2, -2])
    # Nelson-Aalen: 1/4 at 3, 1/3 at 5, 1/1 at 8
    np.testing.assert_allclose(
        stats.logrank_scores(t, s), [1 - 1 / 4, 1 - 1 / 4 - 1 / 3, -1 / 4 - 1 / 3, 1 - 1 / 4 - 1 / 3 - 1]
    )


def test_small_sample_tests_keep_their_level():
    """3-5 seeds a side, one distribution, 25% censored: rejections <= 5% + noise (seeded)."""
    rng = np.random.default_rng(11)
    rejections, trials = 0, 300
    for i in range(trials):
        n = 3 + i % 3
        x, y = np.round(rng.lognormal(5, 0.5, (2, n)))
        s_x, s_y = x <= 190, y <= 190
        p = stats.pair_tests(np.minimum(x, 190), s_x, np.minimum(y, 190), s_y)[0]
        rejections += p < 0.05
    assert rejections / trials <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / trials)


def test_different_budgets_do_not_make_a_difference():
    """One distribution, budgets 300 and 1000: on the common footing no claim (seeded simulation)."""
    rng = np.random.default_rng(5)
    claims = 0
    for i in range(40):
        x, y = np.round(rng.lognormal(math.log(400), 0.6, (2, 10)))
        runs = pd.concat(
            [runs_frame({"a": [v if v <= 300 else None for v in x]}, budget=300),
             runs_frame({"b": [v if v <= 1000 else None for v in y]}, budget=1000)]
        ).assign(budget=[300] * 10 + [1000] * 10)  # fmt: skip
        pairs = stats.compare(runs, n_permutations=500, seed=i)
        claims += "solves in fewer" in pairs["verdict"].iloc[0]
        assert pairs["horizon"].iloc[0] == 300
    assert claims <= 4  # 5% of 40 is 2; the old censored-as-observed Mann-Whitney claimed most


def test_common_footing_and_horizon():
    runs = runs_frame({"a": [50, None, 120]}, budget=150).assign(budget=150.0)
    assert stats.horizon(runs) == 150
    assert stats.horizon(runs_frame({"a": [5, None]}, budget=80)) == 80  # no budget: unsolved counts
    assert stats.horizon(runs_frame({"a": [5, 6]})) == math.inf
    t, s = stats.common_footing(np.array([50.0, 150, 120]), np.array([True, False, True]), 100)
    np.testing.assert_array_equal(t, [50, 100, 100]) and np.testing.assert_array_equal(
        s, [True, False, False]
    )


def test_failed_runs_count_as_censored_and_are_flagged():
    runs = runs_frame({"a": [10, 12, 14, 16, None]}, budget=100)
    runs.loc[4, ["status", "episodes"]] = ["FAILED", 7.0]
    runs["status"] = runs["status"].fillna("FINISHED")
    row = stats.summarize(runs).iloc[0]
    assert (row["runs"], row["failed"], row["censored"]) == (5, 1, 1)


def _episodes(returns: dict[str, list[float]], algo: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"run_id": rid, "algo": algo[rid], "episode": i + 1, "return": r}
            for rid, rs in returns.items()
            for i, r in enumerate(rs)
        ]
    )


def test_run_outcomes_final_return_and_auc_by_hand():
    runs = pd.DataFrame({"run_id": ["r1", "r2"], "param.solve.window": ["2", "2"]})
    ep = _episodes({"r1": [1.0, 2, 3, 4], "r2": [5.0, 7]}, {"r1": "a", "r2": "a"})
    out = stats.run_outcomes(runs, ep, auc_horizon=4).set_index("run_id")
    assert out.loc["r1", "final_return"] == 3.5 and out.loc["r1", "auc"] == 2.5
    assert out.loc["r2", "final_return"] == 6 and out.loc["r2", "auc"] == (5 + 7 + 6 + 6) / 4  # carried


def test_arms_that_never_solve_are_ranked_by_final_return_not_budget():
    runs = pd.concat(
        [runs_frame({"long": [None] * 3}, budget=500), runs_frame({"short": [None] * 3}, budget=100)]
    )
    returns = {f"long-{i}": [10.0] * 5 for i in range(3)} | {f"short-{i}": [90.0] * 5 for i in range(3)}
    ep = _episodes(returns, {k: k.split("-")[0] for k in returns})
    s = stats.summarize(runs, episodes=ep)
    assert s["algo"].tolist() == ["short", "long"] and s["final_return"].tolist() == [90, 10]
    pairs = stats.compare(runs, episodes=ep, summary=s)
    assert pairs["verdict"].iloc[0].startswith("neither short nor long solved by episode 100")
    assert "final return short 90.0" in pairs["verdict"].iloc[0]


def test_budget_shorter_than_the_window_is_flagged():
    runs = runs_frame({"a": [None] * 3}, budget=50).assign(**{"param.solve.window": "100", "budget": 50.0})
    assert stats.summarize(runs).iloc[0]["cannot_solve"] == 3


def test_compare_claims_a_clear_difference_with_its_figures():
    runs = runs_frame({"slow": list(range(50, 60)), "fast": list(range(10, 20))})
    r = _row(stats.compare(runs, n_permutations=500), "fast", "slow")
    assert r["p_a_faster"] == 1 and 0.5 < r["p_lo"] < 1 and r["p_hi"] == 1  # not a point
    assert r["gehan_p_holm"] < 0.01 and r["logrank_p_holm"] < 0.01
    assert r["verdict"].startswith("fast solves in fewer episodes than slow: P(fast faster) = 1.00 [0.")


def test_compare_on_equal_arms_and_few_seeds_says_so():
    same = runs_frame({"a": [20, 30, 40, 50, 60, 70], "b": [25, 35, 45, 55, 65, 75]})
    r = stats.compare(same, n_permutations=500).iloc[0]
    assert r["verdict"].startswith("no clear difference between")
    assert "P(A faster) CI includes 0.5" in r["warnings"]
    few = stats.compare(runs_frame({"a": [10, 11, 12], "b": [90, 91, 92]}), n_permutations=500).iloc[0]
    assert "fewer than 5 seeds (a: 3, b: 3)" in few["warnings"]
    assert few["gehan_p"] == pytest.approx(0.1)  # 3 v 3 can never reach 5%: no claim
    assert few["verdict"].startswith("no clear difference")


def test_compare_handles_censored_arms_and_holm_over_all_pairs():
    runs = runs_frame({"x": [10, 12, 14, 16, 18], "y": [None] * 5, "z": [None] * 5}, budget=50)
    pairs = stats.compare(runs, n_permutations=500)
    assert len(pairs) == 3
    xy, yz = _row(pairs, "x", "y"), pairs[pairs["a"].isin(["y", "z"]) & pairs["b"].isin(["y", "z"])].iloc[0]
    assert xy["p_a_faster"] == 1 and xy["verdict"].startswith("x solves in fewer episodes than y")
    assert yz["p_a_faster"] == 0.5 and math.isnan(yz["gehan_p"])
    assert "no run of either solved" in yz["warnings"]
    np.testing.assert_allclose(pairs["gehan_p_holm"], stats.holm(pairs["gehan_p"]))


def _row(pairs: pd.DataFrame, a: str, b: str) -> dict:
    return pairs[(pairs["a"] == a) & (pairs["b"] == b)].iloc[0].to_dict()


def test_iqm_interval_is_unbounded_above_when_resamples_cannot_place_it():
    t = np.array([10.0, 12, 14, 16, 18, 20, 22, 100])
    none = stats.trimmed_mean_ci(t)
    some = stats.trimmed_mean_ci(t, censored=np.array([False] * 6 + [True] * 2))
    assert math.isfinite(none[1]) and some[1] == math.inf and some[0] == none[0]
