"""The Optuna side: storage, sampler and pruner from the definition, the trial budget, start points.

Trials that count towards ``n_trials``: COMPLETE, PRUNED, and FAIL with a ``fail_reason`` (a
configuration that diverged or raised). A FAIL without one is *lost* (its worker died or was
interrupted; the heartbeat fails it): not counted, so a resume runs another. A FAIL with ``surplus``
ran nothing and is not counted either: asked for in the instant another worker started the last
trial needed, or a duplicate start point (:func:`withdraw`). (Optuna's ``MaxTrialsCallback`` would
count lost trials, or let N workers overshoot by up to N - 1.)
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
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
    database two workers (or machines) starting together both run CREATE TABLE, and the loser fails
    with a duplicate key (PostgreSQL's ``pg_type_typname_nsp_index``), "already exists", or (SQLite)
    "UNIQUE constraint failed: alembic_version.version_num"."""
    import sqlalchemy.exc

    text = str(e).lower()
    kinds = sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError | sqlalchemy.exc.OperationalError
    return isinstance(e, kinds) and any(m in text for m in ("duplicate key", "already exists", "unique constraint"))


def trial_seed(seed: int, number: int) -> int:
    """Trial ``number``'s sampler seed: ``seed`` and ``number`` mixed (not added, so that sweeps
    with seeds 0 and 1 do not share their draws one trial apart)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class SweepSampler(optuna.samplers.BaseSampler):
    """The configured sampler, re-seeded for each trial from ``(seed, trial.number)``.

    With one seeded stream per worker (what Optuna gives), which trial draws what depends on which
    worker asked first; seeded per trial, trial k's draw depends only on the seed, k and the trials
    finished when it was asked: the random start-up trials are the same whatever the workers, hosts
    and restarts, and a sweep run again with another pruner starts from the same trials.
    """

    def __init__(self, make: Any, seed: int | None) -> None:
        self._make, self._seed = make, seed
        self._inner: optuna.samplers.BaseSampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seed is not None:
            self._inner = self._make(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler in a :class:`SweepSampler`, except that QMC keeps one seed (its
    sequence is shared by the study and its seed only scrambles it)."""
    s = cfg.sampler
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler,
               "qmc": optuna.samplers.QMCSampler}

    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return classes[s.name](seed=seed, **s.args)

    try:
        return SweepSampler(lambda _: make(s.seed), None) if s.name == "qmc" else SweepSampler(make, s.seed)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sampler.args={dict(s.args)!r} rejected by {classes[s.name].__name__}: {e}") from None
    except ImportError as e:
        raise ConfigError(f"sampler.name={s.name!r} needs a missing package: {e}") from None


def make_pruner(cfg: SweepConfig, budget: int) -> optuna.pruners.BasePruner:
    """The configured pruner; Hyperband's ``max_resource`` defaults to the budget (the last step).
    ``none`` ignores ``pruner.args``, so ``pruner.name=none`` switches pruning off whatever the file says."""
    p = cfg.pruner
    args = dict(p.args) if p.name != "none" else {}
    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner, "wilcoxon": optuna.pruners.WilcoxonPruner,
               "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    if p.name == "hyperband":
        args.setdefault("max_resource", budget)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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
    out = dict.fromkeys(("complete", "pruned", "failed", "lost", "running"), 0)
    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
              TrialState.WAITING: "running"}
    for t in trials:
        if t.state == TrialState.FAIL and not t.user_attrs.get("surplus"):
            out["lost" if is_lost(t) else "failed"] += 1
        elif t.state in states:
            out[states[t.state]] += 1
    return out


def done(trials: Iterable[FrozenTrial]) -> int:
    return sum(1 for t in trials if counts(t))


def ahead_of(trials: Iterable[FrozenTrial], number: int) -> int:
    """Trials numbered before ``number`` that count or may still count (running)."""
    return sum(1 for t in trials if t.number < number and (counts(t) or t.state == TrialState.RUNNING))


def best(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


# --------------------------------------------------------------------------- start points
def covers(t: FrozenTrial) -> bool:
    """Whether trial ``t`` runs, ran or will run its parameters (not lost, not surplus)."""
    return counts(t) or (t.state in (TrialState.WAITING, TrialState.RUNNING) and not t.user_attrs.get("surplus"))


def runs_elsewhere(trials: Sequence[FrozenTrial], number: int) -> bool:
    """Whether trial ``number`` is a start point an earlier trial runs, ran or will run."""
    label = next((t.user_attrs.get("start") for t in trials if t.number == number), None)
    return label is not None and any(t.number < number and t.user_attrs.get("start") == label and covers(t)
                                     for t in trials)


def enqueue_start_points(study: optuna.Study, points: Sequence[tuple[str, dict[str, Any]]],
                         n_trials: int) -> list[str]:
    """Enqueue the start points (label, params) that no trial covers (a new study: all of them;
    after a kill: the lost ones), as many as trials are left, then :func:`withdraw`; returns the
    labels enqueued. Two commands starting at once may both enqueue: the later copies are withdrawn."""
    trials = study.get_trials(deepcopy=False)
    covered = {t.user_attrs.get("start") for t in trials if covers(t)}
    left = n_trials - done(trials) - sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    todo = [(label, params) for label, params in points if label not in covered][:max(0, left)]
    for label, params in todo:
        study.enqueue_trial(params, user_attrs={"start": label})
    withdraw(study, n_trials)
    return [label for label, _ in todo]


def withdraw(study: optuna.Study, n_trials: int) -> int:
    """Take the WAITING trials no worker should run (a start point an earlier trial covers, or any
    once ``n_trials`` count) off the queue: each is claimed as a worker would pop it (only one
    process wins a trial) and ends FAIL with ``surplus`` (not counted). Returns how many."""
    trials = study.get_trials(deepcopy=False)
    finished = done(trials) >= n_trials
    storage, n = study._storage, 0
    for t in trials:
        if t.state != TrialState.WAITING or not (finished or runs_elsewhere(trials, t.number)):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                continue  # a worker popped it: its objective sees the same and runs nothing
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_user_attr(t._trial_id, "surplus", True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        n += 1
    return n


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
    what = {TrialState.COMPLETE: f"COMPLETE value {trial.value or 0:.1f}",
            TrialState.PRUNED: f"PRUNED at step {trial.user_attrs.get('pruned_at', trial.last_step)}"}.get(
        trial.state, "LOST (interrupted; not counted)" if is_lost(trial)
        else f"FAILED: {trial.user_attrs.get('fail_reason', '')}"[:200])
    b = best(trials)
    durations = [d for t in trials if counts(t) and (d := duration_s(t)) is not None]
    left = max(0, n_trials - n_done)
    eta = "done" if not left else "time left: -" if not durations else \
        f"~{_hms(sum(durations) / len(durations) * left / workers)} left"
    lost = f", {c['lost']} lost" if c["lost"] else ""
    best_s = f"best {b.value:.1f} (trial {b.number})" if b is not None and b.value is not None else "best -"
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
