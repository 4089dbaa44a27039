"""Time to produce the comparison report for 5 algorithms x 10 seeds (~300 episodes a run).

    python -m benchmarks.bench_report [--algos 5] [--seeds 10] [--max-episodes 300]

Fills a temporary SQLite MLflow store with synthetic contract-shaped runs
(:func:`analysis.testing.fill_store`), then times :func:`analysis.report.make_report` stage by
stage, logging included. Target: under 60 s. The table is printed and written, with date,
command and versions, to ``benchmarks/results/bench_report-<date>.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from analysis.collect import RunQuery
from analysis.report import make_report, markdown_table
from analysis.testing import fill_store
from benchmarks.bench_stats import write_result

TARGET_S = 60.0
MIDPOINTS = [80.0, 95.0, 100.0, 120.0, 300.0]  # learning-curve midpoints; the last never solves


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print and save the table; exit 1 if the report takes too long."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_report", description=__doc__.split("\n")[0])
    p.add_argument("--algos", type=int, default=5)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--max-episodes", type=int, default=300)
    args = p.parse_args(argv)
    midpoints = {
        f"algo{i}": MIDPOINTS[i % len(MIDPOINTS)] * (1 + i // len(MIDPOINTS)) for i in range(args.algos)
    }
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        fill_store(uri, "CartPole-v1", midpoints, seeds=range(args.seeds), max_episodes=args.max_episodes)
        fill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = make_report(
            RunQuery(experiment="CartPole-v1"),
            Path(tmp) / "report",
            tracking_uri=uri,
            command="benchmarks.bench_report",
        )
        total = time.perf_counter() - t0
        episodes = len(pd.read_csv(result.paths["episodes"]))
        html_kb = result.paths["html"].stat().st_size / 1024
    rows = [{"stage": k, "seconds": f"{v:.2f}"} for k, v in result.seconds.items()]
    rows.append({"stage": "**total report**", "seconds": f"**{total:.2f}**"})
    runs = args.algos * args.seeds
    body = (
        f"{args.algos} algorithms x {args.seeds} seeds = {runs} FINISHED runs, {episodes} episodes "
        f"in all ({episodes / runs:.0f} a run on average; runs stop when solved, at most "
        f"{args.max_episodes}); filling the store took {fill_s:.1f} s (not counted).\n\n"
        + markdown_table(pd.DataFrame(rows))
        + f"\n\nreport.html: {html_kb:.0f} KiB. Target < {TARGET_S:.0f} s: "
        + ("met." if total < TARGET_S else "MISSED.")
    )
    command = "python -m benchmarks.bench_report " + " ".join(argv if argv is not None else sys.argv[1:])
    print(body)
    print(f"\nwritten to {write_result('bench_report', body, command.strip())}")
    return 0 if total < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
