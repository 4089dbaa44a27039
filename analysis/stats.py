"""Statistics of episodes-to-solve: pure functions over the tidy run table of :mod:`analysis.collect`.

Censoring. A run that never solved is *right-censored* at its episode count: all we know is that
its episodes-to-solve exceeds ``episodes``. FAILED and KILLED runs are censored at the episodes
they reached (unless they solved first). Nothing is dropped.

* :func:`kaplan_meier` gives the fraction solved by episode n with a pointwise exact-binomial
  (Clopper-Pearson) band on the Greenwood effective sample size: without censoring before n it is
  the exact binomial interval, so it covers at any number of runs.
* :func:`km_median` is the KM median (midpoint rule of R's ``survfit`` where the curve sits at 1/2,
  so numpy's median without censoring); "not reached" (more than half censored) is reported as
  ``> budget``, never as a number. Its CI inverts the band (Brookmeyer-Crowley); with 5 runs the
  widest interval the runs give, [first, last], has exact level 93.75% and is labelled so; with
  fewer runs the median cannot be bounded and no interval is given.
* :func:`iqm_ci`: the IQM with the Tukey-McLaughlin (trimmed-mean t) interval. Exact while the
  censored runs are all among the trimmed top quarter; beyond that the IQM of the censored-at-count
  values and its lower limit are lower bounds of the true ones (the upper end is unbounded).
* Comparisons (:func:`compare`) put two arms on a *common footing*: every run is censored at the
  smallest episode budget of the pair, so a longer budget cannot make an arm look slower or faster.
  The test is a permutation test (exact enumeration up to :data:`EXACT_LIMIT` splits, else seeded
  Monte Carlo) of Gehan's generalised Wilcoxon statistic, whose effect size is
  :func:`prob_improvement` (P(A solves first), Gehan's rule for censored pairs) with Newcombe's
  score interval; a permutation log-rank p is reported alongside.

Arms are the distinct values of a column (``by``, default ``algo``). Random draws are seeded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import optimize, stats

from rlexp.survival import (  # noqa: F401  (re-exported: the report's statistics in one namespace)
    CONFIDENCE,
    MIN_MEDIAN_LEVEL,
    clopper_pearson,
    kaplan_meier,
    km_median,
    median_level,
)

ALPHA = 0.05
MIN_SEEDS = 5  # fewer runs per arm than this: a comparison says little, and the report says so
N_RESAMPLES = 2000  # bootstrap resamples of the IQM interval
N_PERMUTATIONS = 10_000  # Monte Carlo permutations when exact enumeration is too long
EXACT_LIMIT = 20_000  # enumerate every split of the pooled runs up to this many
DEFAULT_WINDOW = 100  # solve.window when a run does not record it
FAILED_STATUSES = ("FAILED", "KILLED")


# --------------------------------------------------------------------------- run table -> arrays
def solve_times(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(t, solved)``: episodes-to-solve for solved runs, the episode count for censored ones."""
    solved = runs["solved"].astype(bool).to_numpy()
    t = np.where(solved, runs["episodes_to_solve"], runs["episodes"]).astype(float)
    if np.isnan(t).any():
        bad = runs.loc[np.isnan(t), "run_id"].tolist() if "run_id" in runs else []
        raise ValueError(f"runs without episodes_to_solve/episodes: {bad}")
    return t, solved


def _column(runs: pd.DataFrame, name: str) -> np.ndarray:
    if name not in runs:
        return np.full(len(runs), np.nan)
    return pd.to_numeric(runs[name], errors="coerce").to_numpy(float)


def budgets(runs: pd.DataFrame) -> np.ndarray:
    """Planned episode budget per run (``param.train.max_episodes``), NaN where not recorded."""
    b = _column(runs, "budget")
    return np.where(np.isnan(b), _column(runs, "param.train.max_episodes"), b)


def windows(runs: pd.DataFrame) -> np.ndarray:
    """``solve.window`` per run, NaN where not recorded."""
    return _column(runs, "param.solve.window")


def failed(runs: pd.DataFrame) -> np.ndarray:
    """Runs that ended FAILED or KILLED (censored where they stopped)."""
    if "status" not in runs:
        return np.zeros(len(runs), bool)
    return runs["status"].isin(FAILED_STATUSES).to_numpy()


def horizon(runs: pd.DataFrame) -> float:
    """The episode up to which every run of ``runs`` was meant to be followed: the smallest budget.

    A run's budget is its recorded ``train.max_episodes``; without it, an unsolved FINISHED run's
    episode count. ``inf`` when no run says (all solved, no budget recorded).
    """
    t, s = solve_times(runs)
    b = budgets(runs)
    b = np.where(np.isnan(b) & ~s & ~failed(runs), t, b)
    return float(np.nanmin(b)) if np.isfinite(b).any() else math.inf


def common_footing(t: np.ndarray, solved: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Censor every run at ``horizon``: a run solved later counts as unsolved at ``horizon``."""
    t, solved = np.asarray(t, float), np.asarray(solved, bool)
    return np.minimum(t, horizon), solved & (t <= horizon)


# --------------------------------------------------------------------------- IQM
def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: mean of the middle 50% (``scipy.stats.trim_mean`` cutting 25% each side).

    With n values, ``int(0.25 * n)`` values are cut from each end (n=10: the middle 6).
    """
    return stats.trim_mean(x, 0.25, axis=axis)


def expanded_confidence(confidence: float, n: int) -> float:
    """Hesterberg's "expanded" level for small samples: the level whose normal quantile is
    ``sqrt(n / (n - 1)) * t_{n-1}`` quantile (n=10, 95% -> 98.3%; n=5 -> 99.8%)."""
    z = math.sqrt(n / (n - 1)) * stats.t.ppf(0.5 + confidence / 2, n - 1)
    return float(2 * stats.norm.cdf(z) - 1)


def trimmed_mean_ci(
    x: np.ndarray,
    confidence: float = CONFIDENCE,
    *,
    censored: np.ndarray | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """CI of the IQM: the hull of two small-sample intervals at Hesterberg's expanded level.

    The Tukey-McLaughlin interval (winsorised SD, t with n - 2g - 1 df) under-covers on
    multimodal data (a slow cluster of seeds) and the percentile bootstrap does at 5 runs; the
    hull of both, each at :func:`expanded_confidence`, covers >= 93% at 5-20 runs on the
    distributions of ``benchmarks/bench_stats.py``. ``censored`` marks values that are only lower
    bounds: a resample holding more of them than it trims has an unknown IQM, taken as unbounded
    above (its computed value still serves the lower end). NaN below 3 values.
    """
    order = np.argsort(np.asarray(x, float), kind="stable")
    x = np.asarray(x, float)[order]
    cens = np.zeros(x.size, bool) if censored is None else np.asarray(censored, bool)[order]
    n = x.size
    g = int(0.25 * n)
    if n < 3:  # two runs: the expanded level is 100%, nothing to bound
        return math.nan, math.nan
    level = expanded_confidence(confidence, n)
    w = np.clip(x, x[g], x[n - g - 1])
    se = w.std(ddof=1) / ((1 - 2 * g / n) * math.sqrt(n))
    half = stats.t.ppf(0.5 + level / 2, n - 2 * g - 1) * se if se > 0 else 0.0
    m = float(iqm(x))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_resamples, n))
    boot = iqm(x[idx], axis=-1)
    unknown = cens[idx].sum(axis=1) > g
    b_lo = np.quantile(boot, (1 - level) / 2)
    upper = np.sort(np.where(unknown, np.inf, boot))  # an order statistic: inf-safe
    b_hi = upper[min(n_resamples - 1, math.ceil((1 + level) / 2 * n_resamples) - 1)]
    return min(m - half, float(b_lo)), max(m + half, float(b_hi))


def iqm_ci(
    t: np.ndarray, solved: np.ndarray, confidence: float = CONFIDENCE, *, seed: int = 0
) -> dict[str, object]:
    """IQM of episodes-to-solve with its CI (:func:`trimmed_mean_ci`), censored runs at their count.

    ``exact`` while every censored run sits among the trimmed top ``int(n/4)`` runs (censored no
    earlier than the last run kept); otherwise ``iqm`` and ``lo`` are lower bounds and ``hi`` is NaN
    (unbounded): censored-at-count values are below the true ones, and the IQM only grows with them.
    ``hi`` is NaN (unbounded) as well when too many resamples hold censored runs to place the IQM.
    """
    t, solved = np.asarray(t, float), np.asarray(solved, bool)
    n = t.size
    if n == 0:
        return {"iqm": math.nan, "lo": math.nan, "hi": math.nan, "exact": False}
    g = int(0.25 * n)
    kept_max = np.sort(t)[n - g - 1]
    exact = (~solved).sum() <= g and bool(np.all(t[~solved] >= kept_max))
    lo, hi = trimmed_mean_ci(t, confidence, censored=~solved, seed=seed)
    hi = hi if exact and math.isfinite(hi) else math.nan  # NaN: unbounded above, never inf in a table
    return {"iqm": float(iqm(t)), "lo": lo, "hi": hi, "exact": exact}


def mean_ci(x: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean with its t-interval (NaN interval below two finite values)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return m, m - half, m + half


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
    Mann-Whitney's U of A. On a common footing (both censored at the same horizon) it is that
    probability for the episodes-to-solve capped at the horizon, runs unsolved by then tying.
    """
    return float(win_matrix(ta, sa, tb, sb).mean())


def newcombe_ci(p: float, n_a: int, n_b: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's (2006, method 5) score interval for P(A < B) from ``n_a`` and ``n_b`` runs.

    Inverts ``|p - theta| <= z sqrt(V(theta))`` with Hanley-McNeil's variance in which both
    ``n - 1`` are replaced by ``N* = (n_a + n_b) / 2 - 1``; like Wilson's interval it stays
    inside [0, 1] and is not a point when every pair agrees. NaN with fewer than two runs a side.
    """
    if min(n_a, n_b) < 2 or not math.isfinite(p):
        return math.nan, math.nan
    z = stats.norm.ppf(0.5 + confidence / 2)
    n_star = (n_a + n_b) / 2 - 1

    def gap(theta: float) -> float:
        var = (
            theta
            * (1 - theta)
            / (n_a * n_b)
            * (1 + n_star * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
        )
        return abs(p - theta) - z * math.sqrt(max(var, 0.0))

    inner = min(max(p, 1e-12), 1 - 1e-12)  # gap < 0 here, even at p = 0 or 1
    lo = 0.0 if gap(0.0) <= 0 else optimize.brentq(gap, 0.0, inner)
    hi = 1.0 if gap(1.0) <= 0 else optimize.brentq(gap, inner, 1.0)
    return float(lo), float(hi)


def gehan_scores(t: np.ndarray, solved: np.ndarray) -> np.ndarray:
    """Gehan's (Mantel's) scores of the pooled runs: wins minus losses against every other run."""
    w = win_matrix(t, solved, t, solved)
    return (2 * w - 1).sum(axis=1)


def logrank_scores(t: np.ndarray, solved: np.ndarray) -> np.ndarray:
    """Log-rank scores of the pooled runs: solved (0/1) minus the Nelson-Aalen hazard up to t."""
    t, solved = np.asarray(t, float), np.asarray(solved, bool)
    times = np.unique(t[solved])
    hazard = np.array([(solved & (t == x)).sum() / (t >= x).sum() for x in times])
    cum = np.concatenate([[0.0], np.cumsum(hazard)])
    return solved - cum[np.searchsorted(times, t, side="right")]


def _splits(n: int, k: int, n_permutations: int, seed: int) -> np.ndarray:
    """Boolean (splits, n) matrix: every k-subset of n, or ``n_permutations`` random ones."""
    if math.comb(n, k) <= EXACT_LIMIT:
        idx = np.array(list(combinations(range(n), k)), dtype=int).reshape(-1, k)
        out = np.zeros((idx.shape[0], n), bool)
        np.put_along_axis(out, idx, True, axis=1)
        return out
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_permutations, n)), axis=1)
    return order < k


def permutation_test(
    scores: np.ndarray, in_a: np.ndarray, *, n_permutations: int = N_PERMUTATIONS, seed: int = 0
) -> np.ndarray:
    """Two-sided permutation p of the sum of ``scores`` over arm A (labels exchangeable under H0).

    ``scores`` is one score vector or a (k, n) stack of them, tested on the same splits (one p
    each). Exact when every split can be enumerated (:data:`EXACT_LIMIT`), else Monte Carlo with
    the observed split counted (p = (1 + hits) / (1 + draws)), so the level is at most nominal.
    NaN for a constant score vector.
    """
    scores, in_a = np.atleast_2d(np.asarray(scores, float)), np.asarray(in_a, bool)
    n, k = scores.shape[1], int(in_a.sum())
    if k == 0 or k == n:
        return np.full(scores.shape[0], np.nan)
    centre = k * scores.mean(axis=1)
    obs = np.abs(scores[:, in_a].sum(axis=1) - centre)
    splits = _splits(n, k, n_permutations, seed)
    dev = np.abs(splits @ scores.T - centre)
    hits = (dev >= obs - 1e-9 * np.maximum(1.0, obs)).sum(axis=0)
    exact = math.comb(n, k) <= EXACT_LIMIT
    p = hits / splits.shape[0] if exact else (1 + hits) / (1 + splits.shape[0])
    return np.where(np.ptp(scores, axis=1) == 0, np.nan, p)


def pair_tests(
    ta: np.ndarray,
    sa: np.ndarray,
    tb: np.ndarray,
    sb: np.ndarray,
    *,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
) -> tuple[float, float]:
    """Permutation p-values ``(gehan, logrank)`` of equal solve curves; NaN when no run solved."""
    t, s = np.concatenate([ta, tb]), np.concatenate([sa, sb]).astype(bool)
    if not s.any():
        return math.nan, math.nan
    in_a = np.arange(t.size) < len(ta)
    scores = np.stack([gehan_scores(t, s), logrank_scores(t, s)])
    gehan, logrank = permutation_test(scores, in_a, n_permutations=n_permutations, seed=seed)
    return float(gehan), float(logrank)


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


# --------------------------------------------------------------------------- secondary outcomes
def run_outcomes(runs: pd.DataFrame, episodes: pd.DataFrame, auc_horizon: float) -> pd.DataFrame:
    """Per run: ``final_return`` (mean of its last ``solve.window`` returns) and ``auc``.

    ``auc`` is the mean return over episodes 1..``auc_horizon`` (the area under the learning curve
    per episode); a run that stopped earlier (solved, or FAILED/KILLED) counts its final return for
    the episodes it did not run. NaN for a run without episodes.
    """
    win = windows(runs)
    by_run = {k: g.sort_values("episode")["return"].to_numpy(float) for k, g in episodes.groupby("run_id")}
    rows = []
    for rid, w in zip(runs["run_id"], win, strict=True):
        r = by_run.get(rid, np.empty(0))
        r = r[np.isfinite(r)]
        w = int(w) if math.isfinite(w) and w >= 1 else DEFAULT_WINDOW
        if r.size == 0:
            rows.append({"run_id": rid, "final_return": math.nan, "auc": math.nan})
            continue
        final = float(r[-w:].mean())
        h = int(auc_horizon) if math.isfinite(auc_horizon) and auc_horizon >= 1 else r.size
        head = r[:h]
        auc = (head.sum() + final * (h - head.size)) / h
        rows.append({"run_id": rid, "final_return": final, "auc": float(auc)})
    return pd.DataFrame(rows, columns=["run_id", "final_return", "auc"])


# --------------------------------------------------------------------------- tables
def _arm_groups(runs: pd.DataFrame, by: str) -> dict[str, pd.DataFrame]:
    return {str(k): g for k, g in runs.groupby(runs[by].astype(str), sort=True)}


def _nanmedian(x: np.ndarray) -> float:
    return float(np.median(x[np.isfinite(x)])) if np.isfinite(x).any() else math.nan


def _budget_text(b: np.ndarray) -> str:
    vals = sorted({int(x) for x in b if math.isfinite(x)})
    return ", ".join(map(str, vals)) if vals else "not recorded"


def summarize(
    runs: pd.DataFrame,
    by: str = "algo",
    episodes: pd.DataFrame | None = None,
    *,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """One row per arm, ranked fastest first.

    Counts (``runs, seeds, solved, censored, failed``), budgets (``budget_min/max``,
    ``mixed_budgets``, ``cannot_solve``: runs whose budget is shorter than ``solve.window``),
    :func:`km_median` (``median, median_kind, median_lo, median_hi, median_level``),
    :func:`iqm_ci` (``iqm, iqm_exact, iqm_lo, iqm_hi``), ``solved_frac_at_horizon`` (KM fraction
    solved by ``horizon``, the smallest budget of all arms) and, with ``episodes``, the secondary
    outcomes of :func:`run_outcomes` (``final_return``, ``final_return_iqm``, ``auc`` with CIs).
    Ranking: arms whose median is reached by KM median; then by fraction solved by the common
    horizon; then by final return (so an arm where nothing solves is ranked by how it learnt).
    """
    h_all = horizon(runs) if len(runs) else math.inf
    outcomes = run_outcomes(runs, episodes, h_all) if episodes is not None else None
    rows = []
    for arm, g in _arm_groups(runs, by).items():
        t, s = solve_times(g)
        b, w = budgets(g), windows(g)
        med = km_median(t, s, confidence)
        q = iqm_ci(t, s, confidence)
        km = kaplan_meier(t, s, confidence)
        at_h = km.loc[km["episode"] <= h_all, "fraction_solved"]
        row = {
            by: arm,
            "runs": len(g),
            "seeds": g["seed"].nunique() if "seed" in g else len(g),
            "solved": int(s.sum()),
            "censored": int((~s).sum()),
            "failed": int(failed(g).sum()),
            "budget_min": float(np.nanmin(b)) if np.isfinite(b).any() else math.nan,
            "budget_max": float(np.nanmax(b)) if np.isfinite(b).any() else math.nan,
            "budgets": _budget_text(b),
            "mixed_budgets": len({x for x in b if math.isfinite(x)}) > 1,
            "cannot_solve": int((b < w).sum()),
            "max_episodes": float(t.max()),
            "median": med["median"],
            "median_kind": med["kind"],
            "median_lo": med["lo"],
            "median_hi": med["hi"],
            "median_level": med["level"],
            "iqm": q["iqm"],
            "iqm_exact": q["exact"],
            "iqm_lo": q["lo"],
            "iqm_hi": q["hi"],
            "solved_frac_at_horizon": float(at_h.iloc[-1]) if len(at_h) else 0.0,
            "wall_time_s": _nanmedian(_column(g, "wall_time_s")),
            "sps": _nanmedian(_column(g, "sps")),
        }
        if outcomes is not None:
            o = outcomes[outcomes["run_id"].isin(g["run_id"])]
            fr = o["final_return"].to_numpy(float)
            row["final_return"], row["final_return_lo"], row["final_return_hi"] = mean_ci(fr, confidence)
            fr = fr[np.isfinite(fr)]
            row["final_return_iqm"] = float(iqm(fr)) if fr.size else math.nan
            row["final_return_iqm_lo"], row["final_return_iqm_hi"] = trimmed_mean_ci(fr, confidence)
            row["auc"], row["auc_lo"], row["auc_hi"] = mean_ci(o["auc"].to_numpy(float), confidence)
            row["auc_horizon"] = h_all if math.isfinite(h_all) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    reached = table["median_kind"] != "not reached"
    final = table["final_return"] if "final_return" in table else pd.Series(np.nan, index=table.index)
    table = table.assign(
        _reached=~reached,
        _median=np.where(reached, table["median"], 0.0),
        _frac=-table["solved_frac_at_horizon"],
        _final=-final.fillna(-np.inf),
    )
    table = table.sort_values(["_reached", "_median", "_frac", "_final", by], ignore_index=True)
    return table.drop(columns=["_reached", "_median", "_frac", "_final"])


def km_curves(runs: pd.DataFrame, by: str = "algo", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """:func:`kaplan_meier` tables of every arm stacked, with the arm in column ``by``."""
    frames = [
        kaplan_meier(*solve_times(g), confidence).assign(**{by: arm})
        for arm, g in _arm_groups(runs, by).items()
    ]
    return pd.concat(frames, ignore_index=True)


def _interval(lo: float, hi: float, digits: int = 2) -> str:
    if math.isnan(lo) and math.isnan(hi):
        return "[no interval]"
    lo_s = f"{lo:.{digits}f}" if math.isfinite(lo) else "unbounded"
    hi_s = f"{hi:.{digits}f}" if math.isfinite(hi) else "unbounded"
    return f"[{lo_s}, {hi_s}]"


COMPARE_COLUMNS = [
    "a", "b", "n_a", "n_b", "horizon", "solved_a", "solved_b", "p_a_faster", "p_lo", "p_hi",
    "gehan_p", "logrank_p",
]  # fmt: skip


def compare(
    runs: pd.DataFrame,
    by: str = "algo",
    episodes: pd.DataFrame | None = None,
    *,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
    summary: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """All pairwise comparisons of arms: one row per unordered pair ``(a, b)``, ``a`` ranked first.

    Each pair is put on a common footing (:func:`common_footing` at ``horizon``, the smaller of
    the two arms' :func:`horizon`). Columns: run counts, ``horizon``, runs solved by it,
    ``p_a_faster`` (:func:`prob_improvement`) with Newcombe's CI, permutation p-values of Gehan's
    and the log-rank statistic (:func:`pair_tests`) and their Holm adjustments over all pairs,
    ``warnings`` and a plain-language ``verdict``. A difference is claimed only when the
    Holm-adjusted Gehan p < ``alpha`` *and* the P(A faster) CI excludes 1/2.
    """
    arms = _arm_groups(runs, by)
    if summary is None:
        summary = summarize(runs, by, episodes, confidence=confidence)
    summary = summary.set_index(by)
    rows = []
    for a, b in combinations(summary.index, 2):
        h = min(horizon(arms[a]), horizon(arms[b]))
        ta, sa = common_footing(*solve_times(arms[a]), h)
        tb, sb = common_footing(*solve_times(arms[b]), h)
        p = prob_improvement(ta, sa, tb, sb)
        p_lo, p_hi = newcombe_ci(p, ta.size, tb.size, confidence)
        gehan_p, logrank_p = pair_tests(ta, sa, tb, sb, n_permutations=n_permutations, seed=seed)
        rows.append(
            {
                "a": a, "b": b, "n_a": ta.size, "n_b": tb.size, "horizon": h if math.isfinite(h) else math.nan,
                "solved_a": int(sa.sum()), "solved_b": int(sb.sum()),
                "p_a_faster": p, "p_lo": p_lo, "p_hi": p_hi, "gehan_p": gehan_p, "logrank_p": logrank_p,
            }
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    table.insert(table.columns.get_loc("gehan_p") + 1, "gehan_p_holm", holm(table["gehan_p"]))
    table["logrank_p_holm"] = holm(table["logrank_p"])
    table["warnings"] = [
        "; ".join(comparison_warnings(r, summary.loc[r["a"]], summary.loc[r["b"]]))
        for r in table.to_dict("records")
    ]
    table["verdict"] = [
        verdict(r, alpha, summary.loc[r["a"]], summary.loc[r["b"]]) for r in table.to_dict("records")
    ]
    return table


def comparison_warnings(row: dict, arm_a: pd.Series, arm_b: pd.Series) -> list[str]:
    """Why a comparison may say little: few seeds, mixed budgets, failed runs, nothing solved."""
    out = []
    if min(row["n_a"], row["n_b"]) < MIN_SEEDS:
        out.append(f"fewer than {MIN_SEEDS} seeds ({row['a']}: {row['n_a']}, {row['b']}: {row['n_b']})")
    same = arm_a["budget_min"] == arm_b["budget_min"] or not (
        math.isfinite(arm_a["budget_min"]) or math.isfinite(arm_b["budget_min"])
    )
    if not same or arm_a["mixed_budgets"] or arm_b["mixed_budgets"]:
        out.append(f"budgets differ (compared up to episode {row['horizon']:.0f})")
    n_failed = int(arm_a["failed"] + arm_b["failed"])
    if n_failed:
        out.append(f"{n_failed} FAILED/KILLED run(s) censored where they stopped")
    if math.isfinite(row["p_lo"]) and row["p_lo"] <= 0.5 <= row["p_hi"]:
        out.append("P(A faster) CI includes 0.5")
    if row["solved_a"] == 0 and row["solved_b"] == 0:
        out.append("no run of either solved by the common horizon")
    return out


def _return_text(arm: pd.Series) -> str:
    if "final_return" not in arm or not math.isfinite(arm["final_return"]):
        return "no episodes recorded"
    return f"{arm['final_return']:.1f} {_interval(arm['final_return_lo'], arm['final_return_hi'], 1)}"


def verdict(
    row: dict, alpha: float = ALPHA, arm_a: pd.Series | None = None, arm_b: pd.Series | None = None
) -> str:
    """One plain-language sentence for a :func:`compare` row, naming the faster arm first."""
    a, b, p, lo, hi = row["a"], row["b"], row["p_a_faster"], row["p_lo"], row["p_hi"]
    h = f"episode {row['horizon']:.0f}" if math.isfinite(row["horizon"]) else "the last episode"
    if row["solved_a"] == 0 and row["solved_b"] == 0:
        text = f"neither {a} nor {b} solved by {h}: episodes-to-solve cannot tell them apart"
        if arm_a is not None and arm_b is not None:
            text += f"; final return {a} {_return_text(arm_a)}, {b} {_return_text(arm_b)}"
        return text
    if p < 0.5:
        a, b, p, lo, hi = b, a, 1 - p, 1 - hi, 1 - lo
    gp = row["gehan_p_holm"]
    test = f"Gehan permutation p = {gp:.2g} (Holm)" if math.isfinite(gp) else "Gehan p = n/a"
    figures = f"{p:.2f} {_interval(lo, hi)}, {test}, both censored at {h}"
    if math.isfinite(gp) and gp < alpha and math.isfinite(lo) and lo > 0.5:
        return f"{a} solves in fewer episodes than {b}: P({a} faster) = {figures}"
    return f"no clear difference between {a} and {b}: P({a} faster) = {figures}"


def improvement_matrix(pairs: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Square table of P(row arm solves faster than column arm); NaN on the diagonal."""
    m = pd.DataFrame(np.nan, index=list(arms), columns=list(arms))
    for r in pairs.itertuples(index=False):
        m.loc[r.a, r.b], m.loc[r.b, r.a] = r.p_a_faster, 1 - r.p_a_faster
    return m


def _curve_matrix(g: pd.DataFrame, value: str, x: str, points: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, values)``: one row per x, one column per run, NaN where a run has no value there.

    ``x="episode"``: the runs' episodes. ``x="env_step"``: ``points`` env steps evenly up to the
    arm's last; a run's value at step s is that of its last episode ended by s, NaN before its first
    episode ends and after its last (it stopped).
    """
    if x == "episode":
        wide = g.pivot_table(index="episode", columns="run_id", values=value, aggfunc="first").sort_index()
        return wide.index.to_numpy(dtype=float), wide.to_numpy(dtype=float)
    g = g.dropna(subset=["env_step"])
    if g.empty:
        return np.empty(0), np.empty((0, 0))
    xs = np.linspace(0.0, float(g["env_step"].max()), points + 1)[1:]
    cols = []
    for _, r in g.sort_values("env_step").groupby("run_id"):
        steps, vals = r["env_step"].to_numpy(float), r[value].to_numpy(float)
        i = np.searchsorted(steps, xs, side="right") - 1
        cols.append(np.where((i >= 0) & (xs <= steps[-1]), vals[np.maximum(i, 0)], np.nan))
    return xs, np.column_stack(cols)


def bootstrap_mean_ci(
    values: np.ndarray, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of each row's mean over its non-NaN values (resampling the
    values, i.e. the runs), clipped to the row's own range: a band never leaves the returns that
    were observed, so never the reward range. NaN for rows with fewer than two values."""
    values = np.asarray(values, float)
    lo, hi = np.full(len(values), np.nan), np.full(len(values), np.nan)
    counts = np.sum(~np.isnan(values), axis=1)
    rng = np.random.default_rng(seed)
    packed = np.sort(values, axis=1)  # NaNs last: a row's n values are its first n
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
    for n in np.unique(counts[counts >= 2]):
        rows = np.flatnonzero(counts == n)
        idx = rng.integers(0, n, size=(n_resamples, n))
        for start in range(0, len(rows), 64):  # bounded memory: 64 x resamples x n
            block = packed[rows[start : start + 64], :n]
            means = block[:, idx].mean(axis=2)
            lo[rows[start : start + 64]], hi[rows[start : start + 64]] = np.percentile(means, q, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.clip(lo, np.nanmin(values, axis=1), None), np.clip(hi, None, np.nanmax(values, axis=1))


def learning_curve(
    episodes: pd.DataFrame,
    by: str = "algo",
    *,
    value: str = "return",
    x: str = "episode",
    min_frac: float = 0.5,
    confidence: float = CONFIDENCE,
    points: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean ``value`` across an arm's runs against ``x`` (``episode`` or ``env_step``), with a
    percentile-bootstrap band over runs (:func:`bootstrap_mean_ci`), while enough runs remain.

    Runs stop at different points (most stop when solved), so a point is kept only while at least
    ``max(1, ceil(min_frac * n_runs))`` of the arm's runs reached it; later points would average
    only the runs still going (mostly the slow ones). No value is carried past a run's end. Against
    env steps the curve is sampled at ``points`` steps (:func:`_curve_matrix`); runs without env
    steps recorded are left out there. Columns: ``by, <x>, n, mean, lo, hi, min_runs`` (lo/hi NaN
    when n < 2).
    """
    frames = []
    for i, (arm, g) in enumerate(_arm_groups(episodes, by).items()):
        need = max(1, math.ceil(min_frac * g["run_id"].nunique()))
        xs, values = _curve_matrix(g, value, x, points)
        if not len(xs):
            continue
        n = np.sum(~np.isnan(values), axis=1)
        keep = n >= need
        xs, values, n = xs[keep], values[keep], n[keep]
        lo, hi = bootstrap_mean_ci(values, confidence, seed=seed + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=1) if len(values) else np.empty(0)
        frames.append(pd.DataFrame({by: arm, x: xs, "n": n, "mean": mean, "lo": lo, "hi": hi, "min_runs": need}))
    if not frames:
        return pd.DataFrame(columns=[by, x, "n", "mean", "lo", "hi", "min_runs"])
    return pd.concat(frames, ignore_index=True)
