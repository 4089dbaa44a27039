"""The objective: episodes-to-solve over a trial's seeds, unsolved seeds censored, reported to the pruner.

What a trial reports, and when: docs/sweeps.md ("The objective").
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import optuna

from rlexp.algos.registry import check_compatible
from rlexp.compose import compose_config, override_key
from rlexp.envs import solve_threshold
from rlexp.loops import EpisodeInfo
from rlexp.sweep import study as st
from rlexp.sweep.config import ParamSpec
from rlexp.sweep.load import Sweep, param_override
from rlexp.sweep.tracking import STATUS, end_run, start_trial_run
from rlexp.train import RunInterrupted, TrainResult, run_batch


def seed_value(solved_at: int | None, last_mean: float | None, threshold: float, budget: int,
               penalty: float) -> float:
    """A seed's value: its episodes-to-solve or, unsolved, ``budget + penalty * (1 + shortfall)``, the
    shortfall being how far ``last_mean`` (the mean return of its last window; None: no episode, the
    worst) ended below the threshold, in [0, 1]. An unsolved seed scores worse than any solved one, a
    near miss better than a flop."""
    if solved_at is not None:
        return float(solved_at)
    miss = 1.0 if last_mean is None else (threshold - last_mean) / max(abs(threshold), 1.0)
    return budget + penalty * (1.0 + min(1.0, max(0.0, miss)))


def aggregate(values: Sequence[float], how: str) -> float:
    return float(statistics.median(values) if how == "median" else statistics.fmean(values))


def tail_mean(returns: Sequence[float], window: int) -> float | None:
    """The mean return of the last ``window`` episodes (None: no episode)."""
    return sum(returns[-window:]) / len(returns[-window:]) if returns else None


def run_value(r: TrainResult, window: int, threshold: float, budget: int, penalty: float) -> float:
    """A finished run's value: :func:`seed_value` of its episodes-to-solve and its last window's mean."""
    return seed_value(r.episodes_to_solve, tail_mean(r.returns, window), threshold, budget, penalty)


def algo_label(overrides: Sequence[str]) -> str | None:
    """The ``algo=`` option these overrides end with (run names say ``double_dqn_seed``, not its name)."""
    return next((ov.split("=", 1)[1] for ov in reversed(overrides) if override_key(ov) == "algo"), None)


class Pruned(RunInterrupted):
    """The pruner stopped the trial mid-run (its runs end KILLED, the trial PRUNED)."""


class Surplus(Exception):
    """The trial is not needed: ``n_trials`` is reached, or another trial runs its start point."""


class TrialFailed(Exception):
    """A seed's run failed: the trial fails with its reason."""


class Curves:
    """``callback(i, info)`` of a trial's batch: at step = episode e (every ``every`` episodes and at the
    budget), once every seed still running has got to e, it reports to ``trial`` the aggregate of the
    seeds' values at e (a seed whose run ended: its final value); then, while a seed runs, asks the
    pruner."""

    def __init__(self, n: int, budget: int, every: int, threshold: float, penalty: float, how: str,
                 trial: Any, stop_on_solve: bool = True) -> None:
        self.budget, self.threshold, self.penalty, self.how = budget, threshold, penalty, how
        self.trial, self.stop_on_solve = trial, stop_on_solve
        self.pending = sorted({*range(every, budget + 1, every), budget})  # report episodes not reported yet
        self.at: list[dict[int, float]] = [{} for _ in range(n)]  # seed -> report episode -> value
        self.running = [True] * n
        self.episode, self.env_steps = [0] * n, [0] * n
        self.last_step = 0

    def __call__(self, i: int, info: EpisodeInfo) -> None:
        self.episode[i], self.env_steps[i] = info.episode, info.env_step
        now = seed_value(info.solved_at, info.rolling_mean, self.threshold, self.budget, self.penalty)
        if info.episode >= self.budget or (info.solved_at is not None and self.stop_on_solve):
            self.end(i, info.episode, now)
        elif info.episode in self.pending:
            self.at[i][info.episode] = now
        self.report(prune=True)

    def end(self, i: int, episode: int, value: float) -> None:
        """Seed ``i``'s run ended at ``episode``: ``value`` is its value at every later report."""
        self.running[i] = False
        self.at[i].update({e: value for e in self.pending if e >= episode})

    def report(self, prune: bool) -> None:
        """Report every pending episode all running seeds have reached; then, if ``prune`` and a
        seed still runs, ask the pruner (:class:`Pruned`)."""
        reported = False
        while self.pending and all(not running or episode >= self.pending[0]
                                   for running, episode in zip(self.running, self.episode, strict=True)):
            e = self.pending.pop(0)
            self.trial.report(aggregate([at[e] for at in self.at], self.how), e)
            self.last_step, reported = e, True
        if prune and reported and any(self.running) and self.trial.should_prune():
            raise Pruned(f"pruned at step {self.last_step} (episode {self.last_step} of every seed)")

    def finish(self, results: Sequence[TrainResult], window: int) -> list[float]:
        """The seeds' values from their results; the steps not reported yet get them (no pruning)."""
        values = [run_value(r, window, self.threshold, self.budget, self.penalty) for r in results]
        for i, (r, v) in enumerate(zip(results, values, strict=True)):
            self.end(i, min(r.episodes, self.episode[i]), v)
            self.env_steps[i] = r.env_steps
        self.report(prune=False)
        return values


def suggest(trial: optuna.Trial, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.key, p.optuna_choices())
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)


class Objective:
    """``objective(trial) -> float`` for ``study.optimize``; ``experiment`` None: tracking is off."""

    def __init__(self, sweep: Sweep, parent_run_id: str | None, experiment: str | None) -> None:
        self.sweep, self.parent_run_id, self.experiment = sweep, parent_run_id, experiment

    def __call__(self, trial: optuna.Trial) -> float:
        cfg, study = self.sweep.cfg, self.sweep.study_name
        trials = trial.study.get_trials(deepcopy=False)
        full = st.ahead_of(trials, trial.number) >= cfg.n_trials
        if full or st.runs_elsewhere(trials, trial.number):
            trial.set_user_attr("surplus", True)
            if full:
                trial.study.stop()
            raise Surplus(f"n_trials={cfg.n_trials} already reached or in flight" if full
                          else "another trial runs this start point")
        trial.set_user_attr("worker", st.worker_id())  # a journal finds a dead worker's trial by it
        params = {p.key: suggest(trial, p) for p in self.sweep.params}
        overrides = [param_override(p, params[p.key]) for p in self.sweep.params]
        seeds = cfg.trial_seeds(trial.number)
        trial.set_user_attr("seeds", seeds)
        trial.set_user_attr("overrides", overrides)
        rcfg = compose_config([*cfg.base, *overrides])  # once: the seeds differ by seed alone
        budget, spec = rcfg.train.max_episodes, check_compatible(rcfg)  # once: run_batch takes the spec
        curves = Curves(len(seeds), budget, cfg.pruner.report_every, solve_threshold(rcfg, spec),
                        cfg.objective.penalty or budget, cfg.objective.aggregate, trial,
                        rcfg.train.stop_on_solve)
        run_id = None
        if self.experiment is not None and self.parent_run_id:
            run_id = start_trial_run(self.experiment, self.parent_run_id, study, trial.number, params, seeds)
            trial.set_user_attr("mlflow_run_id", run_id)
        state, value, reason = "failed", None, None
        try:
            results = run_batch([replace(rcfg, seed=s) for s in seeds], group=f"{study}/trial-{trial.number}",
                                tags={"sweep": study, "trial": trial.number, "sweep_role": "seed"},
                                label=algo_label(cfg.base + overrides), parent_run_id=run_id, callback=curves,
                                spec=spec)
            values = curves.finish(results, rcfg.solve.window)
            trial.set_user_attr("seed_values", values)
            trial.set_user_attr("episodes_to_solve", [r.episodes_to_solve for r in results])
            failed = [(s, r.error) for s, r in zip(seeds, results, strict=True) if r.status == "FAILED"]
            if failed:
                raise TrialFailed(f"seed {failed[0][0]}: {failed[0][1]}")
            state, value = "complete", aggregate(values, cfg.objective.aggregate)
            return value
        except Pruned as e:
            state, reason = "pruned", str(e)
            raise optuna.TrialPruned(reason) from None
        except (KeyboardInterrupt, RunInterrupted) as e:
            # an interruption says nothing about the configuration: the trial ends FAIL without
            # fail_reason (lost, not counted) and the worker stops
            state, reason = "interrupted", str(e) or type(e).__name__
            raise KeyboardInterrupt(reason) from e
        except Exception as e:
            reason = str(e) if isinstance(e, TrialFailed) else f"{type(e).__name__}: {e}"
            trial.set_user_attr("fail_reason", reason[:2000])
            raise
        finally:
            try:
                trial.set_user_attr("env_steps", sum(curves.env_steps))
            finally:
                if run_id:
                    metrics = {"env_steps": float(sum(curves.env_steps))}
                    if value is not None:
                        metrics["objective"] = value
                    tags = {"state": state} | ({"fail_reason": reason[:5000]} if reason else {})
                    end_run(run_id, STATUS[state], metrics, tags)
