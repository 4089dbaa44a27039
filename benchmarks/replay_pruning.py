"""What a pruner setting would have saved on a sweep already run without one: an offline replay.

    python -m benchmarks.replay_pruning sweep=dqn_cartpole \\
        baseline=outputs/bench_sweep/2026-11-22-003145/optuna.db:bench-dqn_cartpole-unpruned-2026-11-22-003145 \\
        --setting "median10: pruner.name=median pruner.args={n_startup_trials:10,n_warmup_steps:150}" \\
        --orders 40

A no-pruner study holds, for every trial, its value every ``pruner.report_every`` episodes of each
seed. For the objective's mean over seeds that gives back each seed's rolling mean return at those
episodes, hence its returns in blocks of ``report_every`` episodes (CartPole's return is its
length, so also its env steps, rescaled to the steps the trial recorded), and when it solved.
The replay feeds those episodes (with ``pruner.lockstep``, every seed of a trial side by side),
trial by trial in their order (one worker), through the sweep's
real :class:`~rlexp.sweep.objective.Objective` (its reporter, bound and the configured Optuna
pruner) in an in-memory study, and counts the env steps each trial would have run.

What it cannot tell: a sampler such as TPE picks later trials from earlier results, so a real
pruned sweep samples other trials than the study replayed; and it replays one worker. It shows
which trials a setting would stop and what that saves on *these* trials, including whether it
stops any of the trials the sampler's good group was made of (``top`` column: the baseline's best
``--top`` trials that the setting prunes; ``good group`` column: those of the trials TPE's good group
held at some point that it prunes). ``--orders N`` also replays N random orders of the
trials after the sampler's random start (``--keep``, TPE's 10), for the spread of the saving.
The settings are sweep overrides (``pruner.*``), checked like any sweep's; default: the sweep's
own pruner and the bound alone. The table is printed and written, with date, command and
versions, under ``benchmarks/results/replay-<date>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.bench_sweep import PRUNER_ONLY, RESULTS, first_difference, open_study, versions


@dataclass(frozen=True)
class SeedTrace:
    """One seed of a replayed trial: its per-episode returns (block means), and when it solved."""

    returns: tuple[float, ...]
    solved_at: int | None
    rolling: dict[int, float]  # the rolling mean return at each report episode (unsolved so far)
    steps_per_return: float = 1.0  # env steps per unit of return (CartPole: 1; rescaled to the record)


def current_values(values: dict[int, float], finished: Sequence[float], index: int, n_seeds: int,
                   budget: int, worst: float, unstarted_as_worst: bool) -> dict[int, float]:
    """Seed ``index``'s own value at each of its report episodes, from the trial's (mean) values.

    ``unstarted_as_worst``: the reporter of session 5 on counts each seed not yet run as ``worst``;
    the one before left them out."""
    n = n_seeds if unstarted_as_worst else index + 1
    later = (n_seeds - index - 1) * worst if unstarted_as_worst else 0.0
    lo, hi = index * budget, (index + 1) * budget
    return {step - lo: n * v - sum(finished[:index]) - later for step, v in values.items() if lo < step <= hi}


def unstarted_as_worst(trial: FrozenTrial, budget: int, worst: float, n_seeds: int) -> bool:
    """Which reporter wrote ``trial``'s values: its first seed's last value tells."""
    first = trial.user_attrs["seed_values"][0]
    v = trial.intermediate_values[budget]
    return abs(v - (first + (n_seeds - 1) * worst) / n_seeds) < abs(v - first)


def seed_trace(own: dict[int, float], solved_at: int | None, budget: int, threshold: float,
               penalty: float, window: int) -> SeedTrace:
    """Block returns from the seed's value at each report episode (the censoring rule inverted)."""
    rolling = {}
    for e in sorted(own):
        if own[e] <= budget:  # solved by then
            break
        shortfall = (own[e] - budget) / penalty - 1.0
        rolling[e] = threshold - shortfall * max(abs(threshold), 1.0)
    cum: dict[int, float] = {0: 0.0}
    returns: list[float] = []
    for e in sorted(rolling):
        cum[e] = rolling[e] * min(e, window) + (cum.get(e - window, 0.0) if e > window else 0.0)
        prev = max(k for k in cum if k < e)
        returns += [max(0.0, (cum[e] - cum[prev]) / (e - prev))] * (e - prev)
    if solved_at is not None:  # the episodes up to the solve: at the threshold
        returns += [threshold] * (solved_at - len(returns))
    return SeedTrace(tuple(returns[:budget]), solved_at, rolling)


def traces(trial: FrozenTrial, budget: int, threshold: float, penalty: float, window: int,
           n_seeds: int) -> list[SeedTrace]:
    """Every seed of a complete no-pruner trial, with the returns rescaled to its recorded env steps."""
    from rlexp.sweep.objective import seed_value

    worst = seed_value(None, budget, penalty, 1.0)  # a seed not yet run, as the reporter counts it
    fmt = unstarted_as_worst(trial, budget, worst, n_seeds)
    finished = trial.user_attrs["seed_values"]
    out = [seed_trace(current_values(trial.intermediate_values, finished, i, n_seeds, budget, worst, fmt),
                      trial.user_attrs["episodes_to_solve"][i], budget, threshold, penalty, window)
           for i in range(n_seeds)]
    scale = trial.user_attrs["env_steps"] / max(1.0, sum(sum(s.returns) for s in out))
    return [dataclasses.replace(s, steps_per_return=scale) for s in out]


def replay_objective(sweep: Any, by_number: dict[int, list[SeedTrace]]) -> Any:
    """The sweep's Objective, each seed fed from ``by_number[baseline trial number]``."""
    from rlexp.loops import EpisodeInfo
    from rlexp.sweep.objective import Objective
    from rlexp.train import TrainResult

    class Replayed(Objective):
        def run_seed(self, rcfg: Any, trial: optuna.Trial, index: int, **kwargs: Any) -> TrainResult:
            s = by_number[int(trial.user_attrs["replays"])][index]
            callback, steps = kwargs["callback"], 0.0
            for e, ret in enumerate(s.returns, 1):
                steps += ret * s.steps_per_return
                solved = s.solved_at if s.solved_at is not None and e >= s.solved_at else None
                callback(EpisodeInfo(e, ret, int(ret), int(steps), s.rolling.get(e, ret), solved))
                if solved:
                    break
            return TrainResult(s.solved_at is not None, s.solved_at, e, int(steps), 0.0, list(s.returns[:e]))

        def run_lockstep(self, trial: optuna.Trial, jobs: Sequence[Any], *args: Any) -> float:
            seeds = by_number[int(trial.user_attrs["replays"])]
            return ls.coordinate([_Fed(trace_messages(s, job, rcfg)) for s, job in zip(seeds, jobs, strict=True)],
                                 *args)

    from rlexp.compose import compose_config
    from rlexp.sweep import lockstep as ls

    rcfg = compose_config(list(sweep.cfg.base))
    return Replayed(sweep, None, None)


def trace_messages(s: SeedTrace, job: Any, rcfg: Any) -> Any:
    """What seed ``s``'s process would send in lockstep (a generator: send it the trial's words)."""
    from rlexp.envs import check_compatible, solve_threshold
    from rlexp.loops import EpisodeInfo
    from rlexp.sweep.lockstep import Pause
    from rlexp.sweep.objective import censor_penalty, final_value, tail_mean

    budget, window = int(rcfg.train.max_episodes), int(rcfg.solve.window)
    threshold = solve_threshold(rcfg, check_compatible(rcfg))
    penalty = censor_penalty(job.penalty, budget)
    pause = Pause(None, budget, job.every, threshold, penalty, window, job.max_return, rcfg.train.stop_on_solve)
    steps, e = 0.0, 0
    for e, ret in enumerate(s.returns, 1):
        steps += ret * s.steps_per_return
        solved = s.solved_at if s.solved_at is not None and e >= s.solved_at else None
        msg = pause.message(EpisodeInfo(e, ret, int(ret), int(steps), s.rolling.get(e, ret), solved))
        if msg is not None:
            word = yield msg
            if word[0] != "go":
                yield ("stopped",)
                return
        if solved:
            break
    yield ("done", s.solved_at, final_value(s.solved_at, tail_mean(s.returns[:e], window), threshold, budget, penalty),
           int(steps))


class _Fed:
    """A :class:`~rlexp.sweep.lockstep.Channel` fed by :func:`trace_messages`."""

    def __init__(self, messages: Any) -> None:
        self.messages, self.pending = messages, next(messages)

    def recv(self) -> tuple[Any, ...]:
        return tuple(self.pending)

    def send(self, word: tuple[str, str]) -> None:
        self.pending = self.messages.send(word)


@dataclass
class Replay:
    study: optuna.Study  # the in-memory study replayed
    env_steps: int
    best: float | None
    pruned: list[int]  # baseline trial numbers
    values: dict[int, float | None]  # by baseline trial number (None: pruned)


def replay(sweep: Any, trials: Sequence[FrozenTrial], by_number: dict[int, list[SeedTrace]]) -> Replay:
    """Run ``trials`` (baseline trials, in this order) through the sweep's objective and pruner."""
    from rlexp.sweep.study import make_pruner

    # the objective stops at n_trials: the replay runs every baseline trial, whatever the setting says
    sweep = dataclasses.replace(sweep, cfg=dataclasses.replace(sweep.cfg, n_trials=len(trials)))
    budget = sweep_budget(sweep)
    study = optuna.create_study(direction="minimize", pruner=make_pruner(sweep.cfg, budget),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for t in trials:
        study.enqueue_trial(t.params, user_attrs={"replays": t.number})
    study.optimize(replay_objective(sweep, by_number), n_trials=len(trials))
    done = study.get_trials(deepcopy=False)
    values = [t.value for t in done if t.state == TrialState.COMPLETE and t.value is not None]
    return Replay(study, sum(int(t.user_attrs.get("env_steps", 0)) for t in done), min(values) if values else None,
                  [int(t.user_attrs["replays"]) for t in done if t.state == TrialState.PRUNED],
                  {int(t.user_attrs["replays"]): t.value if t.state == TrialState.COMPLETE else None for t in done})


def good_group_members(trials: Sequence[FrozenTrial]) -> set[int]:
    """The trials that were ever in TPE's good group (Optuna's default gamma: the best ceil(n/10)
    complete trials once n have finished), taking the trials as finished in their order: pruning
    one of them changes what TPE learns from, so a pruned sweep may then draw other trials."""
    out: set[int] = set()
    for n in range(1, len(trials) + 1):
        done = sorted(trials[:n], key=lambda t: float(t.value if t.value is not None else math.inf))
        out |= {t.number for t in done[:math.ceil(0.1 * n)]}
    return out


def sweep_budget(sweep: Any) -> int:
    from rlexp.compose import compose_config

    return int(compose_config(list(sweep.cfg.base)).train.max_episodes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("args", nargs="+", help="sweep=NAME baseline=DB:STUDY, and sweep overrides for every setting")
    ap.add_argument("--setting", action="append", default=[], help="'label: sweep overrides...'")
    ap.add_argument("--orders", type=int, default=0, help="also replay N (>= 2) random trial orders")
    ap.add_argument("--keep", type=int, default=10, help="trials kept first in every order (the random start)")
    ap.add_argument("--top", type=int, default=3, help="the baseline's best trials watched")
    a = ap.parse_args(argv)
    from benchmarks.bench_variants import parse_variants
    from rlexp.compose import compose_config
    from rlexp.config import ConfigError
    from rlexp.envs import check_compatible, solve_threshold
    from rlexp.sweep import load
    from rlexp.sweep.objective import censor_penalty
    from rlexp.sweep.runner import COMPARABLE
    from rlexp.sweep.study import counts

    named = dict(x.split("=", 1) for x in a.args if x.startswith(("sweep=", "baseline=")))
    common = [x for x in a.args if not x.startswith(("sweep=", "baseline="))]
    if "sweep" not in named or "baseline" not in named:
        ap.error("sweep=NAME and baseline=DB:STUDY are required")
    if a.orders == 1 or a.orders < 0:
        ap.error(f"--orders {a.orders}: 0, or at least 2 orders for a spread")
    try:
        base = open_study(named["baseline"])
    except ValueError as e:
        ap.error(f"baseline={named['baseline']}: {e}")
    settings = parse_variants(a.setting) or [("sweep", []), ("bound-only", ["pruner.name=threshold", "pruner.args={upper:1.0e9}"])]
    try:
        sweeps = {label: load(named["sweep"], [*common, *ov]) for label, ov in settings}
    except ConfigError as e:
        print(f"replay_pruning: error: {e}", file=sys.stderr)
        return 2
    first = next(iter(sweeps.values()))
    for label, sweep in sweeps.items():  # report_every too: the baseline's values are on its grid
        # lockstep too: without a pruner it ran the same runs (the replay rebuilds them either way)
        diff = first_difference(base, sweep, [k for k in (*COMPARABLE, "space", "report_every") if k not in PRUNER_ONLY])
        if diff:
            print(f"replay_pruning: error: setting {label}: {diff[0]}={diff[2]!r}, but the baseline's is "
                  f"{diff[1]!r}", file=sys.stderr)
            return 2
    counted = [t for t in base.get_trials(deepcopy=False) if counts(t)]
    trials = [t for t in counted if t.state == TrialState.COMPLETE]
    if len(trials) != len(counted):
        print("replay_pruning: error: the baseline must be a no-pruner study with every trial complete", file=sys.stderr)
        return 2
    rcfg = compose_config(list(first.cfg.base))
    budget, window = int(rcfg.train.max_episodes), int(rcfg.solve.window)
    every = first.cfg.pruner.report_every
    if budget % every or window % every:
        print(f"replay_pruning: error: pruner.report_every={every} must divide train.max_episodes={budget} "
              f"and solve.window={window}: the returns are rebuilt in blocks of report_every episodes",
              file=sys.stderr)
        return 2
    threshold = solve_threshold(rcfg, check_compatible(rcfg))
    penalty = censor_penalty(first.cfg.objective.penalty, budget)
    n_seeds = len(first.cfg.seeds)
    by_number = {t.number: traces(t, budget, threshold, penalty, window, n_seeds) for t in trials}
    total = sum(int(t.user_attrs["env_steps"]) for t in trials)
    best = min(t.value for t in trials if t.value is not None)
    top = {t.number for t in sorted(trials, key=lambda t: float(t.value or 0.0))[:a.top]}
    good = good_group_members(trials)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    rows = ["| setting | overrides | env steps | saving | pruned | best kept | top pruned | good group pruned | "
            "saving over orders: median (10th-90th pct) |", "|---|---|---|---|---|---|---|---|---|"]
    for label, ov in settings:
        r = replay(sweeps[label], trials, by_number)
        spread = "–"
        if a.orders:
            rng, savings = random.Random(0), []
            for _ in range(a.orders):
                rest = trials[a.keep:]
                rng.shuffle(rest)
                savings.append(1 - replay(sweeps[label], [*trials[:a.keep], *rest], by_number).env_steps / total)
            q = statistics.quantiles(savings, n=10)
            spread = f"{statistics.median(savings):.0%} ({q[0]:.0%}-{q[-1]:.0%})"
        rows.append(f"| {label} | `{' '.join(ov) or '(the sweep as defined)'}` | {r.env_steps} | "
                    f"{1 - r.env_steps / total:.0%} | {len(r.pruned)} | "
                    f"{'yes' if r.best is not None and r.best <= best + 1e-9 else f'no ({r.best})'} | "
                    f"{', '.join(map(str, sorted(top & set(r.pruned)))) or 'none'} | "
                    f"{', '.join(map(str, sorted(good & set(r.pruned)))) or 'none'} | {spread} |")
        print(rows[-1], flush=True)
    command = "python -m benchmarks.replay_pruning " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# replay_pruning\n\ndate: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}\n\ncommand: `{command}`\n\n"
            f"versions: {versions()}\n\nbaseline: study {named['baseline']}: {len(trials)} trials, "
            f"{total} env steps, best {best:.1f}; its top {a.top}: {sorted(top)}; its TPE good group (the best "
            f"ceil(n/10) complete trials after each n-th, in trial order) held {sorted(good)}. Trials replayed in their "
            f"order, one worker; a real pruned sweep samples other trials (module docstring).\n\n"
            + "\n".join(rows) + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"replay-{datetime.now(UTC):%Y-%m-%d-%H%M}.md"
    out.write_text(text)
    print(f"\n{text}\nreplay_pruning: written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
