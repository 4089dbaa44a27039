"""The Optuna side: storage, sampler and pruner from the definition, the trial budget, start points.

Trials that count towards ``n_trials``: COMPLETE, PRUNED, and FAIL with a ``fail_reason``. A FAIL
without one is *lost* (its worker died or was interrupted), one with ``surplus`` ran nothing: neither
counts, so a resume runs another.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from rlexp.config import ConfigError
from rlexp.runs import pid_alive
from rlexp.sweep.config import SweepConfig
from rlexp.sweep.tracking import close_lost_runs
from rlexp.tracking import retry_locked

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def say(study_name: str, text: str) -> None:
    print(f"[{study_name}] {text}", file=sys.stderr, flush=True)


def storage_url(url: str) -> str:
    """A relative SQLite or journal path made absolute (every worker and a resume find the same file)."""
    for prefix in ("sqlite:///", "journal:///"):
        if url.startswith(prefix) and not url[len(prefix):].startswith("/") and url != "sqlite:///:memory:":
            return prefix + str(Path.cwd() / url[len(prefix):])
    return url


def redact(url: str) -> str:
    """The URL with any password hidden, for logs, tags and preset comments."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1: psycopg2 when only it is installed."""
    find = importlib.util.find_spec
    if url.startswith("postgresql://") and find("psycopg") is None and find("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _schema_race(e: Exception) -> bool:
    """Whether ``e`` is another process creating Optuna's tables at the same moment."""
    import sqlalchemy.exc as sa

    return isinstance(e, sa.IntegrityError | sa.ProgrammingError | sa.OperationalError) and any(
        m in str(e).lower() for m in ("duplicate key", "already exists", "unique constraint"))


def make_storage(url: str, heartbeat_interval: int) -> optuna.storages.BaseStorage:
    """The RDB storage with a heartbeat, so a dead worker's running trial is failed as lost; or a
    journal file (``journal:///FILE``), whose lost trials :func:`fail_lost` finds by process id."""
    url = storage_url(url)
    if url.startswith("journal:///"):
        path = Path(url[len("journal:///"):])
        if not path.parent.is_dir():
            raise ConfigError(f"storage={url!r}: no folder {path.parent} for the journal file")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    url = with_driver(url)
    # several workers write to one SQLite file: wait for the lock instead of failing at once
    engine_kwargs: dict[str, Any] = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                     else {"pool_pre_ping": True})
    try:  # a lost race to create the tables: they exist now, or soon
        return retry_locked(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
            heartbeat_stale_trial_callback=on_lost_trial), attempts=5, when=_schema_race, delay=0.5)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"storage={redact(url)!r}: {type(e).__name__}: {first}") from None


class SweepSampler(BaseSampler):
    """The configured sampler, made again for each trial with a seed mixed from ``(seed, trial.number)``
    (not added: sweeps with seeds 0 and 1 do not share draws one trial apart). Trial k's draw depends
    only on the seed, k and the trials finished when it is asked, not on which worker asks."""

    def __init__(self, make: Callable[[int | None], BaseSampler], seed: int | None) -> None:
        self._make, self._seed, self._inner = make, seed, make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seed is not None:
            seed = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
            self._inner = self._make(int(seed))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, *args: Any) -> Any:
        return self._inner.infer_relative_search_space(*args)

    def sample_relative(self, *args: Any) -> Any:
        return self._inner.sample_relative(*args)

    def sample_independent(self, *args: Any) -> Any:
        return self._inner.sample_independent(*args)

    def after_trial(self, *args: Any) -> None:
        self._inner.after_trial(*args)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _build(kind: str, cls: Any, args: dict[str, Any], **kwargs: Any) -> Any:
    try:
        return cls(**kwargs, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{kind}.args={args!r} rejected by {cls.__name__}: {e}") from None
    except ImportError as e:
        raise ConfigError(f"{kind}.name: {cls.__name__} needs a missing package: {e}") from None


def make_sampler(cfg: SweepConfig) -> SweepSampler:
    """The configured sampler in a :class:`SweepSampler`; QMC keeps one seed (its sequence is the
    study's, the seed only scrambles it)."""
    s, samplers = cfg.sampler, optuna.samplers
    cls = {"tpe": samplers.TPESampler, "random": samplers.RandomSampler, "cmaes": samplers.CmaEsSampler,
           "gp": samplers.GPSampler, "qmc": samplers.QMCSampler}[s.name]
    qmc = s.name == "qmc"
    return SweepSampler(lambda seed: _build("sampler", cls, dict(s.args), seed=s.seed if qmc else seed),
                        None if qmc else s.seed)


def make_pruner(cfg: SweepConfig, budget: int) -> optuna.pruners.BasePruner:
    """The configured pruner; Hyperband's ``max_resource`` defaults to the budget (the last step).
    ``none`` ignores ``pruner.args``, so ``pruner.name=none`` switches pruning off whatever the file says."""
    p, pruners = cfg.pruner, optuna.pruners
    if p.name == "none":
        return pruners.NopPruner()
    cls = {"median": pruners.MedianPruner, "percentile": pruners.PercentilePruner,
           "successive_halving": pruners.SuccessiveHalvingPruner, "hyperband": pruners.HyperbandPruner,
           "wilcoxon": pruners.WilcoxonPruner, "threshold": pruners.ThresholdPruner}[p.name]
    extra = {"max_resource": budget} if p.name == "hyperband" and "max_resource" not in p.args else {}
    return _build("pruner", cls, dict(p.args), **extra)


# --------------------------------------------------------------------------- the trial budget
def outcome(t: FrozenTrial) -> str:
    """complete | pruned | failed (these count towards ``n_trials``) | lost | surplus | running."""
    if t.user_attrs.get("surplus"):
        return "surplus"
    if t.state == TrialState.FAIL:
        return "failed" if "fail_reason" in t.user_attrs else "lost"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(t.state, "running")


def counts(t: FrozenTrial) -> bool:
    return outcome(t) in ("complete", "pruned", "failed")


def tally(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Trials by outcome (surplus ones left out)."""
    c = Counter(outcome(t) for t in trials)
    return {k: c[k] for k in ("complete", "pruned", "failed", "lost", "running")}


def done(trials: Sequence[FrozenTrial]) -> int:
    return sum(counts(t) for t in trials)


def ahead_of(trials: Sequence[FrozenTrial], number: int) -> int:
    """Trials numbered before ``number`` that count or may still count (running)."""
    return sum(t.number < number and (counts(t) or t.state == TrialState.RUNNING) for t in trials)


def ranked(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The complete trials, best first (ties to the lower number)."""
    return sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                  key=lambda t: (t.value, t.number))


def best(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    return next(iter(ranked(trials)), None)


# --------------------------------------------------------------------------- start points
def _covers(t: FrozenTrial) -> bool:  # runs, ran or will run (queued) its parameters
    return outcome(t) in ("complete", "pruned", "failed", "running")


def runs_elsewhere(trials: Sequence[FrozenTrial], number: int) -> bool:
    """Whether trial ``number`` is a start point an earlier trial runs, ran or will run."""
    label = next((t.user_attrs.get("start") for t in trials if t.number == number), None)
    return label is not None and any(t.number < number and t.user_attrs.get("start") == label and _covers(t)
                                     for t in trials)


def enqueue_start_points(study: optuna.Study, points: Sequence[tuple[str, dict[str, Any]]],
                         n_trials: int) -> list[str]:
    """Enqueue the start points (label, params) no trial covers, as many as trials are left, then
    :func:`withdraw`; returns their labels."""
    trials = study.get_trials(deepcopy=False)
    covered = {t.user_attrs.get("start") for t in trials if _covers(t)}
    left = n_trials - sum(_covers(t) for t in trials)
    todo = [(label, params) for label, params in points if label not in covered][:max(0, left)]
    for label, params in todo:
        study.enqueue_trial(params, user_attrs={"start": label})
    withdraw(study, n_trials)
    return [label for label, _ in todo]


def withdraw(study: optuna.Study, n_trials: int) -> int:
    """Take the WAITING trials no worker should run (a start point an earlier trial covers, or any
    once ``n_trials`` count) off the queue: each is claimed as a worker would pop it (one process wins
    a trial) and ends FAIL with ``surplus``."""
    trials = study.get_trials(deepcopy=False)
    finished, storage, n = done(trials) >= n_trials, study._storage, 0
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


# --------------------------------------------------------------------------- progress and lost trials
def progress_line(study_name: str, trial: FrozenTrial, trials: Sequence[FrozenTrial], n_trials: int) -> str:
    """One line per finished trial: its outcome, the tally, the best so far."""
    c, b = tally(trials), best(trials)
    what = {"complete": f"COMPLETE value {trial.value or 0:.1f}",
            "pruned": f"PRUNED at step {trial.last_step}",
            "lost": "LOST (interrupted; not counted)"}.get(
        outcome(trial), f"FAILED: {trial.user_attrs.get('fail_reason', '')}"[:200])
    lost = f", {c['lost']} lost" if c["lost"] else ""
    best_s = f"best {b.value:.1f} (trial {b.number})" if b is not None else "best -"
    return (f"[{study_name}] trial {trial.number} {what} | {done(trials)}/{n_trials} done ({c['complete']} "
            f"complete, {c['pruned']} pruned, {c['failed']} failed{lost}) | {best_s}")


class Progress:
    """Optuna callback: print the progress line, and stop this worker once the budget is reached."""

    def __init__(self, study_name: str, n_trials: int) -> None:
        self.study_name, self.n_trials = study_name, n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        if not trial.user_attrs.get("surplus"):
            print(progress_line(self.study_name, trial, trials, self.n_trials), file=sys.stderr, flush=True)
        # counted + running covers the trials other workers are finishing right now
        if done(trials) + sum(t.state == TrialState.RUNNING for t in trials) >= self.n_trials:
            study.stop()


def on_lost_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat-stale callback: a dead worker's trial was failed; close its MLflow runs too."""
    say(study.study_name, f"trial {trial.number} LOST: its worker stopped mid-trial; not counted, it will be "
        "replaced")
    try:
        if trial.user_attrs.get("mlflow_run_id"):
            close_lost_runs(trial.user_attrs["mlflow_run_id"])
    except Exception as e:  # tracking trouble must not stop the sweep
        say(study.study_name, f"could not close the MLflow runs of trial {trial.number}: {e}")


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs (:func:`fail_lost`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_lost(study: optuna.Study) -> None:
    """Fail as lost the RUNNING trials whose worker is gone: a stale heartbeat (RDB storages) or, in a
    journal (no heartbeat), a worker process of this machine that has ended."""
    optuna.storages.fail_stale_trials(study)
    if not isinstance(study._storage, optuna.storages.JournalStorage):
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid), math.inf):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another command failed it first
            continue
        on_lost_trial(study, t)


def wait_for_stale(study: optuna.Study, heartbeat_interval: int) -> None:
    """On (re)start, fail the running trials of dead workers now, so they are not counted in flight: a
    trial is stale once its heartbeat is 2 heartbeats old; one still beating belongs to a live worker."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running and not isinstance(study._storage, optuna.storages.JournalStorage):
        grace = 2 * heartbeat_interval
        say(study.study_name, f"{len(running)} trial(s) RUNNING: waiting {grace + 1} s for their heartbeat "
            "to tell a dead worker's from a live one")
        time.sleep(grace + 1)
    fail_lost(study)
