"""The objective: episodes-to-solve over a trial's seeds, unsolved seeds censored, and what the pruner sees.

Censoring rule, with B = ``train.max_episodes`` and P = ``objective.penalty`` (default B)::

    solved seed    ->  its episodes-to-solve                  (<= B)
    unsolved seed  ->  B + P * (1 + shortfall)                (>  B + P)
    shortfall      =   clip((threshold - m) / max(|threshold|, 1), 0, 1)

where m is the mean return of the seed's last ``solve.window`` episodes. An unsolved seed always
scores worse than any solved one and a near miss scores better than a flop; the trial's value
is the mean (or median) over its seeds, so a configuration solving no seed never beats one
solving them all.

A trial's seeds train as one batch (:func:`rlexp.train.run_batch`). Every ``pruner.report_every``
episodes (and at the budget) the trial reports, at step = episode e, the aggregate over all its
seeds of each one's value at e: its final value if its run ended by then, else its value *if its
budget ended at e*. It reports once every seed still running has reached e, so the values do not
depend on how the batch is scheduled, and asks Optuna's pruner whether to stop while a seed still
runs (stopping a trial whose runs have all ended saves nothing: it completes). Once every run has
ended, its final value fills the steps left up to B, so pruners compare it at every step.
A pruned trial's runs end KILLED, the trial PRUNED; a seed that fails (a diverged loss) fails the
trial with its error (``fail_reason``), and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from rlexp.algos.registry import check_compatible
from rlexp.compose import compose_config, override_key
from rlexp.envs import solve_threshold
from rlexp.loops import EpisodeInfo
from rlexp.sweep import study as st
from rlexp.sweep.config import ParamSpec, format_value
from rlexp.sweep.load import Sweep, param_override
from rlexp.train import RunInterrupted, TrainResult, run_batch


# --------------------------------------------------------------------------- the censoring rule
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


def censor_penalty(penalty: float | None, budget: int) -> float:
    """``objective.penalty``, whose default (None) is the budget."""
    return float(penalty if penalty is not None else budget)


def tail_mean(returns: Sequence[float], window: int) -> float | None:
    """The mean return of the last ``window`` episodes (None: no episode)."""
    tail = returns[-window:]
    return sum(tail) / len(tail) if tail else None


def final_value(solved_at: int | None, last_mean: float | None, threshold: float, budget: int,
                penalty: float) -> float:
    """A seed's value given its episodes-to-solve or its last mean (:func:`tail_mean`; None, e.g. a
    run that failed before any episode, counts as the worst)."""
    miss = shortfall(float("-inf") if last_mean is None else last_mean, threshold)
    return seed_value(solved_at, budget, penalty, miss)


def grid(every: int, budget: int) -> list[int]:
    """The report episodes: multiples of ``every``, and the budget."""
    return sorted({*range(every, budget + 1, every), budget})


def algo_label(overrides: Sequence[str]) -> str | None:
    """The ``algo=`` option these overrides end with (run names say ``double_dqn_seed``, not its name)."""
    return next((ov.split("=", 1)[1] for ov in reversed(overrides) if override_key(ov) == "algo"), None)


# --------------------------------------------------------------------------- a trial's seeds
class Pruned(RunInterrupted):
    """The pruner stopped the trial mid-run (its runs end KILLED, the trial PRUNED)."""


class Surplus(Exception):
    """The trial is not needed: ``n_trials`` is reached, or another trial runs its start point."""


def suggest(trial: optuna.Trial, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.key, p.optuna_choices())
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)


@dataclass
class Curves:
    """``callback(i, info)`` of a trial's batch: each seed's value at each report episode, reported
    together (step = episode) once every seed still running has got there."""

    n: int  # seeds
    budget: int
    every: int
    threshold: float
    penalty: float
    how: str
    report: Callable[[float, int], None]  # trial.report
    should_prune: Callable[[], bool]  # trial.should_prune
    stop_on_solve: bool = True  # train.stop_on_solve: a run ends at its solve
    at: list[dict[int, float]] = field(init=False)  # seed -> report episode -> value if the budget ended there
    final: list[float | None] = field(init=False)  # a seed's value once its run has ended
    ended_at: list[int | None] = field(init=False)
    episode: list[int] = field(init=False)  # last episode seen, per seed
    env_steps: list[int] = field(init=False)
    solved: list[int | None] = field(init=False)
    pending: list[int] = field(init=False)  # report episodes not reported yet
    last_step: int = 0

    def __post_init__(self) -> None:
        self.at = [{} for _ in range(self.n)]
        self.final, self.ended_at, self.solved = [None] * self.n, [None] * self.n, [None] * self.n
        self.episode, self.env_steps = [0] * self.n, [0] * self.n
        self.pending = grid(self.every, self.budget)

    def __call__(self, i: int, info: EpisodeInfo) -> None:
        self.episode[i], self.env_steps[i], self.solved[i] = info.episode, info.env_step, info.solved_at
        now = final_value(info.solved_at, info.rolling_mean, self.threshold, self.budget, self.penalty)
        if info.episode in self.pending:
            self.at[i][info.episode] = now
        if info.episode >= self.budget or (info.solved_at is not None and self.stop_on_solve):
            self.final[i], self.ended_at[i] = now, info.episode
        self.flush(prune=True)

    def value_at(self, i: int, e: int) -> float:
        ended, final = self.ended_at[i], self.final[i]
        if ended is not None and ended <= e and final is not None:
            return final
        return self.at[i][e]

    def flush(self, prune: bool) -> None:
        """Report every pending episode all running seeds have reached; then, if ``prune`` and a
        seed still runs, ask the pruner (:class:`Pruned`)."""
        reported = False
        while self.pending and all(self.ended_at[i] is not None or self.episode[i] >= self.pending[0]
                                   for i in range(self.n)):
            e = self.pending.pop(0)
            self.report(aggregate([self.value_at(i, e) for i in range(self.n)], self.how), e)
            self.last_step, reported = e, True
        if prune and reported and None in self.ended_at and self.should_prune():
            raise Pruned(f"pruned at step {self.last_step} (episode {self.last_step} of every seed)")

    def finish(self, results: Sequence[TrainResult], window: int) -> list[float]:
        """The seeds' values from their results; the steps not reported yet get them (no pruning)."""
        for i, r in enumerate(results):
            self.final[i] = final_value(r.episodes_to_solve, tail_mean(r.returns, window), self.threshold,
                                        self.budget, self.penalty)
            self.ended_at[i] = min(r.episodes, self.episode[i])  # past its last episode seen: its final value
            self.solved[i], self.env_steps[i] = r.episodes_to_solve, r.env_steps
        self.flush(prune=False)
        return [v for v in self.final if v is not None]


class TrialFailed(Exception):
    """A seed's run failed: the trial fails with its reason."""


class Objective:
    """``objective(trial) -> float`` for ``study.optimize``; picklable for spawned workers."""

    def __init__(self, sweep: Sweep, parent_run_id: str | None, experiment: str | None) -> None:
        """``experiment``: the MLflow experiment of the trial runs; None: tracking is off."""
        self.sweep, self.parent_run_id, self.experiment = sweep, parent_run_id, experiment

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.sweep.cfg
        trials = trial.study.get_trials(deepcopy=False)
        if st.ahead_of(trials, trial.number) >= cfg.n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"n_trials={cfg.n_trials} already reached or in flight; trial not needed")
        if st.runs_elsewhere(trials, trial.number):
            trial.set_user_attr("surplus", True)
            raise Surplus("another trial runs this start point")
        params = {p.key: suggest(trial, p) for p in self.sweep.params}
        overrides = [param_override(p, params[p.key]) for p in self.sweep.params]
        seeds = cfg.trial_seeds(trial.number)
        trial.set_user_attr("seeds", seeds)
        trial.set_user_attr("overrides", overrides)
        rcfg = compose_config([*cfg.base, *overrides])  # once: the seeds differ by seed alone
        budget = rcfg.train.max_episodes
        curves = Curves(len(seeds), budget, cfg.pruner.report_every, solve_threshold(rcfg, check_compatible(rcfg)),
                        censor_penalty(cfg.objective.penalty, budget), cfg.objective.aggregate, trial.report,
                        trial.should_prune, rcfg.train.stop_on_solve)
        mlflow = None
        try:
            if self.experiment is not None and self.parent_run_id:
                from rlexp.sweep.tracking import TrialRun

                mlflow = TrialRun(self.experiment, self.parent_run_id, self.sweep.study_name, trial.number,
                                  params, seeds)
                trial.set_user_attr("mlflow_run_id", mlflow.run_id)
            study = self.sweep.study_name
            results = run_batch([dataclasses.replace(rcfg, seed=s) for s in seeds],
                                label=algo_label([*cfg.base, *overrides]),
                                group=f"{study}/trial-{trial.number}",
                                tags={"sweep": study, "trial": trial.number, "sweep_role": "seed"},
                                parent_run_id=mlflow.run_id if mlflow else None, callback=curves)
            values = curves.finish(results, rcfg.solve.window)
            trial.set_user_attr("seed_values", values)
            trial.set_user_attr("episodes_to_solve", [r.episodes_to_solve for r in results])
            failed = [(s, r.error) for s, r in zip(seeds, results, strict=True) if r.status == "FAILED"]
            if failed:
                raise TrialFailed(f"seed {failed[0][0]}: {failed[0][1]}")
        except Pruned as e:
            self._end(trial, curves, mlflow, "pruned", None, str(e))
            raise optuna.TrialPruned(str(e)) from None
        except (KeyboardInterrupt, RunInterrupted) as e:
            # an interruption says nothing about the configuration: the trial ends FAIL without
            # fail_reason (lost, not counted) and the worker stops
            self._end(trial, curves, mlflow, "interrupted", None, str(e) or type(e).__name__)
            raise KeyboardInterrupt(str(e)) from e
        except Exception as e:
            self._end(trial, curves, mlflow, "failed", None, str(e) if isinstance(e, TrialFailed)
                      else f"{type(e).__name__}: {e}")
            raise
        value = aggregate(values, cfg.objective.aggregate)
        self._end(trial, curves, mlflow, "complete", value, None)
        return value

    @staticmethod
    def _end(trial: optuna.Trial, curves: Curves, mlflow: Any, what: str, value: float | None,
             reason: str | None) -> None:
        env_steps = sum(curves.env_steps)
        try:
            trial.set_user_attr("env_steps", env_steps)
            if what == "pruned":
                trial.set_user_attr("pruned_at", curves.last_step)
            if what == "failed" and reason:
                trial.set_user_attr("fail_reason", reason[:2000])
        finally:
            if mlflow:
                for i, v in enumerate(curves.final):
                    if v is not None:
                        mlflow.seed_done(i, v, curves.solved[i], curves.env_steps[i])
                mlflow.end(what, value, env_steps, reason)


def describe_trial(params: dict[str, Any]) -> str:
    """Parameters as overrides, for tables: ``algo.lr=0.00042 algo.batch_size=64``."""
    def short(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else format_value(v).strip("'")

    return " ".join(f"{k}={short(v)}" for k, v in params.items())
