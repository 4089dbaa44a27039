"""Clipped double DQN's two Q-networks stacked into one batched pass vs run one after the other.

    python -m benchmarks.bench_clipped_pair                       # batch 64, 128, 256; ~6 min
    python -m benchmarks.bench_clipped_pair --batch-sizes 64 --steps 5000 --repeats 1

For each batch size, ``algo=clipped_double_dqn`` (its defaults but the batch size) trains on
CartPole-v1 for ``--steps`` env steps, untracked, in this process with one torch thread, once with
the nets stacked (``rlexp.nets.StackedMLP``, what the agent does) and once per net
(``DQNAgent.stack_clipped = False``), alternating, ``--repeats`` times. The table gives the median
env steps per second of each, their ratio, and whether the two runs returned the same episodes
(they must: the stacked pass gives the same floats on these shapes). Run it alone: the figures are
wall-clock. The table is printed and written, with date, command and versions, under
``benchmarks/results/clipped-pair-<date>.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.bench_algos import RESULTS, write_results


def one_run(batch_size: int, steps: int, stacked: bool) -> tuple[float, list[float]]:
    """Env steps per second and the episode returns of one run."""
    from rlexp.algos.dqn import DQNAgent
    from rlexp.compose import compose_config
    from rlexp.train import train

    cfg = compose_config(["algo=clipped_double_dqn", f"algo.batch_size={batch_size}", f"train.max_steps={steps}",
                          "train.max_episodes=100000", "train.stop_on_solve=false", "tracking.enabled=false",
                          "train.save_model=false", "seed=0"])
    DQNAgent.stack_clipped = stacked
    try:
        t = time.perf_counter()
        r = train(cfg)
        return r.env_steps / (time.perf_counter() - t), list(r.returns)
    finally:
        DQNAgent.stack_clipped = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_clipped_pair", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = ["| batch size | env steps/s, stacked | env steps/s, per net | ratio | same episodes |",
            "|---|---|---|---|---|"]
    for bs in args.batch_sizes:
        rates: dict[bool, list[float]] = {True: [], False: []}
        same = True
        for _ in range(args.repeats):
            returns = {}
            for stacked in (True, False):
                rate, returns[stacked] = one_run(bs, args.steps, stacked)
                rates[stacked].append(rate)
                print(f"bench_clipped_pair: batch {bs} {'stacked' if stacked else 'per net'}: {rate:.0f} env steps/s",
                      file=sys.stderr, flush=True)
            same = same and returns[True] == returns[False]
        s, n = statistics.median(rates[True]), statistics.median(rates[False])
        rows.append(f"| {bs} | {s:.0f} | {n:.0f} | {s / n:.2f}x | {'yes' if same else '**no**'} |")
    text = "\n".join(rows)
    command = "python -m benchmarks.bench_clipped_pair " + " ".join(sys.argv[1:] if argv is None else argv)
    out = write_results(args.out, "clipped-pair", "bench_clipped_pair", command,
                        f"{args.steps:,} env steps per run, {args.repeats} repeat(s), algo=clipped_double_dqn "
                        "defaults, CartPole-v1, seed 0, one torch thread", text)
    print(text)
    print(f"\nbench_clipped_pair: written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
