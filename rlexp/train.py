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
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlexp.algos import get_algorithm
from rlexp.buffer import ReplayBuffer
from rlexp.config import Config
from rlexp.envs import EnvSpec, check_compatible, make_env, solve_threshold
from rlexp.loops import Counters, EpisodeInfo, EpisodeRecorder, off_policy_loop
from rlexp.onpolicy import run_on_policy
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


def seed_everything(seed: int, num_threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads)


def _run_off_policy(agent: Any, cfg: Config, spec: EnvSpec, rec: EpisodeRecorder) -> Counters:
    a = cfg.algo
    env = make_env(cfg.env, cfg.seed)
    try:
        buffer = ReplayBuffer(a.buffer_size, spec.obs_dim, None if spec.discrete else spec.n_actions, cfg.seed)
        return off_policy_loop(agent, env, buffer, rec, seed=cfg.seed, max_steps=cfg.train.max_steps,
                               learning_starts=a.learning_starts, train_freq=a.train_freq,
                               gradient_steps=a.gradient_steps, batch_size=a.batch_size,
                               log_interval=cfg.train.log_interval)
    finally:
        env.close()


LOOPS: dict[str, Callable[[Any, Config, EnvSpec, EpisodeRecorder], Counters]] = {
    "off_policy": _run_off_policy,
    "on_policy": run_on_policy,
}


def train(cfg: Config, tracker: Tracker | None = None, *, workdir: Path | None = None,
          callback: Callable[[EpisodeInfo], None] | None = None, progress: bool = False) -> TrainResult:
    """Train ``cfg`` to its budget (or until solved); every episode goes to ``tracker``.

    Whatever happens, the episodes recorded so far are written to ``episodes.csv`` in ``workdir``
    and handed to the tracker with the end-of-run metrics before the exception propagates.
    """
    tracker = tracker or NullTracker()
    spec = check_compatible(cfg)
    algo = get_algorithm(cfg.algo.name)
    seed_everything(cfg.seed, cfg.train.num_threads)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="rlexp-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    rec = EpisodeRecorder(cfg.solve.window, solve_threshold(cfg, spec), cfg.train.max_episodes,
                          cfg.train.stop_on_solve, tracker, workdir / "episodes.csv", progress, callback)
    agent = algo.build(cfg, spec)
    counters = Counters()
    t0 = time.perf_counter()
    ok = False
    try:
        loop = LOOPS.get(algo.loop)
        counters = loop(agent, cfg, spec, rec) if loop else agent.learn(cfg, spec, rec)
        ok = True
    finally:
        wall = time.perf_counter() - t0
        env_steps = counters.step if ok else _last_env_step(rec, workdir)
        rec.close(env_steps)
        result = TrainResult(rec.solved_at is not None, rec.solved_at, rec.episodes, env_steps, wall,
                             list(rec.returns))
        tracker.log_metrics(result.summary(), step=rec.episodes)
        tracker.log_artifact(workdir / "episodes.csv")
        if cfg.train.save_model and hasattr(agent, "modules"):
            path = workdir / "model.pt"
            torch.save({name: m.state_dict() for name, m in agent.modules()}, path)
            tracker.log_artifact(path, "model")
        tracker.flush()
        if tmp is not None:
            tmp.cleanup()
    return result


def _last_env_step(rec: EpisodeRecorder, workdir: Path) -> int:
    """Env steps at the last finished episode (what is known after a crash)."""
    try:
        *_, last = (workdir / "episodes.csv").read_text().splitlines()
        return int(last.split(",")[3]) if rec.episodes else 0
    except (OSError, ValueError, IndexError):
        return 0


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`RunInterrupted` while a run is going (main thread only)."""
    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted("terminated by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment or cfg.env.id


def run_name(cfg: Config, label: str | None = None) -> str:
    return cfg.tracking.run_name or f"{label or cfg.algo.name}-{cfg.env.id}-{cfg.seed}"


def run(cfg: Config, *, label: str | None = None, group: str | None = None,
        tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
        workdir: Path | None = None, callback: Callable[[EpisodeInfo], None] | None = None,
        progress: bool = False) -> TrainResult:
    """Train ``cfg`` as one MLflow run (or untracked when ``tracking.enabled=false``).

    ``label`` is the ``algo`` tag (the Hydra choice, e.g. a preset name; default ``algo.name``).
    The run ends FINISHED, KILLED (Ctrl-C, SIGTERM, :class:`RunInterrupted`) or FAILED (any other
    exception, NaN included) with everything logged so far kept, and the exception re-raised.
    """
    if not cfg.tracking.enabled:
        return train(cfg, workdir=workdir, callback=callback, progress=progress)
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    spec = check_compatible(cfg)  # refuse bad input before anything is written
    client, exp_id = open_experiment(experiment_name(cfg))
    all_tags = {**runtime_tags(), "algo": label or cfg.algo.name, "algo_name": cfg.algo.name, "env": cfg.env.id,
                "seed": str(cfg.seed), **cfg.tracking.tags, **(tags or {})}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    mlrun = retry_locked(lambda: client.create_run(exp_id, run_name=run_name(cfg, label),
                                                   tags={k: str(v) for k, v in all_tags.items()}))
    run_id = mlrun.info.run_id
    tracker = MlflowTracker(client, run_id)
    tracker.set_tags({"group": cfg.tracking.group or group or run_id})
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="rlexp-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    status = "FAILED"
    try:
        data = config_dict(cfg)
        data["solve"]["threshold"] = solve_threshold(cfg, spec)  # the threshold in force, not None
        tracker.log_params(flatten(data))
        (workdir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        tracker.log_artifact(workdir / "config.yaml")
        with _sigterm_as_interrupt():
            result = train(cfg, tracker, workdir=workdir, callback=callback, progress=progress)
        result.run_id = run_id
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, RunInterrupted) as e:
        status = "KILLED"
        tracker.set_tags({"stop_reason": str(e) or type(e).__name__})
        raise
    except Exception as e:
        tracker.set_tags({"error": f"{type(e).__name__}: {e}"[:5000]})
        raise
    finally:
        tracker.terminate(status)
        if tmp is not None:
            tmp.cleanup()


def run_batch(cfgs: Sequence[Config], *, labels: Sequence[str | None] | None = None, group: str | None = None,
              tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
              workdirs: Sequence[Path | None] | None = None,
              callback: Callable[[int, EpisodeInfo], None] | None = None,
              progress: bool = False) -> list[TrainResult]:
    """Train configs that differ only in ``seed`` as one batch: one tracked run per member.

    ``callback(i, info)`` follows member ``i``'s episodes; raising :class:`RunInterrupted` from it
    stops every member (their runs end KILLED) and propagates. A member that fails (a diverged
    loss, say) ends FAILED with ``result.error`` set while the others go on.
    """
    n = len(cfgs)
    out: list[TrainResult] = []
    for i, cfg in enumerate(cfgs):
        cb = None if callback is None else partial(callback, i)
        try:
            out.append(run(cfg, label=labels[i] if labels else None, group=group, tags=tags,
                           parent_run_id=parent_run_id, workdir=workdirs[i] if workdirs else None,
                           callback=cb, progress=progress))
        except (KeyboardInterrupt, RunInterrupted):
            raise
        except Exception as e:
            out.append(TrainResult(False, None, 0, 0, 0.0, [], status="FAILED",
                                   error=f"{type(e).__name__}: {e}"))
    assert len(out) == n
    return out
