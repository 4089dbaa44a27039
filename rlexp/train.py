"""Train one configuration: :func:`train` with any tracker, :func:`run` as one tracked MLflow run.

This is the programmatic API the CLI, the sweeper and the tests share. It takes a typed
:class:`~rlexp.config.Config` (never a DictConfig) and returns a :class:`TrainResult`.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlexp.algos.registry import check_compatible, get_algorithm
from rlexp.buffer import ReplayBuffer
from rlexp.checkpoint import Checkpoints, request_stop, set_global_rng_state, stoppable
from rlexp.checkpoint import writer as checkpoint_writer
from rlexp.config import Config, ConfigError
from rlexp.envs import EnvBatch, EnvSpec, solve_threshold
from rlexp.eval import evaluate
from rlexp.loops import DivergenceError, EpisodeInfo, EpisodeRecorder, Members, off_policy_loop
from rlexp.onpolicy import run_on_policy
from rlexp.policy import Policy, agent_state, log_model
from rlexp.progress import Progress
from rlexp.tracking import (
    MlflowTracker,
    NullTracker,
    Tracker,
    flatten,
    open_experiment,
    retry_locked,
    runtime_tags,
)


class RunInterrupted(Exception):
    """Stops a run on purpose (signal, pruning); the run ends as KILLED, not FAILED."""


@dataclass
class TrainResult:
    """The outcome of one run; what the sweeper and the analysis consume."""

    solved: bool
    episodes_to_solve: int | None
    episodes: int
    env_steps: int
    wall_time_s: float
    returns: list[float] = field(repr=False)
    run_id: str | None = None
    status: str = "FINISHED"  # FINISHED | FAILED | KILLED (the MLflow run's end status)
    error: str | None = None  # why a FAILED member failed (e.g. its loss diverged)

    @property
    def sps(self) -> float:
        return self.env_steps / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """The end-of-run metrics of the tracking contract."""
        out = {"solved": float(self.solved), "episodes": float(self.episodes),
               "env_steps": float(self.env_steps), "wall_time_s": self.wall_time_s, "sps": self.sps}
        if self.episodes_to_solve is not None:
            out["episodes_to_solve"] = float(self.episodes_to_solve)
        return out


def config_dict(cfg: Config) -> dict[str, Any]:
    """The typed config as plain data (for params, YAML and the sweeper)."""
    return dataclasses.asdict(cfg)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device; ``auto`` is a GPU when torch sees one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: torch sees no CUDA device here; use cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device='mps': torch sees no MPS device here; use cpu or auto")
    return torch.device(name)


def check_batch(cfgs: Sequence[Config]) -> None:
    """Refuse a batch whose members differ in anything but their seed (or repeat a seed)."""
    if not cfgs:
        raise ConfigError("a batch needs at least one config")
    first = dataclasses.replace(cfgs[0], seed=0)
    for c in cfgs[1:]:
        if dataclasses.replace(c, seed=0) != first:
            raise ConfigError(f"seed={c.seed}: a batch's configs may differ only in their seed")
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed={seeds}: a batch's seeds must be distinct")


def _run_off_policy(agent: Any, cfg: Config, spec: EnvSpec, members: Members,
                    resume: Mapping[str, Any] | None = None) -> None:
    a = cfg.algo
    seeds = [r.seed for r in members.recs]
    envs = EnvBatch(cfg.env, seeds)
    try:
        buffer = ReplayBuffer(a.buffer_size, spec.obs_dim, None if spec.discrete else spec.n_actions, seeds,
                              device=agent.device)
        off_policy_loop(agent, envs, buffer, members, learning_starts=a.learning_starts, train_freq=a.train_freq,
                        gradient_steps=a.gradient_steps, batch_size=a.batch_size,
                        log_interval=cfg.train.log_interval, resume=resume)
    finally:
        envs.close()


LOOPS: dict[str, Callable[..., None]] = {  # (agent, cfg, spec, members, resume)
    "off_policy": _run_off_policy,
    "on_policy": run_on_policy,
}


def train_batch(cfgs: Sequence[Config], trackers: Sequence[Tracker] | None = None, *,
                workdirs: Sequence[Path | None] | None = None,
                callback: Callable[[int, EpisodeInfo], None] | None = None, progress: bool = False,
                on_end: Callable[[int, TrainResult], None] | None = None,
                spec: EnvSpec | None = None, resume: Mapping[str, Any] | None = None) -> list[TrainResult]:
    """Train the seeds of one configuration together, each member to its own end.

    Every member's episodes go to its tracker; when a member ends (solved, out of budget, or
    diverged: ``status`` FAILED) its summary metrics, ``episodes.csv`` and model go to its tracker
    at that moment and ``on_end(k, result)`` is called. An interrupt (Ctrl-C, SIGTERM,
    :class:`RunInterrupted` from ``callback``) ends every member still training, KILLED or FAILED,
    with what it recorded kept, and propagates. With ``train.checkpoint_every`` each member's
    checkpoint is written every that many episodes and at a stop (:mod:`rlexp.checkpoint`);
    ``resume``, a checkpoint, continues its member (a batch of one) from there.
    """
    check_batch(cfgs)
    cfg, size = cfgs[0], len(cfgs)
    spec = spec or check_compatible(cfg)  # run_batch has checked it already
    algo = get_algorithm(cfg.algo.name)
    if size > 1 and not algo.batched:
        raise ConfigError(f"algo={cfg.algo.name!r} trains one seed per run; it cannot batch {size} seeds")
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(cfg.train.num_threads)
    random.seed(cfg.seed)  # members draw from their own generators; this only pins stray global draws
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    trackers = list(trackers) if trackers is not None else [NullTracker() for _ in cfgs]
    stack = ExitStack()
    dirs: list[Path] = []
    for wd in (workdirs or [None] * size):
        if wd is None:
            wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlexp-")))
        wd.mkdir(parents=True, exist_ok=True)
        dirs.append(wd)
    threshold = solve_threshold(cfg, spec)
    recs = [EpisodeRecorder(cfg.solve.window, threshold, cfg.train.max_episodes, cfg.train.stop_on_solve,
                            trackers[k], dirs[k] / "episodes.csv",
                            None if callback is None else partial(callback, k), seed=c.seed)
            for k, c in enumerate(cfgs)]
    results: list[TrainResult | None] = [None] * size
    agent: Any = None
    t0 = time.perf_counter()

    def end(k: int, status: str, error: str | None) -> None:
        rec, tracker = recs[k], trackers[k]
        rec.close()
        result = TrainResult(rec.solved_at is not None, rec.solved_at, rec.episodes, members.step,
                             time.perf_counter() - t0, list(rec.returns), status=status, error=error)
        tracker.log_metrics(result.summary(), step=rec.episodes)
        tracker.log_artifact(dirs[k] / "episodes.csv")
        state = agent_state(agent, k, size) if agent is not None else {}
        if state and status == "FINISHED" and cfg.eval.episodes:  # the greedy policy, as rlexp.eval plays it
            tracker.log_metrics(evaluate(Policy(cfgs[k], state).act, cfg.env, cfg.eval.episodes).metrics(),
                                step=rec.episodes)
        if cfg.train.save_model and state:
            torch.save(state, dirs[k] / "model.pt")
            log_model(tracker, state, cfgs[k])
        tracker.flush()
        results[k] = result
        if on_end is not None:
            on_end(k, result)

    members = Members(recs, cfg.train.max_steps, end,
                      Progress(recs, cfg.train.max_steps, cfg.train.log_every_s) if progress else None)
    if cfg.train.checkpoint_every and algo.loop in LOOPS:
        members.checkpoints = Checkpoints(cfg.train.checkpoint_every, checkpoint_writer(cfgs, trackers, dirs, recs))
    if resume is not None:
        members.load_member(resume["members"])
        set_global_rng_state(resume["global_rng"])
        t0 -= resume["members"]["recorder"]["elapsed"]
    with stack:
        try:
            agent = algo.build(cfg, spec, [c.seed for c in cfgs], device)
            loop = LOOPS.get(algo.loop)
            if loop is not None:
                with stoppable(members.checkpoints):
                    loop(agent, cfg, spec, members, resume)
            else:
                agent.learn(cfg, spec, members)
            members.end_all("FINISHED")
        except (KeyboardInterrupt, RunInterrupted) as e:
            members.end_all("KILLED", str(e) or type(e).__name__)
            raise
        except BaseException as e:
            members.end_all("FAILED", f"{type(e).__name__}: {e}")
            raise
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _raise_failed(result: TrainResult) -> TrainResult:
    """One run's contract: a diverged run raises :class:`DivergenceError` (after it is recorded)."""
    if result.status == "FAILED":
        raise DivergenceError(result.error or "the run failed")
    return result


def train(cfg: Config, tracker: Tracker | None = None, *, workdir: Path | None = None,
          callback: Callable[[EpisodeInfo], None] | None = None, progress: bool = False) -> TrainResult:
    """Train ``cfg`` (one seed) to its budget or until solved; every episode goes to ``tracker``.

    Whatever happens, the episodes recorded so far are written to ``episodes.csv`` in ``workdir``
    and handed to the tracker with the end-of-run metrics before the exception propagates.
    """
    cb = None if callback is None else (lambda _k, info: callback(info))
    return _raise_failed(train_batch([cfg], None if tracker is None else [tracker],
                                     workdirs=[workdir], callback=cb, progress=progress)[0])


SIGTERM_REASON = "terminated by SIGTERM"  # the KeyboardInterrupt's text when SIGTERM stopped a run


def failure_line(what: str, overrides: Sequence[str], reason: str, run_id: str | None) -> str:
    """One line for a job or sweep trial that did not finish: what, its overrides, the reason (on one
    line, at most 300 characters) and its MLflow run, if it has one."""
    reason = " ".join(str(reason).split())[:300]
    return f"{what} [{' '.join(overrides)}]: {reason}" + (f" (run {run_id})" if run_id else "")


def by_sigterm(e: BaseException) -> bool:
    """Was this interrupt SIGTERM (exit 143), not Ctrl-C (130)?"""
    return SIGTERM_REASON in str(e)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt("terminated by SIGTERM")`` while a run is going (main
    thread only): like Ctrl-C it is no ``Exception``, so no library call it lands in (an MLflow write)
    can wrap it into an error, and the runs end KILLED. A loop that checkpoints is only asked to stop
    (SIGTERM or Ctrl-C): it writes its members' checkpoints at its next safe point and raises there;
    a second signal stops at once."""
    def handler(signum: int, frame: Any) -> None:
        reason = SIGTERM_REASON if signum == signal.SIGTERM else ""
        if not request_stop(reason):
            raise KeyboardInterrupt(*([reason] if reason else []))

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def worker_pool(jobs: int, workers: int) -> Iterator[Any]:
    """A spawn pool of ``min(workers, jobs)`` processes. On Ctrl-C or SIGTERM it is terminated: each
    worker gets SIGTERM, its runs end KILLED, and no queued job starts."""
    import multiprocessing as mp

    with sigterm_as_interrupt(), mp.get_context("spawn").Pool(min(workers, jobs)) as pool:
        yield pool


def _end_run(tracker: Any, result: TrainResult, run_id: str) -> None:
    """End a member's MLflow run: why it stopped (``stop_reason``, ``error``) and its status."""
    result.run_id = run_id
    if result.status == "KILLED":
        tracker.set_tags({"stop_reason": result.error or "stopped"})
    elif result.error:
        tracker.set_tags({"error": result.error[:5000]})
    tracker.terminate(result.status)


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment or cfg.env.id


def run_name(cfg: Config, label: str | None = None) -> str:
    return cfg.tracking.run_name or f"{label or cfg.algo.name}-{cfg.env.id}-s{cfg.seed}"


def run(cfg: Config, *, label: str | None = None, group: str | None = None,
        tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
        workdir: Path | None = None, callback: Callable[[EpisodeInfo], None] | None = None,
        progress: bool = False) -> TrainResult:
    """Train ``cfg`` as one MLflow run (or untracked when ``tracking.enabled=false``).

    ``label`` is the ``algo`` tag (the Hydra choice, e.g. a preset name; default ``algo.name``).
    The run ends FINISHED, KILLED (Ctrl-C, SIGTERM, :class:`RunInterrupted`) or FAILED (any other
    exception, a diverged loss included) with everything logged so far kept, and the exception
    (:class:`DivergenceError` for a diverged loss) raised.
    """
    cb = None if callback is None else (lambda _k, info: callback(info))
    return _raise_failed(run_batch([cfg], label=label, group=group, tags=tags, parent_run_id=parent_run_id,
                                   workdirs=[workdir], callback=cb, progress=progress)[0])


def run_batch(cfgs: Sequence[Config], *, label: str | None = None, group: str | None = None,
              tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
              workdirs: Sequence[Path | None] | None = None,
              callback: Callable[[int, EpisodeInfo], None] | None = None,
              progress: bool = False, spec: EnvSpec | None = None) -> list[TrainResult]:
    """Train configs that differ only in ``seed`` as one batch: one MLflow run per member.

    Each member's run ends when the member does (FINISHED, or FAILED with an ``error`` tag when its
    loss diverged, while the others go on). ``callback(i, info)`` follows member ``i``'s episodes;
    raising :class:`RunInterrupted` from it stops every member (their runs end KILLED) and
    propagates, as Ctrl-C and SIGTERM do. ``spec``: the env's, from a caller that ran check_compatible.
    """
    cfg = cfgs[0]
    if not cfg.tracking.enabled:
        return train_batch(cfgs, workdirs=workdirs, callback=callback, progress=progress, spec=spec)
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    check_batch(cfgs)
    spec = spec or check_compatible(cfg)  # refuse bad input before anything is written
    device = resolve_device(cfg.train.device)  # refused before anything is written; tagged on the runs
    client, exp_id = open_experiment(experiment_name(cfg))
    data = config_dict(cfg)
    data["solve"]["threshold"] = solve_threshold(cfg, spec)  # the threshold in force, not None
    trackers: list[MlflowTracker] = []
    run_ids: list[str] = []
    dirs: list[Path] = []
    stack = ExitStack()
    with stack:
        try:
            for k, c in enumerate(cfgs):
                all_tags = {**runtime_tags(), "algo": label or c.algo.name, "algo_name": c.algo.name,
                            "env": c.env.id, "seed": str(c.seed), "device": str(device), **c.tracking.tags,
                            **(tags or {})}
                if parent_run_id:
                    all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
                mlrun = retry_locked(partial(client.create_run, exp_id, run_name=run_name(c, label),
                                             tags={key: str(v) for key, v in all_tags.items()}))
                tracker = MlflowTracker(client, mlrun.info.run_id)
                trackers.append(tracker)
                run_ids.append(mlrun.info.run_id)
                tracker.set_tags({"group": c.tracking.group or group or run_ids[0]})
                wd = workdirs[k] if workdirs else None
                if wd is None:
                    wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlexp-")))
                wd.mkdir(parents=True, exist_ok=True)
                dirs.append(wd)
                member = {**data, "seed": c.seed}
                tracker.log_params(flatten(member))
                (wd / "config.yaml").write_text(yaml.safe_dump(member, sort_keys=False))
                tracker.log_artifact(wd / "config.yaml")
        except BaseException as e:
            for tracker in trackers:
                tracker.set_tags({"error": f"{type(e).__name__}: {e}"[:5000]})
                tracker.terminate("FAILED")
            raise

        def on_end(k: int, result: TrainResult) -> None:
            _end_run(trackers[k], result, run_ids[k])

        with sigterm_as_interrupt():
            return train_batch(cfgs, trackers, workdirs=dirs, callback=callback, progress=progress,
                               on_end=on_end, spec=spec)
