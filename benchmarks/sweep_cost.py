"""Where a sweep's time goes: its trials' cost by what they ran, read from its study.

    python -m benchmarks.sweep_cost outputs/bench_sweep_seeds/<stamp>/optuna.db:STUDY [DB:STUDY ...]
    python -m benchmarks.sweep_cost DB:STUDY --by algo algo.batch_size

A sweep's wall time is what its trials and validation cost, and that cost depends on which
configurations the sampler proposes: on CartPole a clipped double DQN step with a 256 batch
costs several times a double DQN step with a 64 batch. For each study (finished or still
running; nothing is run) this prints the trials phase (the first trial's start to the last
one's end), the worker time (the sum of the finished trials' durations; over the phase it gives
the mean number of busy workers), and one row per value of the ``--by`` parameters (default: the
sweep's group keys, its parameters without a dot, e.g. ``algo``): trials, complete / pruned /
failed, how many trials solved at least one of their seeds (and how many seeds: where the
sampler found configurations that work, pruned or not), env steps, worker minutes, share of the
worker time and env steps per worker-minute.
The validation's runs (recorded on the study as each ends) are a row of their own; their worker
time is known for runs recorded with it. Lost and running trials are counted in the header, not
in the rows (a trial records its env steps when it ends). The table is printed and written with
date, command and versions to ``benchmarks/results/sweep-cost-<date>.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_sweep import RESULTS, open_study, versions
from benchmarks.bench_sweep_seeds import _trials_span


@dataclass
class Cost:
    """What a group of runs cost."""

    label: str
    runs: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    env_steps: int = 0
    worker_s: float = 0.0
    timed: int = 0  # runs whose duration is known
    solving: int = 0  # trials that solved at least one seed
    seeds_solved: int = 0

    def add(self, state: str, env_steps: int, seconds: float | None, solved: int = 0) -> None:
        """One run ending in ``state``; ``solved``: how many of its seeds it solved (a trial's)."""
        self.runs += 1
        self.solving += solved > 0
        self.seeds_solved += solved
        if state in ("complete", "pruned", "failed"):
            setattr(self, state, getattr(self, state) + 1)
        self.env_steps += env_steps
        if seconds is not None:
            self.worker_s += seconds
            self.timed += 1

    @property
    def steps_per_min(self) -> float:
        return self.env_steps / (self.worker_s / 60) if self.worker_s > 0 and self.timed == self.runs else math.nan


def default_by(trials: Iterable[Any]) -> list[str]:
    """The sweep's group keys: the parameters without a dot (``algo``), in first-seen order."""
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.params if "." not in k and k not in keys]
    return keys


def _duration_s(t: Any) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def trial_costs(trials: Sequence[Any], by: Sequence[str]) -> list[Cost]:
    """One :class:`Cost` per value of the ``by`` parameters over the counted finished trials,
    most worker time first."""
    from optuna.trial import TrialState

    from rlexp.sweep.study import counts

    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    groups: dict[str, Cost] = {}
    for t in trials:
        if not counts(t):
            continue
        label = " ".join(f"{k}={t.params[k]}" for k in by if k in t.params) or "all trials"
        solved = sum(e is not None for e in t.user_attrs.get("episodes_to_solve") or [])
        groups.setdefault(label, Cost(label)).add(state[t.state], int(t.user_attrs.get("env_steps", 0)),
                                                 _duration_s(t), solved)
    return sorted(groups.values(), key=lambda c: (-c.worker_s, c.label))


def validation_cost(records: dict[str, dict[str, dict[str, Any]]]) -> Cost | None:
    """The validation's runs as one :class:`Cost` (None when there were none)."""
    cost = Cost("validation runs")
    for per_seed in records.values():
        for r in per_seed.values():
            cost.add("complete" if r.get("solved_at") is not None else "unsolved", int(r.get("env_steps", 0)),
                     r.get("wall_time_s"))
    return cost if cost.runs else None


def study_section(study: Any, spec: str, by: Sequence[str] | None) -> str:
    """The Markdown section of one study: header line and table."""
    from rlexp.sweep.study import tally

    trials = study.get_trials(deepcopy=False)
    keys = list(by) if by else default_by(trials)
    rows = trial_costs(trials, keys)
    val = validation_cost(study.user_attrs.get("validation") or {})
    span = _trials_span(trials)
    worker = sum(c.worker_s for c in rows)
    total = worker + (val.worker_s if val else 0.0)
    t = tally(trials)
    head = (f"## {study.study_name} in {spec}\n\n"
            f"trials: {t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed, {t['lost']} lost, "
            f"{t['running']} running; trials phase {_min(span)} min (first start to last end), trial worker time "
            f"{_min(worker)} min" + (f" (a mean of {worker / span:.2f} busy workers)" if span and span > 0 else "")
            + (f"; validation: {val.runs} runs, {val.env_steps:,} env steps, "
               + (f"{_min(val.worker_s)} worker min" if val.timed == val.runs else "worker time not recorded")
               if val else "; no validation runs recorded") + "\n\n")
    lines = [f"| {' '.join(keys) or 'trials'} | runs | complete / pruned / failed | solving a seed (seeds solved) | "
             "env steps | worker min | share of worker time | env steps per worker-min |",
             "|---|---|---|---|---|---|---|---|"]
    for c in [*rows, *([val] if val else [])]:
        share = f"{c.worker_s / total:.0%}" if total > 0 and c.timed == c.runs else "–"
        rate = "–" if math.isnan(c.steps_per_min) else f"{c.steps_per_min:,.0f}"
        validation = c.label == "validation runs"
        outcome = f"{c.complete} solved" if validation else f"{c.complete} / {c.pruned} / {c.failed}"
        solving = "–" if validation else f"{c.solving} ({c.seeds_solved})"
        worker_min = _min(c.worker_s) if c.timed == c.runs else "–"
        lines.append(f"| {c.label} | {c.runs} | {outcome} | {solving} | {c.env_steps:,} | {worker_min} | {share} | "
                     f"{rate} |")
    return head + "\n".join(lines) + "\n"


def _min(seconds: float) -> str:
    return "–" if seconds is None or math.isnan(seconds) else f"{seconds / 60:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", metavar="DB:STUDY", help="an SQLite file and a study name")
    p.add_argument("--by", nargs="+", default=None, help="parameters to group the trials by (default: the group keys)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results file")
    args = p.parse_args(argv)
    opened = []
    for spec in args.studies:  # every study is checked before any output
        try:
            opened.append((spec, open_study(spec)))
        except ValueError as e:
            print(f"sweep_cost: error: {spec}: {e}", file=sys.stderr)
            return 2
    now = datetime.now(UTC)
    command = "python -m benchmarks.sweep_cost " + " ".join(sys.argv[1:] if argv is None else argv)
    body = "\n".join(study_section(study, spec, args.by) for spec, study in opened)
    text = f"# sweep_cost\n\ndate: {now:%Y-%m-%d %H:%M UTC}\n\ncommand: `{command}`\n\nversions: {versions()}\n\n{body}"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"sweep-cost-{now:%Y-%m-%d-%H%M}.md"
    out.write_text(text)
    print(f"sweep_cost: written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
