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
``i * B + episode``, the aggregate of its finished seeds, the current seed's value *if its budget
ended now*, and the worst value ``B + 2P`` for each seed not yet run; when a seed ends early
(solved), its final value fills the remaining steps of its slot. So at any step every trial that
got there has a value from the same seed index and episode (the pruner compares like with like),
and a trial's values only go down as it learns and finishes seeds: Optuna's pruners judge a trial
by its best value so far, which with a fresh seed counted as "solved at once" or left out would
stay at its first seed's value for good and never let a mediocre trial be pruned after that.

With ``pruner.lockstep`` the seeds run side by side instead, a process each, and the trial
reports at step = episode the aggregate over all its seeds (each one's value if its budget ended
now, or its final value): the pruner and the bound judge a configuration on every seed at once,
not on its first seed alone (:mod:`rlexp.sweep.lockstep`).

Besides the Optuna pruner, ``pruner.bound`` stops a trial that can no longer win: its lower
bound (finished seeds as they are, the current seed solving at the earliest episode it still
could, if every later episode returned ``pruner.max_return``, or at the next episode when that
is unknown, and each seed not yet run solving at episode ``solve.window``) is above the best
complete trial's value. That stop is safe: the trial's final value could not have beaten the best.
With ``pruner.bound_rank`` k the bound compares with the k-th best complete value instead: a trial
runs on while it could still enter the top k. The best value is as safe and fewer trials are
stopped by the bound; the aim is a sampler's good group (TPE's: the best ~10%) made of trials run to
the end rather than of the trials that completed before the pruner started. Measured on
``dqn_cartpole`` (one pair), k = 3 did not get there: the median pruner still stops most trials, and
it found a worse best than k = 1 (``sweeps/dqn_cartpole.yaml``).
Like the pruner, it waits for ``pruner.args.n_startup_trials`` complete trials: a sampler learns
most from complete trials (Optuna's TPE ranks every pruned one below them; with
``sampler.consider_pruned`` rlexp's sampler sees pruned trials by their last reported value or,
with ``sampler.pruned_value=seeds_run``, by the seeds they ran (a pruned trial records them as
``seed_values_run``: the finished seeds' values and the one in flight's at its last report);
:class:`~rlexp.sweep.study.SweepSampler`), so pruning the first trials starves it.
Neither stops a seed at the report where its run ends (its budget spent, or solved with
``train.stop_on_solve``): that saves nothing, so the check waits for the seed's recorded value, and a
trial whose last seed has ended completes with its value instead of being recorded PRUNED (before
session 16 such a trial, which had solved 2 of its 3 seeds, was pruned at its very last step and
its sampler never saw it complete).
A pruned run ends KILLED (a :class:`~rlexp.train.RunInterrupted`), the trial PRUNED; a diverged or
crashing trial ends FAILED with ``fail_reason``, and the sweep goes on.
"""

from __future__ import annotations

import statistics
from collections import deque
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


def censor_penalty(penalty: float | None, budget: int) -> float:
    """``objective.penalty``, whose default (None) is the budget."""
    return float(penalty if penalty is not None else budget)


def unsolved_value(mean_return: float, threshold: float, budget: int, penalty: float) -> float:
    return seed_value(None, budget, penalty, shortfall(mean_return, threshold))


def tail_mean(returns: Sequence[float], window: int) -> float | None:
    """The mean return of the last ``window`` episodes (None: no episode)."""
    tail = returns[-window:]
    return sum(tail) / len(tail) if tail else None


def final_value(solved_at: int | None, last_mean: float | None, threshold: float, budget: int,
                penalty: float) -> float:
    """A finished seed's value: its episodes-to-solve, or the censoring rule on its last mean
    (:func:`tail_mean`; None, e.g. a run that failed before any episode, counts as the worst)."""
    if solved_at is not None:
        return float(solved_at)
    return unsolved_value(float("-inf") if last_mean is None else last_mean, threshold, budget, penalty)


def mean_after(tail: Sequence[float], k: int, n: int, max_return: float) -> float:
    """The mean of the last ``n`` returns once ``k`` more episodes have returned ``max_return``."""
    keep = tail[max(0, len(tail) - (n - k)):] if n > k else []
    return (sum(keep) + min(k, n) * max_return) / n


def earliest_solve(recent: Sequence[float], episode: int, budget: int, window: int, threshold: float,
                   max_return: float) -> int | None:
    """The first episode after ``episode`` at which a seed could still be solved, every later
    episode returning ``max_return``; None if not within ``budget``. ``recent``: the last returns
    (at least the last ``window`` of them, or all if fewer)."""
    tail = list(recent)[-window:]
    for e in range(max(episode + 1, window), budget + 1):
        if mean_after(tail, e - episode, window, max_return) >= threshold - 1e-9:
            return e
    return None


def seed_bound(recent: Sequence[float], episode: int, budget: int, window: int, threshold: float,
               penalty: float, max_return: float | None) -> float:
    """A lower bound on the final value of an unsolved seed after ``episode`` episodes.

    With ``max_return`` unknown: solved at the next episode at best (and never before a full
    window). With it: solved at :func:`earliest_solve`, or, if that is past the budget, censored
    with the smallest shortfall the remaining episodes could still leave.
    """
    tail = list(recent)[-window:]
    if episode >= budget:  # the budget is spent: the value is known
        return unsolved_value(sum(tail) / len(tail) if tail else float("-inf"), threshold, budget, penalty)
    if max_return is None:
        first = max(episode + 1, window)
        return float(first) if first <= budget else seed_value(None, budget, penalty, 0.0)
    e = earliest_solve(tail, episode, budget, window, threshold, max_return)
    if e is not None:
        return float(e)
    return unsolved_value(mean_after(tail, budget - episode, min(window, budget), max_return),
                          threshold, budget, penalty)


def seed_now(info: EpisodeInfo, recent: Sequence[float], budget: int, window: int, threshold: float,
             penalty: float, max_return: float | None) -> tuple[float, float]:
    """A seed after ``info``'s episode: its value if its budget ended now, and a lower bound on its
    final value (:func:`seed_bound`; ``recent``: its last returns)."""
    if info.solved_at is not None:
        return float(info.solved_at), float(info.solved_at)
    return (unsolved_value(info.rolling_mean, threshold, budget, penalty),
            seed_bound(recent, info.episode, budget, window, threshold, penalty, max_return))


def run_ends(info: EpisodeInfo, budget: int, stop_on_solve: bool) -> bool:
    """Whether a seed's run ends at ``info``'s episode: its budget spent, or solved with ``train.stop_on_solve``."""
    return info.episode >= budget or (info.solved_at is not None and stop_on_solve)


def check_bound(low: float, where: str, best: float | None, rank: int = 1) -> None:
    """Prune (as :class:`Pruned`) if the lower bound ``low`` cannot beat ``best``, the best trial's
    value (with ``rank`` k > 1: the k-th best complete value, so cannot enter the top k)."""
    if best is not None and low > best + 1e-9:
        if rank == 1:
            raise Pruned(f"pruned at {where}: its value can no longer beat the best trial's "
                         f"{best:.1f} (lower bound {low:.1f})")
        raise Pruned(f"pruned at {where}: its value can no longer enter the top {rank} complete "
                     f"trials (pruner.bound_rank={rank}; the last of them has {best:.1f}, "
                     f"lower bound {low:.1f})")


def best_value(study: optuna.Study, startup: int = 0, rank: int = 1) -> float | None:
    """The ``rank``-th best complete trial's value (1: the best); None until ``max(startup, rank)``
    trials are complete."""
    complete = sorted(t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                      if t.value is not None)
    return complete[rank - 1] if len(complete) >= max(startup, rank) else None


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
    seeds: int = 0  # seeds in the trial (0: this one and the finished ones)
    window: int = 100  # solve.window
    best: Callable[[], float | None] | None = None  # the best (rank-th best) complete value; None: no bound
    rank: int = 1  # which complete value ``best`` gives (pruner.bound_rank), for the message
    max_return: float | None = None  # the most an episode can return (tightens the bound)
    stop_on_solve: bool = True  # train.stop_on_solve: the run ends at the solve
    last_episode: int = 0  # last episode reported
    last_step: int = 0  # last step reported
    current: float | None = None  # this seed's value at the last report, as if its budget ended there
    env_steps: int = 0  # env steps at the last finished episode
    recent: deque[float] = field(default_factory=deque)  # the last ``window`` returns

    def __post_init__(self) -> None:
        self.recent = deque(self.recent, maxlen=self.window)

    @property
    def worst(self) -> float:
        """A seed not yet run counts as the worst an unsolved seed scores."""
        return seed_value(None, self.budget, self.penalty, 1.0)

    def _later(self) -> int:
        return max(0, self.seeds - self.index - 1)

    def estimate(self, current: float) -> float:
        """The trial's reported value: finished seeds, this one's ``current``, the rest at worst."""
        return aggregate([*self.finished, current, *[self.worst] * self._later()], self.how)

    def bound(self, current: float) -> float:
        """A lower bound on the trial's value, this seed's being at least ``current``."""
        return aggregate([*self.finished, current, *[float(self.window)] * self._later()], self.how)

    def __call__(self, info: EpisodeInfo) -> None:
        self.env_steps = info.env_step
        self.recent.append(info.ret)
        if info.episode % self.every and info.episode != self.budget:
            return
        cur, low = seed_now(info, self.recent, self.budget, self.window, self.threshold, self.penalty,
                            self.max_return)
        step = report_step(self.index, info.episode, self.budget)
        self.report(self.estimate(cur), step)
        self.last_episode, self.last_step, self.current = info.episode, step, cur
        if run_ends(info, self.budget, self.stop_on_solve):
            # the seed's run ends here and its value is final: stopping it saves nothing, and the
            # trial checks again once the seed is recorded (or, after its last seed, completes)
            return
        where = f"step {step} (seed index {self.index}, episode {info.episode})"
        self.check_bound(self.bound(low), where)
        if self.should_prune():
            raise Pruned(f"pruned at {where}")

    def check_bound(self, low: float, where: str) -> None:
        """:func:`check_bound` against ``best()``."""
        check_bound(low, where, self.best() if self.best is not None else None, self.rank)

    def fill(self, value: float) -> int:
        """Report the trial's value with this seed finished at ``value`` at the rest of its slot;
        returns the last step."""
        for ep in grid(self.every, self.budget, self.last_episode):
            self.report(self.estimate(value), report_step(self.index, ep, self.budget))
        return report_step(self.index, self.budget, self.budget)


@dataclass
class _TrialState:
    """What a trial has done so far (for its end, whatever the way it ends)."""

    mlflow: Any = None  # TrialRun | None
    reporter: Reporter | None = None  # of the seed being run
    env_steps: int = 0
    last_step: int = 0  # last step reported
    solved: list[int | None] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # the finished seeds' values
    seeds: Any = None  # lockstep.Seeds of a trial whose seeds run in lockstep

    def values_run(self) -> list[float]:
        """The finished seeds' values and, if one was in flight, its value at its last report
        (in lockstep: each seed's final value, else its value at the last report)."""
        if self.seeds is not None:
            return self.seeds.values()
        current = self.reporter.current if self.reporter is not None else None
        return [*self.values, *([] if current is None else [current])]

    def steps_run(self) -> int:
        """Env steps of the seeds run, the one(s) in flight up to their last report or stop."""
        if self.seeds is not None:
            return sum(self.seeds.env_steps)
        return self.env_steps + (self.reporter.env_steps if self.reporter is not None else 0)


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
        values = state.values  # shared: a stop records the finished seeds' values
        startup = int(cfg.pruner.args.get("n_startup_trials", 0))  # the bound waits for them too
        rank = cfg.pruner.bound_rank
        best = ((lambda: best_value(trial.study, startup, rank)) if cfg.pruner.bound and cfg.pruner.name != "none"
                else None)
        if cfg.pruner.lockstep and len(seeds) > 1:
            return self._run_lockstep(trial, overrides, seeds, state, label, best)
        for i, seed in enumerate(seeds):
            rcfg = compose_config([*cfg.base, *overrides, f"seed={seed}"])
            budget = rcfg.train.max_episodes
            penalty = censor_penalty(cfg.objective.penalty, budget)
            rep = Reporter(trial.report, trial.should_prune, i, budget, cfg.pruner.report_every,
                           solve_threshold(rcfg, check_compatible(rcfg)), penalty, cfg.objective.aggregate,
                           list(values), seeds=len(seeds), window=rcfg.solve.window,
                           best=best, rank=rank, max_return=cfg.pruner.max_return,
                           stop_on_solve=rcfg.train.stop_on_solve)
            state.reporter = rep
            result = self.run_seed(rcfg, trial, i, label=label, group=f"{study}/trial-{trial.number}",
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
            state.last_step = rep.fill(v)
            if i + 1 < len(seeds):
                where = f"step {state.last_step} (after seed index {i})"
                rep.check_bound(rep.bound(v), where)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at {where}")
        return aggregate(values, cfg.objective.aggregate)

    def _run_lockstep(self, trial: optuna.Trial, overrides: list[str], seeds: list[int], state: _TrialState,
                      label: str | None, best: Callable[[], float | None] | None) -> float:
        """The seeds side by side (``pruner.lockstep``, :mod:`rlexp.sweep.lockstep`)."""
        from rlexp.sweep import lockstep as ls

        cfg = self.sweep.cfg
        study = self.sweep.study_name
        rank = cfg.pruner.bound_rank
        jobs = [ls.SeedJob(i, [*cfg.base, *overrides, f"seed={seed}"], cfg.pruner.report_every, cfg.objective.penalty,
                           cfg.pruner.max_return,
                           {"label": label, "group": f"{study}/trial-{trial.number}",
                            "tags": {"sweep": study, "trial": trial.number, "sweep_role": "seed"},
                            "parent_run_id": state.mlflow.run_id if state.mlflow else None})
                for i, seed in enumerate(seeds)]
        state.seeds = ls.Seeds(len(seeds))

        def report(value: float, step: int) -> None:
            trial.report(value, step)
            state.last_step = step

        def seed_done(i: int, value: float, solved_at: int | None, env_steps: int) -> None:
            if state.mlflow:
                state.mlflow.seed_done(i, value, solved_at, env_steps)

        def bound(low: float, where: str) -> None:
            check_bound(low, where, best() if best is not None else None, rank)

        value = self.run_lockstep(trial, jobs, cfg.objective.aggregate, report, trial.should_prune, bound,
                                  seed_done, state.seeds)
        state.values[:] = [float(v) for v in state.seeds.final if v is not None]
        state.solved[:] = list(state.seeds.solved)
        trial.set_user_attr("seed_values", state.values)
        trial.set_user_attr("episodes_to_solve", state.solved)
        return value

    def run_lockstep(self, trial: optuna.Trial, jobs: Sequence[Any], *args: Any) -> float:
        """Train ``trial``'s seeds side by side (:func:`rlexp.sweep.lockstep.run_lockstep`, whose
        arguments follow ``jobs``; a replay feeds recorded episodes to :func:`~rlexp.sweep.lockstep.coordinate`)."""
        from rlexp.sweep import lockstep as ls

        return ls.run_lockstep(jobs, *args)

    def run_seed(self, rcfg: Any, trial: optuna.Trial, index: int, **kwargs: Any) -> TrainResult:
        """Train seed ``index`` of ``trial`` (:func:`rlexp.train.run`; a replay feeds recorded episodes)."""
        return run(rcfg, **kwargs)

    @staticmethod
    def seed_result(result: TrainResult, window: int, threshold: float, budget: int, penalty: float) -> float:
        """A finished seed's value (the censoring rule on the run's returns)."""
        return final_value(result.episodes_to_solve, tail_mean(result.returns, window), threshold, budget, penalty)

    @staticmethod
    def _end(trial: optuna.Trial, state: _TrialState, what: str, value: float | None,
             reason: str | None) -> None:
        if state.reporter is not None:  # the interrupted seed's steps count too
            state.last_step = state.reporter.last_step or state.last_step
        state.env_steps = state.steps_run()
        try:
            trial.set_user_attr("env_steps", state.env_steps)
            if what == "pruned":
                trial.set_user_attr("pruned_at", state.last_step)
                trial.set_user_attr("seed_values_run", state.values_run())
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
