"""The shared off-policy loop, and what every loop reports through: a batch's members and their
episode recorders.

A batch trains K members (the seeds of one configuration) together: one agent with stacked
networks, K environments, K replay buffers. Each member has its own :class:`EpisodeRecorder`
(solve criterion, metrics, ``episodes.csv``) and ends on its own (:class:`Members`): solved (with
``train.stop_on_solve``), out of budget, or diverged; from then on it no longer acts or learns and
its run is closed at once, while the others go on.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from torch import nn

from rlexp.buffer import Batch, ReplayBuffer
from rlexp.checkpoint import Checkpoints, env_state, load_env_state
from rlexp.envs import EnvBatch
from rlexp.metrics import Counters, Metrics, SolveTracker
from rlexp.progress import Progress
from rlexp.tracking import Tracker


class DivergenceError(RuntimeError):
    """A loss or metric became NaN or infinite."""


@dataclass(frozen=True)
class EpisodeInfo:
    """What the loop knows when an episode ends; handed to the optional per-episode callback."""

    episode: int
    ret: float
    length: int
    env_step: int
    rolling_mean: float
    solved_at: int | None




@dataclass
class EpisodeRecorder:
    """Records one member's finished episodes: solve criterion, metrics and ``episodes.csv``.

    Episodes are numbered from 1 in the order they finish, whatever the algorithm or the number
    of parallel environments, so episodes-to-solve means the same thing everywhere.
    """

    window: int
    threshold: float
    max_episodes: int
    stop_on_solve: bool
    tracker: Tracker
    csv_path: Path | None = None
    callback: Callable[[EpisodeInfo], None] | None = None
    seed: int = 0  # the member's seed
    returns: list[float] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    env_steps: int = 0  # at the last finished episode

    def __post_init__(self) -> None:
        self.solve = SolveTracker(self.window, self.threshold)
        self._csv: IO[str] | None = None
        self._writer: Any = None
        if self.csv_path is not None:
            # line-buffered and kept open for the run: a kill loses no finished episode
            self._csv = open(self.csv_path, "w", newline="", buffering=1)  # noqa: SIM115
            self._writer = csv.writer(self._csv)
            self._writer.writerow(["episode", "return", "length", "env_step", "wall_time_s"])

    @property
    def episodes(self) -> int:
        return self.solve.episodes

    @property
    def solved_at(self) -> int | None:
        return self.solve.solved_at

    @property
    def mean(self) -> float:
        """Mean return of the last ``window`` episodes (NaN before the first)."""
        recent = self.returns[-self.window:]
        return float(np.mean(recent)) if recent else math.nan

    @property
    def finished(self) -> bool:
        """True once the episode budget is spent, or the task is solved and we stop on solve."""
        return self.episodes >= self.max_episodes or (self.stop_on_solve and self.solved_at is not None)

    def add(self, ret: float, length: int, env_step: int) -> None:
        ret = float(ret)
        mean = self.solve.add(ret)
        ep = self.solve.episodes
        self.returns.append(ret)
        self.env_steps = env_step
        wall = time.perf_counter() - self.start
        # one step axis for every curve: env steps; the episode index is a metric of its own
        self.tracker.log_metrics({"episode_return": ret, "episode_return_mean": mean,
                                  "episode_length": float(length), "episode": float(ep)}, step=env_step)
        if self._writer is not None:
            self._writer.writerow([ep, ret, length, env_step, f"{wall:.3f}"])
        if self.callback is not None:
            self.callback(EpisodeInfo(ep, ret, length, env_step, mean, self.solved_at))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the recorder: returns, solve window, elapsed time, csv rows."""
        rows = self.csv_path.read_text().splitlines()[1:self.episodes + 1] if self.csv_path is not None else []
        return {"returns": list(self.returns), "solve": copy.deepcopy(self.solve), "env_steps": self.env_steps,
                "elapsed": time.perf_counter() - self.start, "rows": rows}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.returns, self.solve, self.env_steps = list(state["returns"]), state["solve"], state["env_steps"]
        self.start = time.perf_counter() - state["elapsed"]
        if self._csv is not None:
            self._csv.write("".join(row + "\n" for row in state["rows"]))

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None


def non_finite(metrics: Mapping[str, float], step: int) -> str | None:
    """Why a member diverged: its first non-finite metric, or None."""
    for k, v in metrics.items():
        if not math.isfinite(v):
            return f"{k} became {v} at env step {step}; the run diverged"
    return None


class Members:
    """The members of a batch: which still train, their recorders, and how each one ends.

    ``on_end(k, status, error)`` is called exactly once per member, when it ends: ``FINISHED``
    (budget spent or solved), ``FAILED`` (diverged: ``error`` says which metric) or ``KILLED``
    (stopped on purpose). Update metrics are averaged per member between log points; a member whose
    metrics are not finite ends FAILED there (or when it ends, for the last ones).
    """

    def __init__(self, recs: Sequence[EpisodeRecorder], max_steps: int | None,
                 on_end: Callable[[int, str, str | None], None], progress: Progress | None = None) -> None:
        self.recs = list(recs)
        self.max_steps = max_steps if max_steps is not None else math.inf
        self.on_end = on_end
        self.active: list[int] = list(range(len(self.recs)))
        self.progress = progress
        self._sums: dict[str, np.ndarray] = {}
        self._n = 0
        self.checkpoints: Checkpoints | None = None  # set when train.checkpoint_every > 0
        self.step = 0

    def __len__(self) -> int:
        return len(self.recs)

    # ------------------------------------------------------------------ update metrics
    def add_metrics(self, metrics: Metrics) -> None:
        """Accumulate one update's per-member metrics."""
        for key, v in metrics.items():
            arr = np.broadcast_to(np.asarray(v, dtype=np.float64), (len(self),))
            self._sums[key] = self._sums.get(key, 0.0) + arr
        self._n += 1

    def _member_metrics(self, k: int, extra: Metrics | None = None) -> dict[str, float]:
        out = {key: float(s[k]) / self._n for key, s in self._sums.items()} if self._n else {}
        for key, v in (extra or {}).items():
            out[key] = float(np.broadcast_to(np.asarray(v, dtype=np.float64), (len(self),))[k])
        return out

    def log(self, step: int, extra: Metrics | None = None) -> None:
        """Log the update metrics averaged since the last call (and ``extra``) for every active
        member at env step ``step``; a member with a non-finite one fails."""
        for k in list(self.active):
            self.log_member(k, self._member_metrics(k, extra), step)
        self._sums, self._n = {}, 0

    def log_member(self, k: int, metrics: Mapping[str, float], step: int) -> None:
        """Log member ``k``'s ``metrics`` at env step ``step``, or fail it if one is not finite."""
        why = non_finite(metrics, step)
        if why is not None:
            self.end(k, "FAILED", why)
        elif metrics:
            self.recs[k].tracker.log_metrics(metrics, step=step)

    # ------------------------------------------------------------------ episodes and ends
    def episode(self, k: int, ret: float, length: int, env_step: int) -> None:
        """Member ``k`` finished an episode; it ends if that spent its budget or solved the task."""
        self.step = max(self.step, env_step)
        self.recs[k].add(ret, length, env_step)
        if self.checkpoints is not None:
            self.checkpoints.episode_done(k, self.recs[k].episodes)
        if self.recs[k].finished:
            why = non_finite(self._member_metrics(k), env_step)
            self.end(k, "FAILED" if why else "FINISHED", why)
        self._show(env_step)

    def advance(self, steps: int) -> None:
        """Every active member took ``steps`` env steps in all; the step budget ends them all."""
        self.step = steps
        if steps >= self.max_steps:
            for k in list(self.active):
                why = non_finite(self._member_metrics(k), steps)
                self.end(k, "FAILED" if why else "FINISHED", why)

    def end(self, k: int, status: str, error: str | None = None) -> None:
        if k not in self.active:
            return
        self.active.remove(k)
        self.on_end(k, status, error)
        self._show(self.step, final=not self.active)

    def end_all(self, status: str, error: str | None = None) -> None:
        for k in list(self.active):
            self.end(k, status, error)

    # ------------------------------------------------------------------ checkpoints
    def safe_point(self, loop_state: Callable[[int], dict[str, Any]]) -> None:
        """The loop is between two env steps: write the due checkpoints (``loop_state(k)``: the loop's
        part of member ``k``'s); after a stop request, every active member's, then stop."""
        cp = self.checkpoints
        if cp is None or not (cp.due or cp.stop_reason is not None):
            return
        for k in sorted(set(self.active) if cp.stop_reason is not None else cp.due & set(self.active)):
            cp.write(k, {**loop_state(k), "members": self.member_state(k)})
        cp.due.clear()
        if cp.stop_reason is not None:
            raise KeyboardInterrupt(*([cp.stop_reason] if cp.stop_reason else []))

    def member_state(self, k: int) -> dict[str, Any]:
        return {"recorder": self.recs[k].state(), "sums": {key: float(s[k]) for key, s in self._sums.items()},
                "n": self._n, "step": self.step}

    def load_member(self, state: Mapping[str, Any], k: int = 0) -> None:
        """Member ``k`` (of a batch of one: the update metrics not yet logged are the batch's) as checkpointed."""
        self.recs[k].restore(state["recorder"])
        self._sums = {key: np.array([v]) for key, v in state["sums"].items()}
        self._n, self.step = state["n"], state["step"]

    # ------------------------------------------------------------------ progress
    def _show(self, env_step: int, final: bool = False) -> None:
        if self.progress is not None:
            self.progress.show(env_step, self.active, final)


class OffPolicyAgent(Protocol):
    """What the off-policy loop needs from an algorithm (arrays have the member axis first)."""

    def act(self, obs: np.ndarray, counters: Counters) -> np.ndarray:
        """One action per member for ``(K, obs_dim)`` observations."""
        ...

    def update_batches(self, batches: Sequence[Batch], counters: Counters) -> Metrics:
        """One gradient step per minibatch (each ``(K, B, ...)``); per-member metrics averaged over them."""
        ...

    def on_episode_start(self, members: Sequence[int]) -> None: ...

    def diagnostics(self) -> Metrics: ...

    def member_state(self, k: int) -> dict[str, Any]:
        """Everything member ``k`` needs to continue exactly (a checkpoint)."""
        ...

    def load_member(self, state: dict[str, Any], k: int = 0) -> None: ...

    def modules(self) -> Iterator[tuple[str, nn.Module]]: ...


def off_policy_loop(agent: OffPolicyAgent, envs: EnvBatch, buffer: ReplayBuffer, members: Members, *,
                    learning_starts: int, train_freq: int, gradient_steps: int, batch_size: int,
                    log_interval: int, resume: Mapping[str, Any] | None = None) -> Counters:
    """Collect one transition per member at a time, train every ``train_freq`` steps, until every
    member has ended; returns the counters. ``resume``: the checkpoint a batch of one continues from."""
    k = len(members)
    c = Counters(episodes=np.zeros(k, dtype=np.int64))
    obs = envs.reset()[:, 0]
    agent.on_episode_start(range(k))
    ep_ret, ep_len = np.zeros(k), np.zeros(k, dtype=np.int64)
    if resume is not None:  # a batch of one, from its checkpoint
        agent.load_member(resume["agent"])
        buffer.load_member(resume["buffer"])
        load_env_state(envs, resume["envs"])
        s = resume["loop"]
        obs, ep_ret[0], ep_len[0] = envs.obs[:, 0].copy(), s["ep_ret"], s["ep_len"]
        c.step, c.updates, c.episodes[0] = s["step"], s["updates"], s["episodes"]

    def state(m: int) -> dict[str, Any]:
        return {"agent": agent.member_state(m), "buffer": buffer.member_state(m), "envs": env_state(envs, m),
                "loop": {"ep_ret": float(ep_ret[m]), "ep_len": int(ep_len[m]), "step": c.step, "updates": c.updates,
                         "episodes": int(c.episodes[m])}}

    while members.active:
        actions = agent.act(obs, c)
        obs_after, next_obs, reward, terminated, truncated = envs.step(actions[:, None], members.active)
        c.step += 1
        buffer.add(obs, actions, reward[:, 0], next_obs[:, 0], terminated[:, 0])
        ep_ret += reward[:, 0]
        ep_len += 1
        if c.step > learning_starts and c.step % train_freq == 0 and buffer.size >= batch_size:
            members.add_metrics(agent.update_batches(buffer.sample(batch_size, gradient_steps), c))
            c.updates += gradient_steps
        if c.step % log_interval == 0:
            members.log(c.step, agent.diagnostics())
        ended = [m for m in members.active if terminated[m, 0] or truncated[m, 0]]
        if ended:
            agent.on_episode_start(ended)
        for m in ended:
            c.episodes[m] += 1
            members.episode(m, float(ep_ret[m]), int(ep_len[m]), c.step)
            ep_ret[m], ep_len[m] = 0.0, 0
        members.advance(c.step)
        obs = obs_after[:, 0]
        members.safe_point(state)
    return c
