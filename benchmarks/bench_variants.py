"""Compare labelled config variants over a few seeds: the tool behind the DQN defaults.

    python -m benchmarks.bench_variants --file benchmarks/variants/dqn-tuning.txt --seeds 0 1 2 \\
        --override train.max_episodes=450 --jobs 2
    python -m benchmarks.bench_variants --variant "ln: algo=dqn_target algo.layer_norm=true" --seeds 0 1

A variant is ``label: override override ...`` (one per line in ``--file``; ``#`` starts a comment).
Every variant runs on every seed, untracked, in a process pool (``--jobs``, one torch thread
each), and stops when solved. Ctrl-C (or SIGTERM) stops the runs in flight and starts no other;
the runs that finished are still written, marked as an interrupted table. The table gives, per
variant, the seeds solved, the median and the range of episodes-to-solve, and per seed the
rolling mean return (window 100, or fewer at the start) every 50 episodes, which shows whether an
unsolved run was climbing, plateauing or collapsing. It is printed and written, with date, command and versions, under
``benchmarks/results/variants-<name>-<date>.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.bench_algos import RESULTS, interrupted_note, run_jobs, write_results


@dataclass
class Trace:
    label: str
    seed: int
    solved_at: int | None
    episodes: int
    env_steps: int
    wall_time_s: float
    rolling: list[float] = field(default_factory=list)
    error: str | None = None


def parse_variants(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``label: overrides`` lines -> (label, overrides); blank lines and ``#`` comments skipped."""
    out: list[tuple[str, list[str]]] = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        label, sep, rest = line.partition(":")
        if not sep or not label.strip() or " " in label.strip():
            raise SystemExit(f"bench_variants: a variant is 'label: overrides...', got {raw.strip()!r}")
        out.append((label.strip(), rest.split()))
    labels = [lb for lb, _ in out]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"bench_variants: duplicate labels in {labels}")
    return out


def rolling_every(returns: list[float], every: int = 50, window: int = 100) -> list[float]:
    """Mean of the last ``window`` returns at episodes every, 2*every, ..."""
    return [statistics.fmean(returns[max(0, i - window):i]) for i in range(every, len(returns) + 1, every)]


def run_one(label: str, overrides: tuple[str, ...], seed: int) -> Trace:
    from rlexp.compose import compose_config
    from rlexp.train import train

    cfg = compose_config([*overrides, f"seed={seed}", "tracking.enabled=false", "train.save_model=false"])
    t = time.perf_counter()
    try:
        r = train(cfg)
    except Exception as e:  # a diverged variant is a result
        return Trace(label, seed, None, 0, 0, time.perf_counter() - t, error=f"{type(e).__name__}: {e}")
    return Trace(label, seed, r.episodes_to_solve, r.episodes, r.env_steps, r.wall_time_s,
                 rolling_every([float(x) for x in r.returns]))


def table(variants: list[tuple[str, list[str]]], traces: list[Trace]) -> str:
    rows = ["| variant | overrides | solved | median episodes-to-solve | range |",
            "|---|---|---|---|---|"]
    for label, ovs in variants:
        ts = [t for t in traces if t.label == label]
        solved = sorted(t.solved_at for t in ts if t.solved_at is not None)
        med = f"{statistics.median(solved):.0f}" if solved else "not solved"
        rng = f"{solved[0]}–{solved[-1]}" if solved else "–"
        rows.append(f"| {label} | `{' '.join(ovs)}` | {len(solved)}/{len(ts)} | {med} | {rng} |")
    rows += ["", "| variant | seed | solved at | episodes | env steps | wall s | rolling mean every 50 episodes |",
             "|---|---|---|---|---|---|---|"]
    for t in sorted(traces, key=lambda t: ([lb for lb, _ in variants].index(t.label), t.seed)):
        trace = t.error or " ".join(f"{x:.0f}" for x in t.rolling)
        rows.append(f"| {t.label} | {t.seed} | {t.solved_at if t.solved_at is not None else '–'} | {t.episodes} | "
                    f"{t.env_steps} | {t.wall_time_s:.0f} | {trace} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_variants", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", type=Path, help="variants, one 'label: overrides' per line")
    p.add_argument("--variant", action="append", default=[], help="a 'label: overrides' variant (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--override", nargs="*", default=[], help="overrides added to every variant")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--name", default=None, help="results file name (default: the --file stem)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    lines = (args.file.read_text().splitlines() if args.file else []) + args.variant
    variants = parse_variants(lines)
    if not variants:
        p.error("give --file or --variant")
    from rlexp.compose import compose_config

    for _, ovs in variants:  # refuse a bad override before any run starts
        compose_config([*ovs, *args.override])
    jobs = [(lb, (*ovs, *args.override), s) for lb, ovs in variants for s in args.seeds]
    traces: list[Trace] = []
    interrupted = run_jobs(run_one, jobs, args.jobs, traces, lambda tr: print(
        f"bench_variants: {tr.label} seed {tr.seed}: solved at {tr.solved_at} "
        f"({tr.episodes} episodes, {tr.wall_time_s:.0f} s)", file=sys.stderr, flush=True))
    text = interrupted_note(interrupted, len(traces), len(jobs)) + table(variants, traces)
    name = args.name or (args.file.stem if args.file else "variants")
    command = "python -m benchmarks.bench_variants " + " ".join(sys.argv[1:] if argv is None else argv)
    out = write_results(args.out, f"variants-{name}", f"bench_variants: {name}", command,
                        f"seeds {args.seeds}, extra overrides `{' '.join(args.override) or '(none)'}`", text)
    print(text)
    print(f"\nbench_variants: written {out}", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
