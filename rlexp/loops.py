"""The shared training loops and the episode recorder every algorithm reports through.

An algorithm plugs in through a small protocol: ``act`` and ``update`` for the off-policy loop
(DQN family, DDPG), ``collect``-free ``act``/``update`` on rollouts for the on-policy loop. The loop
owns the environment, the budgets, the solve criterion, tracking and the progress display.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from torch import nn

from rlexp.buffer import Batch, ReplayBuffer
from rlexp.metrics import SolveTracker
from rlexp.tracking import Tracker


class DivergenceError(RuntimeError):
    """A loss or metric became NaN or infinite."""


@dataclass
class Counters:
    """Progress counters the loop advances and the agents read (schedules depend on them)."""

    step: int = 0  # env steps taken
    episode: int = 0  # episodes finished
    updates: int = 0  # gradient updates done


@dataclass(frozen=True)
class EpisodeInfo:
    """What the loop knows when an episode ends; handed to the optional per-episode callback."""

    episode: int
    ret: float
    length: int
    env_step: int
    rolling_mean: float
    solved_at: int | None


class OffPolicyAgent(Protocol):
    """What the off-policy loop needs from an algorithm."""

    def act(self, obs: np.ndarray, counters: Counters) -> Any: ...

    def update_batches(self, batches: Sequence[Batch], counters: Counters) -> dict[str, float]:
        """One gradient step per minibatch; the metrics averaged over them."""
        ...

    def on_episode_start(self) -> None: ...

    def diagnostics(self) -> dict[str, float]: ...

    def modules(self) -> Iterator[tuple[str, nn.Module]]: ...


def check_finite(metrics: dict[str, float], step: int) -> None:
    """Raise :class:`DivergenceError` naming the first non-finite metric."""
    for k, v in metrics.items():
        if not math.isfinite(v):
            raise DivergenceError(f"{k} became {v} at env step {step}; the run diverged")


def mean_metrics(metrics: Iterable[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of metric dicts (for agents that update one minibatch at a time)."""
    acc = MeanAccumulator()
    for m in metrics:
        acc.add(m)
    return acc.pop()


class MeanAccumulator:
    """Running means of update metrics between two log points."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / self.n for k, v in self.sums.items()} if self.n else {}
        self.sums, self.n = {}, 0
        return out


@dataclass
class EpisodeRecorder:
    """Records finished episodes: solve criterion, metrics, ``episodes.csv`` and a progress line.

    Episodes are numbered from 1 in the order they finish, whatever the algorithm or the number
    of parallel environments, so episodes-to-solve means the same thing everywhere.
    """

    window: int
    threshold: float
    max_episodes: int
    stop_on_solve: bool
    tracker: Tracker
    csv_path: Path | None = None
    progress: bool = False
    callback: Callable[[EpisodeInfo], None] | None = None
    returns: list[float] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.solve = SolveTracker(self.window, self.threshold)
        self._csv: IO[str] | None = None
        self._writer: Any = None
        if self.csv_path is not None:
            # line-buffered and kept open for the run: a kill loses no finished episode
            self._csv = open(self.csv_path, "w", newline="", buffering=1)  # noqa: SIM115
            self._writer = csv.writer(self._csv)
            self._writer.writerow(["episode", "return", "length", "env_step", "wall_time_s"])
        self._last_print = 0.0

    @property
    def episodes(self) -> int:
        return self.solve.episodes

    @property
    def solved_at(self) -> int | None:
        return self.solve.solved_at

    @property
    def finished(self) -> bool:
        """True once the episode budget is spent, or the task is solved and we stop on solve."""
        return self.episodes >= self.max_episodes or (self.stop_on_solve and self.solved_at is not None)

    def add(self, ret: float, length: int, env_step: int) -> None:
        ret = float(ret)
        mean = self.solve.add(ret)
        ep = self.solve.episodes
        self.returns.append(ret)
        wall = time.perf_counter() - self.start
        self.tracker.log_metrics({"episode_return": ret, "episode_return_mean": mean,
                                  "episode_length": float(length)}, step=ep)
        if self._writer is not None:
            self._writer.writerow([ep, ret, length, env_step, f"{wall:.3f}"])
        if self.progress:
            self._print_progress(ep, mean, env_step, wall)
        if self.callback is not None:
            self.callback(EpisodeInfo(ep, ret, length, env_step, mean, self.solved_at))

    def _print_progress(self, ep: int, mean: float, env_step: int, wall: float, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self._last_print < 0.25:
            return
        self._last_print = now
        sps = env_step / wall if wall > 0 else 0.0
        solved = f"  solved@{self.solved_at}" if self.solved_at else ""
        sys.stderr.write(f"\repisode {ep:>6}/{self.max_episodes}  mean{self.window} {mean:9.2f}"
                         f"  steps {env_step:>9}  {sps:7.0f} steps/s{solved}   ")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self, env_step: int) -> None:
        if self.progress and self.returns:
            mean = float(np.mean(self.returns[-self.window:]))
            self._print_progress(self.episodes, mean, env_step, time.perf_counter() - self.start, final=True)
        if self._csv is not None:
            self._csv.close()
            self._csv = None


def off_policy_loop(agent: OffPolicyAgent, env: Any, buffer: ReplayBuffer, rec: EpisodeRecorder, *,
                    seed: int, max_steps: int | None, learning_starts: int, train_freq: int,
                    gradient_steps: int, batch_size: int, log_interval: int) -> Counters:
    """Collect one transition at a time, train every ``train_freq`` steps; returns the counters."""
    c = Counters()
    acc = MeanAccumulator()
    obs, _ = env.reset(seed=seed)
    agent.on_episode_start()
    ep_ret, ep_len = 0.0, 0
    limit = max_steps if max_steps is not None else math.inf
    while not rec.finished and c.step < limit:
        action = agent.act(obs, c)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        c.step += 1
        buffer.add(obs, action, reward, next_obs, terminated)
        ep_ret += float(reward)
        ep_len += 1
        if c.step > learning_starts and c.step % train_freq == 0 and buffer.size >= batch_size:
            acc.add(agent.update_batches(buffer.sample(batch_size, gradient_steps), c))
            c.updates += gradient_steps
        if c.step % log_interval == 0:
            m = acc.pop()
            check_finite(m, c.step)
            rec.tracker.log_metrics({**m, **agent.diagnostics()}, step=c.step)
        if terminated or truncated:
            c.episode += 1
            rec.add(ep_ret, ep_len, c.step)
            obs, _ = env.reset()
            agent.on_episode_start()
            ep_ret, ep_len = 0.0, 0
        else:
            obs = next_obs
    check_finite(acc.pop(), c.step)
    return c
