"""Solve times as survival data: the fraction of runs solved by episode n (Kaplan-Meier) and the
median episodes-to-solve with its interval, unsolved runs censored at the episodes they reached.

Pure functions over ``(t, solved)`` arrays, shared by the multirun summary (:mod:`rlexp.parent`) and
the comparison report (:mod:`analysis.stats`, which documents the methods and their coverage).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
MIN_MEDIAN_LEVEL = 0.93  # below this exact level the runs cannot bound the median (n < 5)


def clopper_pearson(
    x: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial interval for ``x`` successes in ``n`` trials (real ``x``, ``n`` allowed)."""
    x, n = np.asarray(x, float), np.asarray(n, float)
    a = (1 - confidence) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(x <= 1e-12, 0.0, stats.beta.ppf(a, np.maximum(x, 1e-12), n - x + 1))
        hi = np.where(x >= n - 1e-12, 1.0, stats.beta.ppf(1 - a, x + 1, np.maximum(n - x, 1e-12)))
    return lo, hi


def kaplan_meier(t: np.ndarray, solved: np.ndarray, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Fraction of runs solved by episode n (1 - Kaplan-Meier survival), with a pointwise CI.

    One row per distinct positive time plus a first row at episode 0: ``episode, fraction_solved,
    lo, hi, at_risk`` (runs with t >= episode), ``solved_here``, ``censored_here``, ``n_eff``. The
    band is Clopper-Pearson on the effective sample size ``F(1-F)/Var_Greenwood`` (exactly the
    number of runs while none is censored; the runs at risk before the first solve; the solves so
    far once every run still followed has solved). NaN band with fewer than two runs.
    """
    t, solved = np.asarray(t, float), np.asarray(solved, bool)
    times = np.unique(t[t > 0])
    at_risk = np.array([(t >= x).sum() for x in times])
    d = np.array([(solved & (t == x)).sum() for x in times])
    c = np.array([(~solved & (t == x)).sum() for x in times])
    surv = np.cumprod(1 - d / np.maximum(at_risk, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        gw = np.cumsum(np.where(at_risk > d, d / (at_risk * (at_risk - d)), 0.0))
        n_eff = np.where(surv >= 1 - 1e-12, at_risk, (1 - surv) / (surv * gw))
    n_eff = np.where(surv <= 1e-12, np.cumsum(d), n_eff)
    episode = np.concatenate([[0.0], times])
    f = np.concatenate([[0.0], 1 - surv])
    n_eff = np.concatenate([[float((t > 0).sum())], n_eff])
    if t.size >= 2:
        lo, hi = clopper_pearson(f * n_eff, n_eff, confidence)
    else:
        lo = hi = np.full(episode.size, np.nan)
    return pd.DataFrame(
        {
            "episode": episode,
            "fraction_solved": f,
            "lo": lo,
            "hi": hi,
            "at_risk": np.concatenate([[t.size], at_risk]),
            "solved_here": np.concatenate([[0], d]),
            "censored_here": np.concatenate([[int((~solved & (t <= 0)).sum())], c]),
            "n_eff": n_eff,
        }
    )


def median_level(n: int, confidence: float = CONFIDENCE) -> float:
    """Confidence level of the median interval from ``n`` runs: ``confidence`` when reachable,
    else the exact level of [first, last] run (1 - 2^(1-n): 93.75% at 5 runs); NaN below 93%."""
    widest = 1 - 2 * 0.5**n if n >= 1 else 0.0
    if widest >= confidence:
        return confidence
    return widest if widest >= MIN_MEDIAN_LEVEL else math.nan


def _first(episode: np.ndarray, ok: np.ndarray) -> float:
    hit = np.flatnonzero(ok)
    return float(episode[hit[0]]) if hit.size else math.nan


def km_median(t: np.ndarray, solved: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, object]:
    """KM median episodes-to-solve with its CI.

    ``median``: the first episode where the fraction solved reaches 1/2, or the midpoint to the
    next solve when it sits exactly at 1/2 (numpy's median without censoring). ``kind``:
    ``exact``; ``lower bound`` (the curve stops at exactly 1/2); ``not reached`` (fewer than half
    solved; ``median`` is then the last episode observed, the true median exceeds it). ``lo``/``hi``:
    the CI at level ``level`` (:func:`median_level`); NaN where the runs cannot bound that end
    (``hi`` NaN: beyond the last episode observed), both NaN when no interval exists.
    """
    t, solved = np.asarray(t, float), np.asarray(solved, bool)
    km = kaplan_meier(t, solved, confidence)
    ep, f = km["episode"].to_numpy(), km["fraction_solved"].to_numpy()
    out: dict[str, object] = {"median": math.nan, "kind": "not reached", "lo": math.nan, "hi": math.nan}
    reach = np.flatnonzero(f >= 0.5 - 1e-9)
    if not reach.size:
        out["median"] = float(t.max()) if t.size else math.nan
    else:
        k = reach[0]
        out["median"], out["kind"] = float(ep[k]), "exact"
        if abs(f[k] - 0.5) < 1e-9:
            later = np.flatnonzero(f > 0.5 + 1e-9)
            if later.size:
                out["median"] = (ep[k] + ep[later[0]]) / 2
            else:
                out["kind"] = "lower bound"
    level = median_level(t.size, confidence)
    out["level"] = level
    if math.isnan(level):
        return out
    # widen the level a hair so that the exact order-statistic ends are inside at n = 5
    band = kaplan_meier(t, solved, level * (1 - 1e-9))
    lo_band, hi_band = band["lo"].to_numpy(), band["hi"].to_numpy()
    if hi_band[0] < 0.5:  # bounded below
        lo = _first(ep, hi_band >= 0.5)
        out["lo"] = float(t.max()) if math.isnan(lo) else lo
    out["hi"] = _first(ep, lo_band >= 0.5)
    return out
