"""The objective: episodes-to-solve over a trial's seeds, unsolved seeds censored, reported to the pruner.

With B = ``train.max_episodes`` and P = ``objective.penalty`` (default B), a solved seed scores its
episodes-to-solve (<= B), an unsolved one ``B + P * (1 + shortfall)`` (> B + P), the shortfall being
how far the mean return of its last ``solve.window`` episodes ended below the threshold, a fraction in
[0, 1]: an unsolved seed scores worse than any solved one, a near miss better than a flop. The trial's
value is the mean (or median) over its seeds, which train as one batch. What it reports to Optuna's
pruner, and when: docs/sweeps.md ("The objective").
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
    """A seed's value: its episodes-to-solve, or ``budget + penalty * (1 + shortfall)`` if unsolved
    (``last_mean`` None, a run that ended before any episode, has the worst shortfall, 1)."""
    if solved_at is not None:
        return float(solved_at)
    miss = 1.0 if last_mean is None else (threshold - last_mean) / max(abs(threshold), 1.0)
    return budget + penalty * (1.0 + min(1.0, max(0.0, miss)))


def aggregate(values: Sequence[float], how: str) -> float:
    return float(statistics.median(values) if how == "median" else statistics.fmean(values))


def tail_mean(returns: Sequence[float], window: int) -> float | None:
    """The mean return of the last ``window`` episodes (None: no episode)."""
    return sum(returns[-window:]) / len(returns[-window:]) if returns else None


def algo_label(overrides: Sequence[str]) -> str | None:
    """The ``algo=`` option these overrides end with (run names say ``double_dqn_seed``, not its name)."""
    return next((ov.split("=", 1)[1] for ov in reversed(overrides) if override_key(ov) == "algo"), None)


class Pruned(RunInterrupted):
    """The pruner stopped the trial mid-run (its runs end KILLED, the trial PRUNED)."""


class Surplus(Exception):
    """The trial is not needed: ``n_trials`` is reached, or another trial runs its start point."""


class TrialFailed(Exception):
    """A seed's run failed: the trial fails with its reason."""


def suggest(trial: optuna.Trial, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.key, p.optuna_choices())
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)


class Curves:
    """``callback(i, info)`` of a trial's batch: at step = episode e (every ``every`` episodes and at the
    budget) it reports to ``trial`` the aggregate over the seeds of each one's value at e (its final
    value if its run has ended, else its value if its budget ended at e), once every seed still
    running has got to e; then, while a seed runs, asks the pruner."""

    def __init__(self, n: int, budget: int, every: int, threshold: float, penalty: float, how: str,
                 trial: Any, stop_on_solve: bool = True) -> None:
        self.n, self.budget, self.threshold, self.penalty, self.how = n, budget, threshold, penalty, how
        self.trial, self.stop_on_solve = trial, stop_on_solve
        self.pending = sorted({*range(every, budget + 1, every), budget})  # report episodes not reported yet
        self.at: list[dict[int, float]] = [{} for _ in range(n)]  # seed -> report episode -> value
        self.final = [0.0] * n  # a seed's value once its run has ended
        self.ended: list[int | None] = [None] * n  # the episode it ended at
        self.episode, self.env_steps = [0] * n, [0] * n
        self.last_step = 0

    def value(self, solved_at: int | None, last_mean: float | None) -> float:
        return seed_value(solved_at, last_mean, self.threshold, self.budget, self.penalty)

    def __call__(self, i: int, info: EpisodeInfo) -> None:
        self.episode[i], self.env_steps[i] = info.episode, info.env_step
        now = self.value(info.solved_at, info.rolling_mean)
        if info.episode in self.pending:
            self.at[i][info.episode] = now
        if info.episode >= self.budget or (info.solved_at is not None and self.stop_on_solve):
            self.final[i], self.ended[i] = now, info.episode
        self.flush(prune=True)

    def flush(self, prune: bool) -> None:
        """Report every pending episode all running seeds have reached; then, if ``prune`` and a
        seed still runs, ask the pruner (:class:`Pruned`)."""
        reported = False
        while self.pending and all(self.ended[i] is not None or self.episode[i] >= self.pending[0]
                                   for i in range(self.n)):
            e = self.pending.pop(0)
            values = [self.final[i] if (end := self.ended[i]) is not None and end <= e else self.at[i][e]
                      for i in range(self.n)]
            self.trial.report(aggregate(values, self.how), e)
            self.last_step, reported = e, True
        if prune and reported and None in self.ended and self.trial.should_prune():
            raise Pruned(f"pruned at step {self.last_step} (episode {self.last_step} of every seed)")

    def finish(self, results: Sequence[TrainResult], window: int) -> list[float]:
        """The seeds' values from their results; the steps not reported yet get them (no pruning)."""
        for i, r in enumerate(results):
            self.final[i] = self.value(r.episodes_to_solve, tail_mean(r.returns, window))
            self.ended[i] = min(r.episodes, self.episode[i])  # past its last episode seen: its final value
            self.env_steps[i] = r.env_steps
        self.flush(prune=False)
        return list(self.final)


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
        budget, spec = rcfg.train.max_episodes, check_compatible(rcfg)  # once per trial: run_batch takes the spec
        curves = Curves(len(seeds), budget, cfg.pruner.report_every, solve_threshold(rcfg, spec),
                        cfg.objective.penalty or budget, cfg.objective.aggregate, trial, rcfg.train.stop_on_solve)
        run_id = None
        if self.experiment is not None and self.parent_run_id:
            run_id = start_trial_run(self.experiment, self.parent_run_id, study, trial.number, params, seeds)
            trial.set_user_attr("mlflow_run_id", run_id)
        state, value, reason = "failed", None, None
        try:
            results = run_batch([replace(rcfg, seed=s) for s in seeds], label=algo_label([*cfg.base, *overrides]),
                                group=f"{study}/trial-{trial.number}", parent_run_id=run_id, callback=curves, spec=spec,
                                tags={"sweep": study, "trial": trial.number, "sweep_role": "seed"})
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
            trial.set_user_attr("pruned_at", curves.last_step)
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
                    end_run(run_id, STATUS[state], {"env_steps": float(sum(curves.env_steps)),
                                                    **({"objective": value} if value is not None else {})},
                            {"state": state, **({"fail_reason": reason[:5000]} if reason else {})})
