"""Coverage of the bootstrap CI for the median episodes-to-solve at 10 seeds.

    python -m benchmarks.bench_stats [--experiments 1000] [--seeds 10] [--methods percentile BCa basic]

For each synthetic distribution of episodes-to-solve with a known median, draws ``--experiments``
experiments of ``--seeds`` runs, computes the 95% CI of :func:`analysis.stats.bootstrap_ci`
(seeded, the report's resample count) by each bootstrap method, and counts how often it covers
the true median. Target: >= 93%. The table is printed and written, with date, command and
versions, to ``benchmarks/results/bench_stats-<date>.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from analysis import stats
from analysis.report import markdown_table, versions

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.93


@dataclass(frozen=True)
class Distribution:
    """A distribution of episodes-to-solve: a sampler and its true median."""

    name: str
    sample: Callable[[np.random.Generator, int], np.ndarray]
    median: float


def _mixture_median() -> float:
    def cdf(x: float) -> float:
        return 0.7 * sps.norm.cdf(x, 120, 15) + 0.3 * sps.norm.cdf(x, 250, 20)

    return optimize.brentq(lambda x: cdf(x) - 0.5, 50, 400)


DISTRIBUTIONS = [
    Distribution("normal(200, 40)", lambda r, n: r.normal(200, 40, n), 200.0),
    Distribution("lognormal(log 150, 0.5)", lambda r, n: r.lognormal(math.log(150), 0.5, n), 150.0),
    Distribution("100 + exponential(50)", lambda r, n: 100 + r.exponential(50, n), 100 + 50 * math.log(2)),
    Distribution("gamma(2, 50)", lambda r, n: r.gamma(2.0, 50.0, n), float(sps.gamma.ppf(0.5, 2, scale=50))),
    # integer episodes with ties: the median of round(X) is round(150.3) = 150
    Distribution(
        "round(lognormal(log 150.3, 0.4))", lambda r, n: np.round(r.lognormal(math.log(150.3), 0.4, n)), 150.0
    ),
    Distribution(
        "bimodal 0.7 N(120,15) + 0.3 N(250,20)",
        lambda r, n: np.where(r.random(n) < 0.7, r.normal(120, 15, n), r.normal(250, 20, n)),
        _mixture_median(),
    ),
]


def coverage(dist: Distribution, method: str, experiments: int, seeds: int) -> dict[str, float]:
    """Fraction of experiments whose CI covers the true median, and the median CI width."""
    rng = np.random.default_rng(12345)
    hits, widths = 0, []
    for i in range(experiments):
        x = dist.sample(rng, seeds)
        lo, hi = stats.bootstrap_ci((x,), stats.median, method=method, seed=i)
        hits += lo <= dist.median <= hi
        widths.append(hi - lo)
    return {"coverage": hits / experiments, "width": float(np.median(widths))}


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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print and save the table; exit 1 if the report's method misses the target."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_stats", description=__doc__.split("\n")[0])
    p.add_argument("--experiments", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["percentile", "BCa", "basic", "expanded-percentile"])
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for dist in DISTRIBUTIONS:
        for method in args.methods:
            res = coverage(dist, method, args.experiments, args.seeds)
            rows.append(
                {
                    "distribution": dist.name,
                    "true median": f"{dist.median:.1f}",
                    "method": method,
                    "nominal": "95%",
                    "coverage": f"{res['coverage']:.1%}",
                    "median CI width": f"{res['width']:.1f}",
                    "≥ 93%": "yes" if res["coverage"] >= TARGET else "NO",
                    "_cov": res["coverage"],
                }
            )
    table = pd.DataFrame(rows)
    worst = table.groupby("method")["_cov"].min()
    used = stats.BOOTSTRAP_METHOD
    se = math.sqrt(0.95 * 0.05 / args.experiments)
    body = (
        f"{args.experiments} simulated experiments of {args.seeds} seeds per row; "
        f"{stats.N_RESAMPLES} resamples per CI (seeded); Monte Carlo SE of a coverage near 95% "
        f"is {se:.1%}.\n\n"
        + markdown_table(table.drop(columns="_cov"))
        + "\n\n"
        + "Worst coverage per method: "
        + ", ".join(f"{m} {c:.1%}" for m, c in worst.items())
        + f".\n\nThe report uses `{used}` (analysis.stats.BOOTSTRAP_METHOD): worst coverage "
        + (f"{worst[used]:.1%}." if used in worst else "not measured.")
        + f"\n\nTotal time {time.perf_counter() - t0:.0f} s."
    )
    command = "python -m benchmarks.bench_stats " + " ".join(argv if argv is not None else sys.argv[1:])
    print(body)
    print(f"\nwritten to {write_result('bench_stats', body, command.strip())}")
    return 0 if worst.get(used, 0.0) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
