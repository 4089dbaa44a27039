"""Validation of the report's statistics by simulation: interval coverage and false-positive rates.

    python -m benchmarks.bench_stats [--experiments 1000] [--permutations 2000] [--quick]

Draws synthetic experiments with known answers and runs them through :mod:`analysis.stats` as the
report does. Episodes-to-solve are integers (rounded continuous draws); censoring is the episode
budget (set at the quantile that censors 0%, 25% or 45% of the runs) and, in the "+ FAILED"
rows, runs that fail at a uniform point before the budget as well.

* Coverage (target >= 93%) at 5, 10 and 20 seeds: the Kaplan-Meier band at the true quartiles and
  deciles inside the budget (worst point), the median CI, the IQM CI (one-sided where the report
  calls the IQM a lower bound) and the P(A faster) CI on the common footing. Where the report
  gives no interval (a median from fewer than 5 runs) there is nothing to cover.
* False positives (target <= 5% + noise): two arms from one distribution, (a) run with budgets
  300 and 1,000 (the old Mann-Whitney on censored-at-count values shown for contrast), (b) with
  3-5 seeds a side (scipy's asymptotic log-rank for contrast), (c) one arm with FAILED runs. A
  false positive is the report's claim "A solves in fewer episodes than B".

The table is printed and written, with date, command and versions, to
``benchmarks/results/bench_stats-<date>.md``; exit 1 if a row misses its target.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis import stats
from analysis.report import markdown_table, versions

RESULTS = Path(__file__).resolve().parent / "results"
COVERAGE_TARGET = 0.93
FPR_TARGET = 0.05
TRUTH_DRAWS = 2_000_000

Sampler = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Dist:
    """Episodes-to-solve: integer draws (at least 1) and their true summaries from a large sample."""

    name: str
    draw: Callable[[np.random.Generator, int], np.ndarray]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.maximum(np.round(self.draw(rng, n)), 1.0)

    def big(self) -> np.ndarray:
        return np.sort(self.sample(np.random.default_rng(999), TRUTH_DRAWS))


LOGNORMAL = Dist("round(lognormal(log 150.3, 0.5))", lambda r, n: r.lognormal(math.log(150.3), 0.5, n))
BIMODAL = Dist(
    "round(0.7 N(120,15) + 0.3 N(250,20))",
    lambda r, n: np.where(r.random(n) < 0.7, r.normal(120, 15, n), r.normal(250, 20, n)),
)
SLOWER = Dist("round(lognormal(log 200, 0.5))", lambda r, n: r.lognormal(math.log(200), 0.5, n))
FAST = Dist("round(lognormal(log 100, 0.3))", lambda r, n: r.lognormal(math.log(100), 0.3, n))
VERY_SLOW = Dist("round(lognormal(log 250, 0.3))", lambda r, n: r.lognormal(math.log(250), 0.3, n))
SAME = Dist("round(lognormal(log 400, 0.6))", lambda r, n: r.lognormal(math.log(400), 0.6, n))


def censor(
    rng: np.random.Generator, t: np.ndarray, budget: float, fail_rate: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Censor at ``budget``; with ``fail_rate``, each run may also fail at U(0.2, 1) * budget."""
    c = np.full(t.size, budget)
    if fail_rate:
        fails = rng.random(t.size) < fail_rate
        c = np.where(fails, np.floor(rng.uniform(0.2, 1.0, t.size) * budget), c)
    return np.minimum(t, c), t <= c


def budget_for(big: np.ndarray, censored: float) -> float:
    """The budget that censors a ``censored`` fraction of runs (the largest budget when 0)."""
    return float(big[-1]) if censored == 0 else float(np.quantile(big, 1 - censored))


def _covers(lo: float, hi: float, truth: float) -> bool:
    lo = -math.inf if math.isnan(lo) else lo
    hi = math.inf if math.isnan(hi) else hi
    return lo <= truth <= hi


def single_arm(dist: Dist, n: int, censored: float, fail_rate: float, experiments: int) -> dict[str, object]:
    """Coverage of the KM band (worst of the true deciles/quartiles in the budget), median, IQM."""
    big = dist.big()
    budget = budget_for(big, censored)
    true_median, true_iqm = float(np.median(big)), float(sps.trim_mean(big, 0.25))
    points = [float(np.quantile(big, p)) for p in (0.1, 0.25, 0.5, 0.75, 0.9)]
    points = [x for x in points if x < budget]
    true_f = [float(np.searchsorted(big, x, side="right") / big.size) for x in points]
    rng = np.random.default_rng([n, int(censored * 100), int(fail_rate * 100)])
    km_hits, med_hits, med_given, iqm_hits, lower_bound, cens = np.zeros(len(points)), 0, 0, 0, 0, 0.0
    for _ in range(experiments):
        t, s = censor(rng, dist.sample(rng, n), budget, fail_rate)
        cens += (~s).mean()
        km = stats.kaplan_meier(t, s)
        ep = km["episode"].to_numpy()
        for k, (x, f) in enumerate(zip(points, true_f, strict=True)):
            row = np.searchsorted(ep, x, side="right") - 1
            km_hits[k] += km["lo"].iloc[row] <= f + 1e-12 and f - 1e-12 <= km["hi"].iloc[row]
        med = stats.km_median(t, s)
        if not math.isnan(med["level"]):
            med_given += 1
            med_hits += _covers(med["lo"], med["hi"], true_median)
        q = stats.iqm_ci(t, s)
        iqm_hits += _covers(q["lo"], q["hi"], true_iqm)
        lower_bound += not q["exact"]
    return {
        "censored (observed)": cens / experiments,
        "KM band (worst point)": float(km_hits.min() / experiments) if points else math.nan,
        "median CI": med_hits / med_given if med_given else math.nan,
        "IQM CI": iqm_hits / experiments,
        "IQM a lower bound": lower_bound / experiments,
    }


def pair(a: Dist, b: Dist, n: int, censored: float, experiments: int) -> dict[str, object]:
    """Coverage of the P(A faster) CI on the common footing (both arms censored at one budget)."""
    big_a, big_b = a.big(), b.big()
    budget = budget_for(np.sort(np.concatenate([big_a, big_b])), censored)
    rng_t = np.random.default_rng(5)
    xa = np.minimum(a.sample(rng_t, TRUTH_DRAWS), budget)
    xb = np.minimum(b.sample(rng_t, TRUTH_DRAWS), budget)
    truth = float(np.mean(xa < xb) + 0.5 * np.mean(xa == xb))  # independent draws: P(T_A' < T_B')
    rng = np.random.default_rng([n, int(censored * 100), 7])
    hits = 0
    for _ in range(experiments):
        ta, sa = censor(rng, a.sample(rng, n), budget)
        tb, sb = censor(rng, b.sample(rng, n), budget)
        p = stats.prob_improvement(ta, sa, tb, sb)
        hits += _covers(*stats.newcombe_ci(p, n, n), truth)
    return {"truth": truth, "P(A faster) CI": hits / experiments}


def false_positives(
    name: str,
    sample: Callable[[np.random.Generator], tuple[np.ndarray, ...]],
    experiments: int,
    permutations: int,
    contrast: Callable[..., float] | None,
    seed: int,
) -> dict[str, object]:
    """Rates of the report's claim, of Gehan p < 0.05 and of the contrast test's p < 0.05."""
    rng = np.random.default_rng(seed)
    claims = gehan = logrank = old = 0
    for i in range(experiments):
        runs, raw = sample(rng)
        pairs = stats.compare(runs, n_permutations=permutations, seed=i)
        r = pairs.iloc[0]
        claims += "solves in fewer" in r["verdict"]
        gehan += r["gehan_p"] < 0.05
        logrank += r["logrank_p"] < 0.05
        if contrast is not None:
            old += contrast(*raw) < 0.05
    return {
        "scenario": name,
        "report claims a difference": claims / experiments,
        "Gehan perm. p < 0.05": gehan / experiments,
        "log-rank perm. p < 0.05": logrank / experiments,
        "old test p < 0.05": old / experiments if contrast is not None else math.nan,
    }


def runs_table(arms: dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray | None]]) -> pd.DataFrame:
    """Tidy run table: arm -> (t, solved, budget, failed mask)."""
    frames = []
    for arm, (t, s, budget, fails) in arms.items():
        status = np.where(fails, "FAILED", "FINISHED") if fails is not None else "FINISHED"
        frames.append(
            pd.DataFrame(
                {
                    "run_id": [f"{arm}{i}" for i in range(t.size)],
                    "algo": arm,
                    "seed": np.arange(t.size),
                    "status": status,
                    "solved": s,
                    "episodes_to_solve": np.where(s, t, np.nan),
                    "episodes": t,
                    "budget": budget,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _old_mannwhitney(ta: np.ndarray, tb: np.ndarray) -> float:
    return float(sps.mannwhitneyu(ta, tb).pvalue)


def _scipy_logrank(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray) -> float:
    if not (sa.any() or sb.any()):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.logrank(sps.CensoredData.right_censored(ta, ~sa), sps.CensoredData.right_censored(tb, ~sb))
    return float(res.pvalue)


def budgets_scenario(n: int) -> Callable[[np.random.Generator], tuple[pd.DataFrame, tuple]]:
    def sample(rng: np.random.Generator) -> tuple[pd.DataFrame, tuple]:
        ta, sa = censor(rng, SAME.sample(rng, n), 300)
        tb, sb = censor(rng, SAME.sample(rng, n), 1000)
        return runs_table({"a": (ta, sa, 300, None), "b": (tb, sb, 1000, None)}), (ta, tb)

    return sample


def small_n_scenario(n: int) -> Callable[[np.random.Generator], tuple[pd.DataFrame, tuple]]:
    budget = budget_for(LOGNORMAL.big(), 0.25)

    def sample(rng: np.random.Generator) -> tuple[pd.DataFrame, tuple]:
        ta, sa = censor(rng, LOGNORMAL.sample(rng, n), budget)
        tb, sb = censor(rng, LOGNORMAL.sample(rng, n), budget)
        return runs_table({"a": (ta, sa, budget, None), "b": (tb, sb, budget, None)}), (ta, sa, tb, sb)

    return sample


def failed_scenario(n: int) -> Callable[[np.random.Generator], tuple[pd.DataFrame, tuple]]:
    budget = budget_for(LOGNORMAL.big(), 0.25)

    def sample(rng: np.random.Generator) -> tuple[pd.DataFrame, tuple]:
        raw = LOGNORMAL.sample(rng, n)
        fails = rng.random(n) < 0.3
        c = np.where(fails, np.floor(rng.uniform(0.2, 1.0, n) * budget), budget)
        ta, sa = np.minimum(raw, c), raw <= c
        tb, sb = censor(rng, LOGNORMAL.sample(rng, n), budget)
        return (
            runs_table({"a": (ta, sa, budget, fails & ~sa), "b": (tb, sb, budget, None)}),
            (ta, sa, tb, sb),
        )

    return sample


def write_result(name: str, body: str, command: str) -> Path:
    """Write a benchmark's Markdown result with date, command and package versions."""
    now = datetime.now(UTC)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{now:%Y-%m-%d}.md"
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    path.write_text(
        f"# {name}\n\ndate: {now:%Y-%m-%d %H:%M UTC}\n\ncommand: `{command}`\n\nversions: {vers}\n\n{body}\n"
    )
    return path


def _progress(row: dict[str, object], t0: float) -> None:
    cells = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    print(f"[{time.perf_counter() - t0:5.0f} s] {cells}", file=sys.stderr, flush=True)


def _verdict(value: float, target: float, floor: float) -> str:
    return "yes" if value >= target else "within noise" if value >= floor else "NO"


def _pct(x: float) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else f"{x:.1%}"


def main(argv: list[str] | None = None) -> int:
    """Run the simulations, print and save the tables; exit 1 if a row misses its target."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_stats", description=__doc__.split("\n")[0])
    p.add_argument("--experiments", type=int, default=1000, help="simulated experiments per row")
    p.add_argument("--permutations", type=int, default=2000, help="Monte Carlo permutations per test")
    p.add_argument("--quick", action="store_true", help="one distribution, fewer rows (a smoke run)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    e = args.experiments
    cover_rows = []
    dists = [LOGNORMAL] if args.quick else [LOGNORMAL, BIMODAL]
    cells = [(c, 0.0) for c in (0.0, 0.25, 0.45)] + [(0.25, 0.2)]
    for dist in dists:
        for n in (5, 10, 20):
            for censored, fail_rate in cells:
                res = single_arm(dist, n, censored, fail_rate, e)
                label = f"{censored:.0%}" + (f" + {fail_rate:.0%} FAILED" if fail_rate else "")
                cover_rows.append({"distribution": dist.name, "seeds": n, "budget censors": label, **res})
                _progress(cover_rows[-1], t0)
    pair_rows = []
    effects = [(LOGNORMAL, SLOWER)] + ([] if args.quick else [(FAST, VERY_SLOW)])
    for a, b in effects:
        for n in (5, 10, 20):
            for censored in (0.0, 0.25, 0.45):
                res = pair(a, b, n, censored, e)
                pair_rows.append(
                    {"A": a.name, "B": b.name, "seeds": n, "budget censors": f"{censored:.0%}", **res}
                )
                _progress(pair_rows[-1], t0)
    fp_rows = []
    for n in (5, 10, 20):
        fp_rows.append(
            false_positives(
                f"same distribution, budgets 300 vs 1000, {n} seeds",
                budgets_scenario(n), e, args.permutations, _old_mannwhitney, seed=n,
            )
        )  # fmt: skip
    for n in (3, 4, 5):
        fp_rows.append(
            false_positives(
                f"same distribution and budget (25% censored), {n} seeds",
                small_n_scenario(n), e, args.permutations, _scipy_logrank, seed=100 + n,
            )
        )  # fmt: skip
    fp_rows.append(
        false_positives(
            "same distribution, 30% of A's runs FAILED early, 10 seeds",
            failed_scenario(10), e, args.permutations, None, seed=200,
        )
    )  # fmt: skip

    for row in fp_rows:
        _progress(row, t0)
    cover = pd.DataFrame(cover_rows)
    pairs = pd.DataFrame(pair_rows)
    fps = pd.DataFrame(fp_rows)
    cover_cols = ["KM band (worst point)", "median CI", "IQM CI"]
    se_cov = math.sqrt(0.95 * 0.05 / e)
    cover_floor = COVERAGE_TARGET - 2 * se_cov  # a row at the target is read as noise down to here
    cover["≥ 93%"] = cover[cover_cols].min(axis=1).map(lambda c: _verdict(c, COVERAGE_TARGET, cover_floor))
    pairs["≥ 93%"] = pairs["P(A faster) CI"].map(lambda c: _verdict(c, COVERAGE_TARGET, cover_floor))
    worst_cover = min(float(cover[c].min()) for c in cover_cols)
    worst_pair = float(pairs["P(A faster) CI"].min())
    worst_fp = float(
        fps[["report claims a difference", "Gehan perm. p < 0.05", "log-rank perm. p < 0.05"]].max().max()
    )
    se_fp = math.sqrt(0.05 * 0.95 / e)
    fp_bound = FPR_TARGET + 2 * se_fp
    ok = min(worst_cover, worst_pair) >= cover_floor and worst_fp <= fp_bound

    def show(df: pd.DataFrame, pct: list[str]) -> str:
        return markdown_table(df.assign(**{c: df[c].map(_pct) for c in pct}))

    body = (
        f"{e} simulated experiments per row; {args.permutations} Monte Carlo permutations per test "
        f"where the splits are too many to enumerate (exact up to {stats.EXACT_LIMIT}). Monte Carlo SE: "
        f"{se_cov:.1%} for a coverage near 95%, {se_fp:.1%} for a rate near 5%.\n\n"
        "## Coverage of the 95% intervals (target >= 93%)\n\n"
        "KM band: pointwise, at the true 10/25/50/75/90% quantiles that lie inside the budget (the "
        "worst of them). Median: KM median CI (at 5 seeds the exact [first, last] interval, whose "
        "level is 1 - 2/32 = 93.75% by the binomial law, more with tied integer episodes, so 5-seed "
        "rows sit within noise of 93%). IQM: two-sided while exact, one-sided (lower limit) when "
        "the report calls it a lower bound (share of experiments in 'IQM a lower bound'). '≥ 93%': "
        f"the row's worst interval; 'within noise' means within 2 SE ({2 * se_cov:.1%}) below.\n\n"
        + show(cover, ["censored (observed)", *cover_cols, "IQM a lower bound"])
        + "\n\nP(A faster) on the common footing (Newcombe's score interval); truth by "
        f"{TRUTH_DRAWS:,} draws.\n\n"
        + show(pairs.assign(truth=pairs["truth"].map(lambda x: f"{x:.3f}")), ["P(A faster) CI"])
        + f"\n\n## False positives at alpha = 5% (target <= 5% + 2 SE = {fp_bound:.1%})\n\n"
        'A false positive is the report\'s verdict "A solves in fewer episodes than B" on two arms '
        "with one distribution. 'old test': the previous report's Mann-Whitney on "
        "censored-at-count values (budget rows) or scipy's asymptotic log-rank (small-n rows), for "
        "contrast.\n\n"
        + show(
            fps,
            [
                "report claims a difference",
                "Gehan perm. p < 0.05",
                "log-rank perm. p < 0.05",
                "old test p < 0.05",
            ],
        )
        + f"\n\nWorst coverage: {worst_cover:.1%} (single arm), {worst_pair:.1%} (P(A faster)); "
        f"worst false-positive rate: {worst_fp:.1%}. All within bounds (coverage >= 93% - 2 SE, "
        f"false positives <= 5% + 2 SE): {'yes' if ok else 'NO'}."
        f"\n\nTotal time {time.perf_counter() - t0:.0f} s."
    )
    command = "python -m benchmarks.bench_stats " + " ".join(argv if argv is not None else sys.argv[1:])
    print(body)
    print(f"\nwritten to {write_result('bench_stats', body, command.strip())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
