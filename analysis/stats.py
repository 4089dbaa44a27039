"""Statistics of episodes-to-solve: pure functions over the tidy run table of :mod:`analysis.collect`.

Censoring. A run that never solved is *right-censored* at its episode count: all we know is that
its episodes-to-solve exceeds ``episodes``. Such runs are never dropped:

* :func:`kaplan_meier` and :func:`km_median` treat them exactly (Kaplan-Meier estimator), and
  :func:`logrank` tests whole solve curves with them;
* :func:`summarize`'s ``median`` and ``iqm`` count an unsolved run *at its episode count*, so when
  any run of an arm is censored they are lower bounds of the true values (column ``lower_bound``);
* :func:`prob_improvement` scores a pair of runs only when the order is known (Gehan's rule) and
  calls it a tie (1/2) otherwise;
* :func:`compare`'s Mann-Whitney and Wilcoxon tests use the censored-at-episode-count values: exact
  orderings when all runs had the same episode budget, approximate otherwise.

Arms are the distinct values of a column (``by``, default ``algo``). All bootstraps are seeded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
MIN_SEEDS = 5  # fewer runs per arm than this: a comparison says little, and the report says so
# scipy's percentile/BCa/basic CIs of the median cover 79-94% at 10 seeds; the expanded percentile
# covers >= 95% (benchmarks/bench_stats.py), so it is the default.
BOOTSTRAP_METHOD = "expanded-percentile"
N_RESAMPLES = 5000

Statistic = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- point statistics
def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: mean of the middle 50% (``scipy.stats.trim_mean`` cutting 25% each side).

    With n values, ``int(0.25 * n)`` values are cut from each end (n=10: the middle 6).
    """
    return stats.trim_mean(x, 0.25, axis=axis)


def median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median along ``axis`` (vectorised, for the bootstrap)."""
    return np.median(x, axis=axis)


def solve_times(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(t, solved)``: episodes-to-solve for solved runs, the episode count for censored ones."""
    solved = runs["solved"].astype(bool).to_numpy()
    t = np.where(solved, runs["episodes_to_solve"], runs["episodes"]).astype(float)
    if np.isnan(t).any():
        bad = runs.loc[np.isnan(t), "run_id"].tolist() if "run_id" in runs else []
        raise ValueError(f"runs without episodes_to_solve/episodes: {bad}")
    return t, solved


def censored(t: np.ndarray, solved: np.ndarray) -> stats.CensoredData:
    """Right-censored sample: solved runs are events, unsolved runs censored at ``t``."""
    return stats.CensoredData.right_censored(np.asarray(t, float), ~np.asarray(solved, bool))


# --------------------------------------------------------------------------- bootstrap
def expanded_confidence(confidence: float, n: int) -> float:
    """Percentile level of Hesterberg's "expanded percentile" interval for a sample of ``n``.

    The percentile bootstrap is too narrow for small samples; the expanded interval uses the level
    whose normal quantile is ``sqrt(n / (n - 1)) * t_{n-1}`` quantile (n=10, 95% -> 98.3%).
    """
    z = math.sqrt(n / (n - 1)) * stats.t.ppf(0.5 + confidence / 2, n - 1)
    return float(2 * stats.norm.cdf(z) - 1)


def bootstrap_ci(
    data: Sequence[np.ndarray],
    statistic: Statistic,
    *,
    confidence: float = CONFIDENCE,
    method: str = BOOTSTRAP_METHOD,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-sided bootstrap CI of a vectorised ``statistic(*samples, axis=-1)`` (scipy.stats.bootstrap).

    ``method`` is one of scipy's (``percentile``, ``BCa``, ``basic``) or ``expanded-percentile``
    (percentile at :func:`expanded_confidence` of the smallest sample). Samples are resampled
    independently. NaNs if any sample has fewer than two values. A degenerate bootstrap
    distribution (all values equal) gives the point value at both ends.
    """
    data = tuple(np.asarray(d, float) for d in data)
    if any(d.size < 2 for d in data):
        return math.nan, math.nan
    if method == "expanded-percentile":
        confidence = expanded_confidence(confidence, min(d.size for d in data))
        method = "percentile"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            data,
            statistic,
            n_resamples=n_resamples,
            vectorized=True,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        dist = res.bootstrap_distribution
        if np.ptp(dist) == 0:
            return float(dist.flat[0]), float(dist.flat[0])
        if method != "percentile":
            return bootstrap_ci(
                data,
                statistic,
                confidence=confidence,
                method="percentile",
                n_resamples=n_resamples,
                seed=seed,
            )
    return lo, hi


# --------------------------------------------------------------------------- Kaplan-Meier
def kaplan_meier(t: np.ndarray, solved: np.ndarray, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Fraction of runs solved by episode n (1 - Kaplan-Meier survival), with a pointwise CI.

    One row per distinct time plus a first row at episode 0: ``episode, fraction_solved, lo, hi,
    at_risk`` (runs with t >= episode), ``solved_here``, ``censored_here``. The CI is scipy's
    "log-log" (exponential Greenwood) interval; where it is undefined (estimate 0 or 1) the band
    collapses onto the estimate.
    """
    t, solved = np.asarray(t, float), np.asarray(solved, bool)
    res = stats.ecdf(censored(t, solved)).cdf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = res.confidence_interval(confidence, method="log-log")
    times, f = res.quantiles, res.probabilities
    lo = np.where(np.isnan(ci.low.probabilities), f, ci.low.probabilities)
    hi = np.where(np.isnan(ci.high.probabilities), f, ci.high.probabilities)
    table = pd.DataFrame(
        {
            "episode": times,
            "fraction_solved": f,
            "lo": lo,
            "hi": hi,
            "at_risk": [(t >= x).sum() for x in times],
            "solved_here": [(solved & (t == x)).sum() for x in times],
            "censored_here": [(~solved & (t == x)).sum() for x in times],
        }
    )
    start = pd.DataFrame(
        {
            "episode": [0.0],
            "fraction_solved": [0.0],
            "lo": [0.0],
            "hi": [0.0],
            "at_risk": [t.size],
            "solved_here": [0],
            "censored_here": [0],
        }
    )
    return pd.concat([start, table], ignore_index=True)


def _first_reaching(episode: np.ndarray, y: np.ndarray, level: float) -> float:
    hit = np.flatnonzero(y >= level - 1e-12)
    return float(episode[hit[0]]) if hit.size else math.inf


def km_median(km: pd.DataFrame) -> tuple[float, float, float]:
    """KM median episodes-to-solve with its CI, from a :func:`kaplan_meier` table.

    The median is the first episode where the fraction solved reaches 1/2; its CI runs from the
    first episode where the CI's upper end reaches 1/2 to the first where its lower end does
    (Brookmeyer-Crowley inversion of the pointwise band). ``inf`` means "not reached": fewer
    than half the runs (or their lower bound) solved within the episodes observed.
    """
    ep = km["episode"].to_numpy()
    return (
        _first_reaching(ep, km["fraction_solved"].to_numpy(), 0.5),
        _first_reaching(ep, km["hi"].to_numpy(), 0.5),
        _first_reaching(ep, km["lo"].to_numpy(), 0.5),
    )


def logrank(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray) -> tuple[float, float]:
    """Two-sided log-rank test of equal solve curves: ``(statistic, p)``; NaN when no run solved."""
    if not (np.any(sa) or np.any(sb)):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.logrank(censored(ta, sa), censored(tb, sb))
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------- pairwise
def win_matrix(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """``W[i, j]``: 1 if run i of A surely solved before run j of B, 0 if surely after, else 1/2.

    "Surely before" (Gehan's rule): A solved at ``ta[i]`` and either B solved later, or B is
    censored at ``tb[j] >= ta[i]`` (it ran at least as long without solving). Equal solve
    times, two censored runs, and a censored run against a run solved after its censoring
    point are undetermined and count 1/2. So ``W_AB + W_BA.T = 1`` everywhere.
    """
    ta, tb = np.asarray(ta, float)[:, None], np.asarray(tb, float)[None, :]
    sa, sb = np.asarray(sa, bool)[:, None], np.asarray(sb, bool)[None, :]
    a_first = sa & ((ta < tb) | (~sb & (ta <= tb)))
    b_first = sb & ((tb < ta) | (~sa & (tb <= ta)))
    return 0.5 + 0.5 * a_first - 0.5 * b_first


def prob_improvement(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray) -> float:
    """P(A solves in fewer episodes than B): mean of :func:`win_matrix` over all run pairs.

    Without censoring this is P(T_A < T_B) + P(T_A = T_B) / 2, i.e. ``1 - U_A / (n_A n_B)`` with
    Mann-Whitney's U of A.
    """
    return float(win_matrix(ta, sa, tb, sb).mean())


def prob_improvement_ci(
    ta: np.ndarray,
    sa: np.ndarray,
    tb: np.ndarray,
    sb: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    method: str = BOOTSTRAP_METHOD,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap CI of :func:`prob_improvement`, resampling the runs of A and of B independently."""
    w = win_matrix(ta, sa, tb, sb)

    def stat(ia: np.ndarray, ib: np.ndarray, axis: int = -1) -> np.ndarray:
        ia, ib = ia.astype(int), ib.astype(int)
        return w[ia[..., :, None], ib[..., None, :]].mean(axis=(-2, -1))

    return bootstrap_ci(
        (np.arange(len(ta)), np.arange(len(tb))),
        stat,
        confidence=confidence,
        method=method,
        n_resamples=n_resamples,
        seed=seed,
    )


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs pass through.

    With m tests sorted p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def _test_p(test: Callable[..., object], *args: np.ndarray) -> tuple[float, float]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = test(*args)
    except ValueError:
        return math.nan, math.nan
    return float(res.statistic), float(res.pvalue)


def paired_seeds(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Censored-at-count solve times of A and B on the seeds both ran exactly once (sorted by seed)."""

    def by_seed(runs: pd.DataFrame) -> pd.Series:
        runs = runs.dropna(subset=["seed"])
        runs = runs[~runs["seed"].duplicated(keep=False)]
        return pd.Series(solve_times(runs)[0], index=runs["seed"].to_numpy())

    sa, sb = by_seed(a), by_seed(b)
    common = sorted(set(sa.index) & set(sb.index))
    return sa[common].to_numpy(), sb[common].to_numpy()


# --------------------------------------------------------------------------- tables
def _arm_groups(runs: pd.DataFrame, by: str) -> dict[str, pd.DataFrame]:
    return {str(k): g for k, g in runs.groupby(runs[by].astype(str), sort=True)}


def summarize(
    runs: pd.DataFrame,
    by: str = "algo",
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per arm: run/seed/solved counts, median and IQM with bootstrap CIs, KM median.

    ``median``/``iqm`` count unsolved runs at their episode count (lower bounds when
    ``censored > 0``, flagged in ``lower_bound``); ``km_median`` handles censoring exactly and is
    ``inf`` when fewer than half the runs solved. Rows are sorted fastest first (KM median, then
    median, then name).
    """
    rows = []
    for arm, g in _arm_groups(runs, by).items():
        t, s = solve_times(g)
        med_lo, med_hi = bootstrap_ci((t,), median, confidence=confidence, n_resamples=n_resamples, seed=seed)
        iqm_lo, iqm_hi = bootstrap_ci((t,), iqm, confidence=confidence, n_resamples=n_resamples, seed=seed)
        km_med, km_lo, km_hi = km_median(kaplan_meier(t, s, confidence))
        rows.append(
            {
                by: arm,
                "runs": len(g),
                "seeds": g["seed"].nunique(),
                "solved": int(s.sum()),
                "censored": int((~s).sum()),
                "median": float(np.median(t)),
                "median_lo": med_lo,
                "median_hi": med_hi,
                "iqm": float(iqm(t)),
                "iqm_lo": iqm_lo,
                "iqm_hi": iqm_hi,
                "lower_bound": bool((~s).any()),
                "km_median": km_med,
                "km_median_lo": km_lo,
                "km_median_hi": km_hi,
                "max_episodes": float(g["episodes"].max()),
                "wall_time_s": float(g["wall_time_s"].median()),
                "sps": float(g["sps"].median()),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["km_median", "median", by], ignore_index=True)


def km_curves(runs: pd.DataFrame, by: str = "algo", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """:func:`kaplan_meier` tables of every arm stacked, with the arm in column ``by``."""
    frames = [
        kaplan_meier(*solve_times(g), confidence).assign(**{by: arm})
        for arm, g in _arm_groups(runs, by).items()
    ]
    return pd.concat(frames, ignore_index=True)


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "[n/a]"


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(map(math.isfinite, a + b)) and a[0] <= b[1] and b[0] <= a[1]


def compare(
    runs: pd.DataFrame,
    by: str = "algo",
    *,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """All pairwise comparisons of arms: one row per unordered pair ``(a, b)``, ``a`` ranked faster.

    Columns: run counts; ``p_a_faster`` = :func:`prob_improvement` of a over b with bootstrap
    CI; log-rank and Mann-Whitney statistics, p-values and Holm-adjusted p-values (each family
    adjusted over all pairs in ``runs``); the Wilcoxon signed-rank test on matched seeds
    (``paired_n`` seeds run exactly once by both; NaN when fewer than 2); ``warnings`` (too few
    seeds, overlapping median CIs, a P CI containing 1/2) and a plain-language ``verdict``.
    A difference is claimed only when the Holm-adjusted log-rank p < ``alpha`` *and* the
    P(improvement) CI excludes 1/2.
    """
    arms = _arm_groups(runs, by)
    summary = summarize(runs, by, confidence=confidence, n_resamples=n_resamples, seed=seed).set_index(by)
    rows = []
    for a, b in combinations(summary.index, 2):  # fastest arm first
        (ta, sa), (tb, sb) = solve_times(arms[a]), solve_times(arms[b])
        p_lo, p_hi = prob_improvement_ci(
            ta, sa, tb, sb, confidence=confidence, n_resamples=n_resamples, seed=seed
        )
        lr_stat, lr_p = logrank(ta, sa, tb, sb)
        mw_stat, mw_p = _test_p(stats.mannwhitneyu, ta, tb)
        xa, xb = paired_seeds(arms[a], arms[b])
        w_stat, w_p = _test_p(stats.wilcoxon, xa, xb) if xa.size >= 2 else (math.nan, math.nan)
        rows.append(
            {
                "a": a,
                "b": b,
                "n_a": ta.size,
                "n_b": tb.size,
                "p_a_faster": prob_improvement(ta, sa, tb, sb),
                "p_lo": p_lo,
                "p_hi": p_hi,
                "logrank_stat": lr_stat,
                "logrank_p": lr_p,
                "mannwhitney_u": mw_stat,
                "mannwhitney_p": mw_p,
                "paired_n": xa.size,
                "wilcoxon_stat": w_stat,
                "wilcoxon_p": w_p,
            }
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "a",
            "b",
            "n_a",
            "n_b",
            "p_a_faster",
            "p_lo",
            "p_hi",
            "logrank_stat",
            "logrank_p",
            "mannwhitney_u",
            "mannwhitney_p",
            "paired_n",
            "wilcoxon_stat",
            "wilcoxon_p",
        ],
    )
    table.insert(table.columns.get_loc("logrank_p") + 1, "logrank_p_holm", holm(table["logrank_p"]))
    table.insert(
        table.columns.get_loc("mannwhitney_p") + 1, "mannwhitney_p_holm", holm(table["mannwhitney_p"])
    )
    table["wilcoxon_p_holm"] = holm(table["wilcoxon_p"])
    table["warnings"] = [
        "; ".join(comparison_warnings(r, summary.loc[r["a"]], summary.loc[r["b"]]))
        for r in table.to_dict("records")
    ]
    table["verdict"] = [verdict(r, alpha) for r in table.to_dict("records")]
    return table


def comparison_warnings(row: dict, arm_a: pd.Series, arm_b: pd.Series) -> list[str]:
    """Why a comparison may say little: few seeds, overlapping median CIs, P CI containing 1/2."""
    out = []
    if min(row["n_a"], row["n_b"]) < MIN_SEEDS:
        out.append(f"fewer than {MIN_SEEDS} seeds ({row['a']}: {row['n_a']}, {row['b']}: {row['n_b']})")
    ci_a, ci_b = (arm_a["median_lo"], arm_a["median_hi"]), (arm_b["median_lo"], arm_b["median_hi"])
    if _overlap(ci_a, ci_b):
        out.append("median CIs overlap")
    if not (math.isfinite(row["p_lo"]) and (row["p_lo"] > 0.5 or row["p_hi"] < 0.5)):
        out.append(
            "P(improvement) CI includes 0.5" if math.isfinite(row["p_lo"]) else "no CI for P(improvement)"
        )
    elif row["p_lo"] == row["p_hi"]:
        out.append(
            f"P(improvement) CI is a point (every resample agrees): with {row['n_a']} and "
            f"{row['n_b']} runs it understates the uncertainty"
        )
    if arm_a["solved"] == 0 and arm_b["solved"] == 0:
        out.append("no run of either solved")
    return out


def verdict(row: dict, alpha: float = ALPHA) -> str:
    """One plain-language sentence for a :func:`compare` row, naming the faster arm first."""
    a, b, p, lo, hi = row["a"], row["b"], row["p_a_faster"], row["p_lo"], row["p_hi"]
    if p < 0.5:
        a, b, p, lo, hi = b, a, 1 - p, 1 - hi, 1 - lo
    lr = row["logrank_p_holm"]
    lr_text = f"log-rank p = {lr:.2g} (Holm)" if math.isfinite(lr) else "log-rank p = n/a"
    figures = f"{p:.2f} {_interval(lo, hi)}, {lr_text}"
    if math.isfinite(lr) and lr < alpha and math.isfinite(lo) and lo > 0.5:
        return f"{a} solves in fewer episodes than {b}: P = {figures}"
    return f"no clear difference between {a} and {b}: P({a} faster) = {figures}"


def improvement_matrix(pairs: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Square table of P(row arm solves faster than column arm); NaN on the diagonal."""
    m = pd.DataFrame(np.nan, index=list(arms), columns=list(arms))
    for r in pairs.itertuples(index=False):
        m.loc[r.a, r.b], m.loc[r.b, r.a] = r.p_a_faster, 1 - r.p_a_faster
    return m


def learning_curve(
    episodes: pd.DataFrame,
    by: str = "algo",
    *,
    value: str = "return",
    min_frac: float = 0.5,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Mean ``value`` per episode across an arm's runs with a t-interval, while enough runs remain.

    Runs stop at different episodes (most stop when solved), so an episode is kept only while at
    least ``max(1, ceil(min_frac * n_runs))`` of the arm's runs reached it; later episodes would
    average only the runs still going (mostly the slow ones). No value is carried forward.
    Columns: ``by, episode, n, mean, lo, hi, min_runs`` (lo/hi NaN when n < 2).
    """
    frames = []
    for arm, g in _arm_groups(episodes, by).items():
        need = max(1, math.ceil(min_frac * g["run_id"].nunique()))
        agg = g.groupby("episode")[value].agg(["count", "mean", "std"]).reset_index()
        agg = agg[agg["count"] >= need]
        n = agg["count"].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            half = stats.t.ppf(0.5 + confidence / 2, n - 1) * agg["std"].to_numpy() / np.sqrt(n)
        frames.append(
            pd.DataFrame(
                {
                    by: arm,
                    "episode": agg["episode"],
                    "n": n,
                    "mean": agg["mean"],
                    "lo": agg["mean"] - half,
                    "hi": agg["mean"] + half,
                    "min_runs": need,
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=[by, "episode", "n", "mean", "lo", "hi", "min_runs"])
    return pd.concat(frames, ignore_index=True)
