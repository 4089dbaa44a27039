"""The Optuna side: storage, sampler and pruner from the definition, the trial budget, progress lines.

Which trials count towards ``n_trials``: COMPLETE, PRUNED, and FAIL with a ``fail_reason`` user
attribute (the objective sets it when a configuration diverges or raises). A FAIL without one is a
*lost* trial: its worker was killed or interrupted mid-trial (the heartbeat marks it FAIL on the
next start) and it is not counted, so a resumed sweep runs it again with the sampler's next proposal.
A FAIL with ``surplus`` was asked for by a worker in the instant another started the last trial
needed; it runs nothing and is not counted either.

Why not ``optuna.study.MaxTrialsCallback``: counting every state it counts lost trials (a resume
would come up short), counting only finished ones it lets N workers overshoot by up to N - 1.
"""

from __future__ import annotations

import math
import re
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from rlexp.config import ConfigError
from rlexp.sweep.config import SweepConfig
from rlexp.tracking import retry_locked

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage_url(url: str) -> str:
    """A relative SQLite path made absolute (every worker and a resume find the same file)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix):].startswith("/") and url != prefix + ":memory:":
        return prefix + str(Path.cwd() / url[len(prefix):])
    return url


def redact(url: str) -> str:
    """The URL with any password hidden, for logs, tags and preset comments."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def make_storage(url: str, heartbeat_interval: int) -> optuna.storages.RDBStorage:
    """The RDB storage with a heartbeat, so a dead worker's running trial is failed as lost."""
    url = _with_driver(storage_url(url))
    if url.startswith("sqlite"):
        # several workers write to one file: wait for the lock instead of failing at once
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}

    def connect() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                              heartbeat_stale_trial_callback=on_lost_trial)

    try:  # a lost race to create the tables: they exist now, or soon
        return retry_locked(connect, attempts=SCHEMA_ATTEMPTS, when=_schema_race, delay=0.5)
    except Exception as e:
        raise ConfigError(f"storage={redact(url)!r}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


SCHEMA_ATTEMPTS = 5


def _schema_race(e: Exception) -> bool:
    """Whether ``e`` is another process creating Optuna's tables at the same moment: on a new
    PostgreSQL database two workers (or machines) starting together both run CREATE TABLE, and
    the loser fails with a duplicate key (``pg_type_typname_nsp_index``) or "already exists"."""
    import sqlalchemy.exc

    text = str(e).lower()
    return isinstance(e, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError) and (
        "duplicate key" in text or "already exists" in text)


def trial_seed(seed: int, number: int) -> int:
    """Trial ``number``'s sampler seed: ``seed`` and ``number`` mixed (not added, so that sweeps
    with seeds 0 and 1 do not share their draws one trial apart)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def as_complete(t: FrozenTrial, value: float) -> FrozenTrial:
    """Trial ``t`` as a complete one with ``value``."""
    return FrozenTrial(number=t.number, state=TrialState.COMPLETE, value=value, values=None,
                       datetime_start=t.datetime_start, datetime_complete=t.datetime_complete, params=t.params,
                       distributions=t.distributions, user_attrs=t.user_attrs, system_attrs=t.system_attrs,
                       intermediate_values=t.intermediate_values, trial_id=t._trial_id)


def last_value(t: FrozenTrial) -> float:
    """A pruned trial's last reported value (NaN if none): rlexp's objective counts the seeds it
    did not run as the worst, so this is a pessimistic value."""
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan


def seeds_run_value(how: str) -> Any:
    """A pruned trial's value over the seeds it ran (``how``: mean or median), the seed in flight as
    if its budget had ended at the stop (the ``seed_values_run`` the objective records); a trial
    without that record (a study from before it) falls back to :func:`last_value`."""
    from rlexp.sweep.objective import aggregate  # here: the objective module imports this one

    def value(t: FrozenTrial) -> float:
        run = t.user_attrs.get("seed_values_run")
        return aggregate(run, how) if run else last_value(t)
    return value


class PrunedAsComplete:
    """A view of a study in which pruned trials are complete with ``value(trial)`` (default:
    :func:`last_value`); those it gives no value (NaN) stay pruned."""

    def __init__(self, study: optuna.Study, value: Any = last_value) -> None:
        self._study, self._value = study, value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._view(lambda asked: self._study._get_trials(deepcopy=deepcopy, states=asked, use_cache=use_cache),
                          states)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._view(lambda asked: self._study.get_trials(deepcopy=deepcopy, states=asked), states)

    def _view(self, get: Any, states: Any) -> list[FrozenTrial]:
        """The trials ``get(states)`` returns, pruned ones asked for too and shown complete."""
        wanted = None if states is None else set(states)
        out = []
        for t in get(None if wanted is None else tuple(wanted | {TrialState.PRUNED})):
            if t.state == TrialState.PRUNED:
                v = self._value(t)
                if not math.isnan(v):
                    t = as_complete(t, v)
            if wanted is None or t.state in wanted:
                out.append(t)
        return out


class SweepSampler(optuna.samplers.BaseSampler):
    """The configured sampler, seeded per trial and (optionally) learning from pruned trials.

    Seeding: with one seeded stream per worker (what Optuna gives), which trial draws what depends
    on which worker asked first: two runs of the same sweep with 2 workers, or one resumed on
    another machine, start from different random trials. Seeded from ``(seed, trial.number)``,
    trial k's draw depends only on the seed, k and the trials finished when it was asked: the
    random start-up trials are the same whatever the workers, hosts and restarts, and a sweep run
    again with another pruner starts from the same trials. Distinct trials get distinct seeds.

    Pruned trials (``consider_pruned``, off by default): Optuna's TPE ranks every pruned trial
    below every complete one, so its "good" group is made of complete trials only; when the pruner
    stops most trials, that is whatever few completed (in one measured sweep, the default
    configuration alone, and TPE kept proposing trials near it). With
    ``consider_pruned`` the sampler sees a pruned trial as complete, as
    ``CmaEsSampler(consider_pruned_trials=True)`` does, with the value ``pruned`` gives it:
    its last reported value (``sampler.pruned_value=last``; pessimistic: rlexp's objective counts
    the seeds a trial did not run as unsolved, so a pruned trial ranks by how far it got), or its
    value over the seeds it ran (``seeds_run``: a trial stopped after solving two seeds ranks with
    the complete trials that solved theirs about as fast, not below every one that solved none).
    Measured on the ``dqn_cartpole`` sweep (two sampler seeds, each against a no-pruner sweep),
    the last value saved fewer env steps and found worse trials than Optuna's own handling:
    pruned trials that got far were mediocre ones the pruner stopped late, and ranking them drew
    TPE towards them. A study without pruned trials is seen as it is, whatever these settings.
    """

    def __init__(self, make: Any, seed: int | None, pruned: Any = None) -> None:
        """``pruned``: None (Optuna's handling of pruned trials) or the value a pruned trial is seen
        complete with (:class:`PrunedAsComplete`)."""
        self._make, self._seed, self._pruned = make, seed, pruned
        self._inner: optuna.samplers.BaseSampler = make(seed)

    def _view(self, study: optuna.Study) -> Any:
        return study if self._pruned is None else PrunedAsComplete(study, self._pruned)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seed is not None:
            self._inner = self._make(trial_seed(self._seed, trial.number))
        self._inner.before_trial(self._view(study), trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self._inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler in a :class:`SweepSampler`: with ``sampler.seed``, each trial's draw
    is seeded from ``(seed, trial number)`` (:func:`trial_seed`), except QMC's (its sequence is shared by the study and
    its seed only scrambles it, so every trial keeps the one seed); with ``sampler.consider_pruned``
    it learns from pruned trials, by the value ``sampler.pruned_value`` names."""
    s = cfg.sampler
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler,
               "qmc": optuna.samplers.QMCSampler}

    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return classes[s.name](seed=seed, **s.args)

    pruned = None
    if s.consider_pruned:
        pruned = last_value if s.pruned_value == "last" else seeds_run_value(cfg.objective.aggregate)
    try:
        if s.name == "qmc":
            return SweepSampler(lambda _: make(s.seed), None, pruned)
        return SweepSampler(make, s.seed, pruned)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sampler.args={dict(s.args)!r} rejected by {classes[s.name].__name__}: {e}") from None
    except ImportError as e:
        raise ConfigError(f"sampler.name={s.name!r} needs a missing package: {e}") from None


def make_pruner(cfg: SweepConfig, budget: int) -> optuna.pruners.BasePruner:
    """The configured pruner; Hyperband's ``max_resource`` defaults to a trial's last step.

    ``none`` ignores ``pruner.args`` (so ``pruner.name=none`` switches pruning off whatever the file says);
    ``bound`` is no Optuna pruner: ``pruner.bound`` alone stops trials.
    """
    p = cfg.pruner
    if p.name == "bound":  # the bound alone: it reads n_startup_trials itself
        extra = sorted(set(p.args) - {"n_startup_trials"})
        if extra:
            raise ConfigError(f"pruner.args={dict(p.args)!r}: pruner.name=bound takes only n_startup_trials "
                              f"(complete trials the bound waits for), not {extra}")
        return optuna.pruners.NopPruner()
    args = dict(p.args) if p.name != "none" else {}
    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner, "threshold": optuna.pruners.ThresholdPruner,
               "none": optuna.pruners.NopPruner}
    if p.name == "hyperband":
        args.setdefault("max_resource", budget * (1 if p.lockstep else len(cfg.seeds)))
    try:
        return classes[p.name](**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pruner.args={dict(p.args)!r} rejected by {classes[p.name].__name__}: {e}") from None


# --------------------------------------------------------------------------- the trial budget
def is_lost(t: FrozenTrial) -> bool:
    """A trial whose worker died or was interrupted mid-trial (not counted; run again)."""
    return t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs and not t.user_attrs.get("surplus")


def counts(t: FrozenTrial) -> bool:
    """Whether a trial counts towards ``n_trials``."""
    return t.state in FINISHED and not is_lost(t) and not t.user_attrs.get("surplus")


def tally(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Counts by outcome: complete, pruned, failed (counted), lost, running (surplus trials: none)."""
    out = {"complete": 0, "pruned": 0, "failed": 0, "lost": 0, "running": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
        elif t.state == TrialState.PRUNED:
            out["pruned"] += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("surplus"):
            out["lost" if is_lost(t) else "failed"] += 1
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            out["running"] += 1
    return out


def done(trials: Iterable[FrozenTrial]) -> int:
    return sum(1 for t in trials if counts(t))


def ahead_of(trials: Iterable[FrozenTrial], number: int) -> int:
    """Trials numbered before ``number`` that count or may still count (running)."""
    return sum(1 for t in trials if t.number < number and (counts(t) or t.state == TrialState.RUNNING))


def best(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


def duration_s(t: FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def progress_line(study_name: str, trial: FrozenTrial, trials: list[FrozenTrial], n_trials: int,
                  workers: int) -> str:
    """One line per finished trial: outcome, tally, best so far, time left."""
    c = tally(trials)
    n_done = c["complete"] + c["pruned"] + c["failed"]
    if trial.state == TrialState.COMPLETE:
        what = f"COMPLETE value {trial.value:.1f}"
    elif trial.state == TrialState.PRUNED:
        what = f"PRUNED at step {trial.user_attrs.get('pruned_at', trial.last_step)}"
    elif is_lost(trial):
        what = "LOST (interrupted; not counted)"
    else:
        what = f"FAILED: {trial.user_attrs.get('fail_reason', '')}"[:200]
    b = best(trials)
    best_s = f"best {b.value:.1f} (trial {b.number})" if b is not None and b.value is not None else "best -"
    durations = [d for t in trials if counts(t) and (d := duration_s(t)) is not None]
    remaining = max(0, n_trials - n_done)
    if remaining == 0:
        eta = "done"
    elif durations:
        eta = f"~{_hms(sum(durations) / len(durations) * remaining / workers)} left"
    else:
        eta = "time left: -"
    lost = f", {c['lost']} lost" if c["lost"] else ""
    return (f"[{study_name}] trial {trial.number} {what} | {n_done}/{n_trials} done ({c['complete']} complete, "
            f"{c['pruned']} pruned, {c['failed']} failed{lost}) | {best_s} | {eta}")


class Progress:
    """Optuna callback: print the progress line, and stop this worker once the budget is reached."""

    def __init__(self, study_name: str, n_trials: int, workers: int) -> None:
        self.study_name, self.n_trials, self.workers = study_name, n_trials, workers

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        if not trial.user_attrs.get("surplus"):
            print(progress_line(self.study_name, trial, trials, self.n_trials, self.workers),
                  file=sys.stderr, flush=True)
        # counted + running covers the trials other workers are finishing right now
        if done(trials) + sum(t.state == TrialState.RUNNING for t in trials) >= self.n_trials:
            study.stop()


def on_lost_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat-stale callback: a dead worker's trial was failed; close its MLflow runs too."""
    print(f"[{study.study_name}] trial {trial.number} LOST: its worker stopped mid-trial; "
          "not counted, it will be replaced", file=sys.stderr, flush=True)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        from rlexp.sweep.tracking import close_lost_runs

        try:
            close_lost_runs(run_id)
        except Exception as e:  # tracking trouble must not stop the sweep
            print(f"[{study.study_name}] could not close the MLflow runs of trial {trial.number}: {e}",
                  file=sys.stderr)


def wait_for_stale(study: optuna.Study, heartbeat_interval: int) -> None:
    """On (re)start: fail the running trials of dead workers now, so they are not counted in flight.

    A trial is stale once its heartbeat is older than the grace period (2 heartbeats); a RUNNING
    trial still beating after that belongs to a live worker (another machine) and is left alone.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    grace = 2 * heartbeat_interval
    print(f"[{study.study_name}] {len(running)} trial(s) RUNNING: waiting {grace + 1} s for their "
          "heartbeat to tell a dead worker's from a live one", file=sys.stderr, flush=True)
    time.sleep(grace + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
