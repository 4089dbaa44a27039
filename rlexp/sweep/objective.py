"""The objective: episodes-to-solve over a trial's seeds, with unsolved seeds censored, and pruning.

Censoring rule, with B = ``train.max_episodes`` and P = ``objective.penalty`` (default B)::

    solved seed    ->  its episodes-to-solve                  (<= B)
    unsolved seed  ->  B + P * (1 + shortfall)                (>  B + P)
    shortfall      =   clip((threshold - m) / max(|threshold|, 1), 0, 1)

where m is the mean return of the seed's last ``solve.window`` episodes. An unsolved seed always
scores worse than any solved one and a near miss scores better than a flop; the trial's value
is the mean (or median) over its seeds, so a configuration solving no seed never beats one
solving them all.

Pruning: every ``pruner.report_every`` episodes of seed i the trial reports, at step
``i * B + episode``, the aggregate of its finished seeds and the current seed's value *if its
budget ended now*; when a seed ends early (solved), its final value fills the remaining steps of
its slot. So at any step every trial that got there has a value from the same seed index and
episode, and the pruner compares like with like. A pruned run ends KILLED (a
:class:`~rlexp.train.RunInterrupted`), the trial PRUNED; a diverged or crashing trial ends FAILED
with ``fail_reason``, and the sweep goes on.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from rlexp.compose import compose_config, override_key
from rlexp.envs import check_compatible, solve_threshold
from rlexp.loops import EpisodeInfo
from rlexp.sweep.config import ParamSpec, format_value
from rlexp.sweep.load import Sweep, param_override
from rlexp.sweep.study import ahead_of
from rlexp.train import RunInterrupted, TrainResult, run


# --------------------------------------------------------------------------- pure functions
def shortfall(mean_return: float, threshold: float) -> float:
    """How far a seed ended from the threshold, as a fraction in [0, 1]."""
    return min(1.0, max(0.0, (threshold - mean_return) / max(abs(threshold), 1.0)))


def seed_value(solved_at: int | None, budget: int, penalty: float, miss: float = 1.0) -> float:
    """A seed's contribution: episodes-to-solve, or ``budget + penalty * (1 + miss)`` if unsolved."""
    if solved_at is not None:
        return float(solved_at)
    return budget + penalty * (1.0 + miss)


def aggregate(values: Sequence[float], how: str) -> float:
    return float(statistics.median(values) if how == "median" else statistics.fmean(values))


def report_step(seed_index: int, episode: int, budget: int) -> int:
    """The pruner's step: seed slots of ``budget`` episodes laid end to end."""
    return seed_index * budget + episode


def grid(every: int, budget: int, after: int = 0) -> list[int]:
    """Report episodes within a seed after ``after``: multiples of ``every``, and the budget."""
    eps = list(range((after // every + 1) * every, budget + 1, every))
    if budget > after and (not eps or eps[-1] != budget):
        eps.append(budget)
    return eps


def unsolved_value(mean_return: float, threshold: float, budget: int, penalty: float) -> float:
    return seed_value(None, budget, penalty, shortfall(mean_return, threshold))


def algo_label(overrides: Sequence[str]) -> str | None:
    """The ``algo=`` option these overrides end with (run names say ``double_dqn_seed``, not its name)."""
    return next((ov.split("=", 1)[1] for ov in reversed(overrides) if override_key(ov) == "algo"), None)


# --------------------------------------------------------------------------- running a trial
class Pruned(RunInterrupted):
    """The pruner stopped the trial mid-run (the run ends KILLED, the trial PRUNED)."""


class Surplus(Exception):
    """Another worker already started the last trial of ``n_trials`` (this one is not counted)."""


def suggest(trial: optuna.Trial, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.key, p.optuna_choices())
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)


@dataclass
class Reporter:
    """Per-episode callback of one seed's run: intermediate values and pruning checks."""

    report: Callable[[float, int], None]  # trial.report
    should_prune: Callable[[], bool]  # trial.should_prune
    index: int  # seed index within the trial
    budget: int
    every: int
    threshold: float
    penalty: float
    how: str
    finished: list[float] = field(default_factory=list)  # the values of the trial's earlier seeds
    last_episode: int = 0  # last episode reported
    last_step: int = 0  # last step reported
    env_steps: int = 0  # env steps at the last finished episode

    def __call__(self, info: EpisodeInfo) -> None:
        self.env_steps = info.env_step
        if info.episode % self.every and info.episode != self.budget:
            return
        cur = (float(info.solved_at) if info.solved_at is not None
               else unsolved_value(info.rolling_mean, self.threshold, self.budget, self.penalty))
        step = report_step(self.index, info.episode, self.budget)
        self.report(aggregate([*self.finished, cur], self.how), step)
        self.last_episode, self.last_step = info.episode, step
        if self.should_prune():
            raise Pruned(f"pruned at step {step} (seed index {self.index}, episode {info.episode})")

    def fill(self, value: float) -> int:
        """Report the seed's final running value at the rest of its slot; returns the last step."""
        for ep in grid(self.every, self.budget, self.last_episode):
            self.report(value, report_step(self.index, ep, self.budget))
        return report_step(self.index, self.budget, self.budget)


@dataclass
class _TrialState:
    """What a trial has done so far (for its end, whatever the way it ends)."""

    mlflow: Any = None  # TrialRun | None
    reporter: Reporter | None = None  # of the seed being run
    env_steps: int = 0
    last_step: int = 0  # last step reported
    solved: list[int | None] = field(default_factory=list)


class Objective:
    """``objective(trial) -> float`` for ``study.optimize``; picklable for spawned workers."""

    def __init__(self, sweep: Sweep, parent_run_id: str | None, experiment: str | None) -> None:
        """``experiment``: the MLflow experiment of the trial runs; None: tracking is off."""
        self.sweep, self.parent_run_id, self.experiment = sweep, parent_run_id, experiment

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.sweep.cfg
        if ahead_of(trial.study.get_trials(deepcopy=False), trial.number) >= cfg.n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"n_trials={cfg.n_trials} already reached or in flight; trial not needed")
        params = {p.key: suggest(trial, p) for p in self.sweep.params}
        overrides = [param_override(p, params[p.key]) for p in self.sweep.params]
        label = algo_label([*cfg.base, *overrides])  # groups: may choose the algorithm
        seeds = cfg.trial_seeds(trial.number)
        trial.set_user_attr("seeds", seeds)
        trial.set_user_attr("overrides", overrides)
        state = _TrialState()
        try:
            if self.experiment is not None and self.parent_run_id:
                from rlexp.sweep.tracking import TrialRun

                state.mlflow = TrialRun(self.experiment, self.parent_run_id, self.sweep.study_name,
                                        trial.number, params, seeds)
                trial.set_user_attr("mlflow_run_id", state.mlflow.run_id)
            value = self._run_seeds(trial, overrides, seeds, state, label)
        except Pruned as e:
            self._end(trial, state, "pruned", None, str(e))
            raise optuna.TrialPruned(str(e)) from None
        except optuna.TrialPruned as e:
            self._end(trial, state, "pruned", None, str(e))
            raise
        except (KeyboardInterrupt, RunInterrupted) as e:
            # an interruption says nothing about the configuration: the trial ends FAIL without
            # fail_reason (lost, not counted) and the worker stops
            self._end(trial, state, "interrupted", None, str(e) or type(e).__name__)
            raise KeyboardInterrupt(str(e)) from e
        except Exception as e:
            self._end(trial, state, "failed", None, f"{type(e).__name__}: {e}")
            raise
        self._end(trial, state, "complete", value, None)
        return value

    def _run_seeds(self, trial: optuna.Trial, overrides: list[str], seeds: list[int],
                   state: _TrialState, label: str | None) -> float:
        cfg = self.sweep.cfg
        study = self.sweep.study_name
        values: list[float] = []
        for i, seed in enumerate(seeds):
            rcfg = compose_config([*cfg.base, *overrides, f"seed={seed}"])
            budget = rcfg.train.max_episodes
            penalty = float(cfg.objective.penalty if cfg.objective.penalty is not None else budget)
            rep = Reporter(trial.report, trial.should_prune, i, budget, cfg.pruner.report_every,
                           solve_threshold(rcfg, check_compatible(rcfg)), penalty, cfg.objective.aggregate,
                           list(values))
            state.reporter = rep
            result = run(rcfg, label=label, group=f"{study}/trial-{trial.number}",
                         tags={"sweep": study, "trial": trial.number, "sweep_role": "seed"},
                         parent_run_id=state.mlflow.run_id if state.mlflow else None, callback=rep)
            state.reporter = None
            state.env_steps += result.env_steps
            v = self.seed_result(result, rcfg.solve.window, rep.threshold, budget, penalty)
            values.append(v)
            state.solved.append(result.episodes_to_solve)
            trial.set_user_attr("seed_values", values)
            trial.set_user_attr("episodes_to_solve", state.solved)
            if state.mlflow:
                state.mlflow.seed_done(i, v, result.episodes_to_solve, result.env_steps)
            state.last_step = rep.fill(aggregate(values, cfg.objective.aggregate))
            if i + 1 < len(seeds) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {state.last_step} (after seed index {i})")
        return aggregate(values, cfg.objective.aggregate)

    @staticmethod
    def seed_result(result: TrainResult, window: int, threshold: float, budget: int, penalty: float) -> float:
        """A finished seed's value (the censoring rule on the run's returns)."""
        if result.episodes_to_solve is not None:
            return float(result.episodes_to_solve)
        tail = result.returns[-window:]
        mean = sum(tail) / len(tail) if tail else float("-inf")
        return unsolved_value(mean, threshold, budget, penalty)

    @staticmethod
    def _end(trial: optuna.Trial, state: _TrialState, what: str, value: float | None,
             reason: str | None) -> None:
        if state.reporter is not None:  # the interrupted seed's steps count too
            state.env_steps += state.reporter.env_steps
            state.last_step = state.reporter.last_step or state.last_step
        try:
            trial.set_user_attr("env_steps", state.env_steps)
            if what == "pruned":
                trial.set_user_attr("pruned_at", state.last_step)
            if what == "failed" and reason:
                trial.set_user_attr("fail_reason", reason[:2000])
        finally:
            if state.mlflow:
                state.mlflow.end(what, value, state.env_steps, reason)


def describe_trial(params: dict[str, Any]) -> str:
    """Parameters as overrides, for tables: ``algo.lr=0.00042 algo.batch_size=64``."""
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else format_value(v).strip("'")
