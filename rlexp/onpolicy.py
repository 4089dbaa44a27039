"""The shared on-policy loop over a batch of members: collect from K members x N envs at once, then
``agent.update(rollout, members)``.

Two ways to cut a rollout:

- ``n_steps`` per env (PPO): every member collects a ``(T, K, N)`` block in lockstep; episodes run
  across rollouts and the value of the state after the block bootstraps the last step; the members
  still training at the end of the block update together;
- whole episodes (REINFORCE, actor-critic): each member's episodes finished since its last update,
  concatenated in finishing order as ``(T, 1, 1)``. A member is due once it has
  ``episodes_per_update`` episodes and ``min_steps_per_update`` steps, so members update at
  different times: each due member updates on its own (the ops a member runs alone). With several
  envs the episodes still running carry over to the next update (their first steps come from the
  previous policy); with one env an update always falls on an episode boundary.

Acting is one forward pass for all K members; each member draws its actions and minibatch orders
from its own generator, so a member's trajectory depends on its seed only, not on the batch.
Either way ``terminated`` and ``truncated`` stay apart: the true next state of a truncated step
(the env batch's ``next_obs``) is valued by the critic and bootstraps, a terminated one does not.
A member's episodes are recorded in the order they finish (by env index within a step), so
episodes-to-solve means the same for every algorithm and every ``num_envs``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from rlexp.checkpoint import env_state, load_env_state
from rlexp.config import Config
from rlexp.envs import EnvBatch, EnvSpec, num_envs
from rlexp.loops import Members
from rlexp.metrics import Counters, Metrics
from rlexp.pg import Rollout


class OnPolicyAgent(Protocol):
    """What the on-policy loop needs from an algorithm (arrays have the member axis first)."""

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions, their log-probabilities and V(obs), each ``(K, N)``, for ``(K, N, obs_dim)``
        observations of every member."""
        ...

    def value(self, obs: np.ndarray) -> np.ndarray:
        """V(obs), ``(K, N)``."""
        ...

    def update(self, rollout: Rollout, members: torch.Tensor, counters: Counters) -> Metrics:
        """Learn from the rollout of ``members`` (int64 indices); their metrics, ``(len(members),)`` arrays."""
        ...

    def member_state(self, k: int) -> dict[str, Any]:
        """Everything member ``k`` needs to continue exactly (a checkpoint)."""
        ...

    def load_member(self, state: dict[str, Any], k: int = 0) -> None: ...

    def modules(self) -> Iterator[tuple[str, nn.Module]]: ...


# --------------------------------------------------------------------------- the loop
class _Step(NamedTuple):
    """One env step of every member, ``(K, N)`` arrays (``obs``: ``(K, N, obs_dim)``)."""

    obs: np.ndarray
    actions: np.ndarray
    log_probs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    final_values: np.ndarray  # V(true last obs) where truncated, else 0
    terminated: np.ndarray
    dones: np.ndarray


class _Collector:
    """Acts for every member, steps the active members' envs, records their finished episodes."""

    def __init__(self, agent: OnPolicyAgent, envs: EnvBatch, members: Members) -> None:
        self.agent, self.envs, self.members = agent, envs, members
        k = len(members)
        self.c = Counters(episodes=np.zeros(k, dtype=np.int64))
        self.obs = envs.reset()
        self.ret = np.zeros((k, envs.n))
        self.len = np.zeros((k, envs.n), dtype=np.int64)

    def state(self, k: int, **extra: Any) -> dict[str, Any]:
        """Member ``k``'s part of a checkpoint: agent, envs, counters, episode accumulators (and ``extra``)."""
        return {"agent": self.agent.member_state(k), "envs": env_state(self.envs, k),
                "loop": {"ret": self.ret[k].copy(), "len": self.len[k].copy(), "step": self.c.step,
                         "updates": self.c.updates, "episodes": int(self.c.episodes[k]), **extra}}

    def restore(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """A batch of one as checkpointed; returns the loop's own part."""
        self.agent.load_member(state["agent"])
        load_env_state(self.envs, state["envs"])
        s = state["loop"]
        self.obs = self.envs.obs.copy()
        self.ret[0], self.len[0], self.c.step, self.c.updates, self.c.episodes[0] = (
            s["ret"], s["len"], s["step"], s["updates"], s["episodes"])
        return dict(s)

    def step(self) -> _Step:
        obs, members = self.obs, self.members
        actions, log_probs, values = self.agent.act(obs)
        self.obs, next_obs, rewards, terminated, truncated = self.envs.step(actions, members.active)
        self.c.step += self.envs.n
        cut = truncated & ~terminated
        final_values = np.zeros(rewards.shape, dtype=np.float32)
        if cut.any():  # every member's rows: a member's values do not depend on the others'
            final_values[cut] = self.agent.value(next_obs)[cut]
        dones = terminated | truncated
        self.ret += rewards
        self.len += 1
        for k in list(members.active):
            for i in np.flatnonzero(dones[k]):
                if k in members.active:  # not past its episode budget
                    self.c.episodes[k] += 1
                    members.episode(k, float(self.ret[k, i]), int(self.len[k, i]), self.c.step)
                self.ret[k, i], self.len[k, i] = 0.0, 0
        members.advance(self.c.step)
        return _Step(obs, actions, log_probs, values, rewards, final_values, terminated.astype(np.float32),
                     dones.astype(np.float32))


def _spread(metrics: Metrics, members: torch.Tensor, size: int) -> dict[str, np.ndarray]:
    """The updated members' metrics as ``(K,)`` arrays (0 for the others, which are no longer active)."""
    out = {}
    for key, v in metrics.items():
        out[key] = np.zeros(size)
        out[key][members.numpy()] = v
    return out


def step_rollouts(agent: OnPolicyAgent, envs: EnvBatch, members: Members, n_steps: int,
                  resume: Mapping[str, Any] | None = None) -> Counters:
    """Rollouts of ``n_steps`` per env in lockstep, then one update of the members still training
    (``resume``: the checkpoint a batch of one continues from)."""
    col, size = _Collector(agent, envs, members), len(members)
    if resume is not None:
        col.restore(resume)
    while members.active:
        steps = []
        for _ in range(n_steps):
            steps.append(col.step())
            if not members.active:
                return col.c
        obs, actions, log_probs, values, rewards, next_values, terminated, dones = (np.stack(x) for x in zip(*steps, strict=True))
        # the next state of a step that did not end its episode is the next row's state
        nv = np.concatenate([values[1:], agent.value(col.obs)[None]])
        next_values = np.where(dones > 0, next_values, nv)
        idx = np.asarray(members.active)
        rollout = Rollout(*(torch.from_numpy(x[:, idx]) for x in (obs, actions, log_probs, values, rewards,
                                                                  next_values, terminated, dones)))
        who = torch.from_numpy(idx)
        members.add_metrics(_spread(agent.update(rollout, who, col.c), who, size))
        col.c.updates += 1
        members.log(col.c.step)
        members.safe_point(col.state)
    return col.c


def episode_rollouts(agent: OnPolicyAgent, envs: EnvBatch, members: Members, n_episodes: int = 1,
                     min_steps: int = 1, resume: Mapping[str, Any] | None = None) -> Counters:
    """Each member updates once it has ``n_episodes`` whole episodes and ``min_steps`` steps."""
    col, n = _Collector(agent, envs, members), envs.n
    running: list[list[list[list[float]]]] = [[[] for _ in range(n)] for _ in range(len(members))]
    finished: list[list[list[list[float]]]] = [[] for _ in range(len(members))]
    steps_since = np.zeros(len(members), dtype=np.int64)
    if resume is not None:
        saved = col.restore(resume)
        running[0], finished[0], steps_since[0] = saved["running"], saved["finished"], saved["steps_since"]
    while members.active:
        stepped = list(members.active)
        s = col.step()
        for k in stepped:
            for i in range(n):
                ep = running[k][i]
                if ep:  # within an episode the next state's value is the next row's
                    ep[-1][5] = s.values[k, i]
                # obs, action, log prob, value, reward, next value (set later), terminated, done
                ep.append([s.obs[k, i], s.actions[k, i], s.log_probs[k, i], s.values[k, i], s.rewards[k, i],
                           s.final_values[k, i], s.terminated[k, i], s.dones[k, i]])
                if s.dones[k, i]:
                    finished[k].append(ep)
                    steps_since[k] += len(ep)
                    running[k][i] = []
        for k in list(members.active):
            if len(finished[k]) >= n_episodes and steps_since[k] >= min_steps:
                rollout = _stack([row for ep in finished[k] for row in ep])
                metrics = agent.update(rollout, torch.tensor([k]), col.c)
                col.c.updates += 1
                finished[k], steps_since[k] = [], 0
                members.log_member(k, {key: float(np.asarray(v).reshape(-1)[0]) for key, v in metrics.items()},
                                   col.c.step)
        members.safe_point(lambda m: col.state(m, running=copy.deepcopy(running[m]),
                                               finished=copy.deepcopy(finished[m]), steps_since=int(steps_since[m])))
    return col.c


def _stack(rows: list[list[float]]) -> Rollout:
    """One member's steps as a ``(T, 1, 1)`` rollout."""
    cols = list(zip(*rows, strict=True))
    obs = np.stack(cols[0]).astype(np.float32)[:, None, None]
    actions = np.asarray(cols[1], dtype=np.int64)[:, None, None]
    rest = [np.asarray(c, dtype=np.float32)[:, None, None] for c in cols[2:]]
    return Rollout(torch.from_numpy(obs), torch.from_numpy(actions), *(torch.from_numpy(x) for x in rest))


def run_on_policy(agent: OnPolicyAgent, cfg: Config, spec: EnvSpec, members: Members,
                  resume: Mapping[str, Any] | None = None) -> None:
    """``train.LOOPS["on_policy"]``: the members' envs, then step or episode rollouts until every
    member has ended (``resume``: the checkpoint a batch of one continues from)."""
    a = cfg.algo
    envs = EnvBatch(cfg.env, [r.seed for r in members.recs], num_envs(cfg))
    try:
        n_steps = getattr(a, "n_steps", None)
        if n_steps is not None:
            step_rollouts(agent, envs, members, n_steps, resume)
        else:
            episode_rollouts(agent, envs, members, getattr(a, "episodes_per_update", 1),
                             getattr(a, "min_steps_per_update", 1), resume)
    finally:
        envs.close()
