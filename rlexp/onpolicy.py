"""The shared on-policy loop: collect a rollout from N envs at once, then ``agent.update(rollout)``.

Two ways to cut a rollout:

- ``n_steps`` per env (PPO): a ``[T, N]`` block of steps; episodes run across rollouts and the
  value of the state after the block bootstraps the last step;
- whole episodes (REINFORCE, actor-critic): every episode finished since the last update,
  concatenated in finishing order as ``[T, 1]``. With several envs the episodes still running
  carry over to the next update (their first steps come from the previous policy); with one env
  an update always falls on an episode boundary.

Either way ``terminated`` and ``truncated`` stay apart: the true next state of a truncated step
(``final_obs`` of gymnasium's same-step autoreset) is valued by the critic and bootstraps, a
terminated one does not. Episodes are recorded in the order they finish (by env index within a
step), so episodes-to-solve means the same for every algorithm and every ``num_envs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from rlexp.config import Config
from rlexp.envs import EnvSpec, make_vector_env
from rlexp.loops import Counters, EpisodeRecorder, check_finite


class Rollout(NamedTuple):
    """Time-major ``[T, N]`` tensors (``obs``: ``[T, N, obs_dim]``) of one collection phase."""

    obs: torch.Tensor
    actions: torch.Tensor  # int64 action indices
    log_probs: torch.Tensor  # log pi_old(a|s) at collection
    values: torch.Tensor  # V(s) at collection (0 for agents without a critic)
    rewards: torch.Tensor
    next_values: torch.Tensor  # V(s') of the true next state (final obs when truncated); masked if terminated
    terminated: torch.Tensor  # 1.0 where the episode ended in a terminal state
    dones: torch.Tensor  # 1.0 where the episode ended (terminated or truncated)


class OnPolicyAgent(Protocol):
    """What the on-policy loop needs from an algorithm."""

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions, their log-probabilities and V(obs) for a ``[N, obs_dim]`` batch."""
        ...

    def value(self, obs: np.ndarray) -> np.ndarray: ...

    def update(self, rollout: Rollout, counters: Counters) -> dict[str, float]: ...

    def modules(self) -> Iterator[tuple[str, nn.Module]]: ...


# --------------------------------------------------------------------------- returns and advantages
def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        dones: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and lambda-returns over ``[T, N]`` tensors.

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)`` and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``; returns ``(A, A + V)``. With
    ``lam=1`` the returns are the discounted rewards-to-go, bootstrapped where an episode was cut.
    """
    r, v, nv = rewards.numpy(), values.numpy(), next_values.numpy()
    not_term, not_done = 1.0 - terminated.numpy(), 1.0 - dones.numpy()
    adv = np.zeros_like(r)
    last = np.zeros_like(r[0])
    for t in range(r.shape[0] - 1, -1, -1):
        delta = r[t] + gamma * not_term[t] * nv[t] - v[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    a = torch.from_numpy(adv)
    return a, a + values


def discounted_returns(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
                       dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go over ``[T, N]`` tensors: ``G_t = r_t + gamma * (1 - terminated_t) * X`` with
    ``X = G_{t+1}`` inside an episode and ``X = next_values_t`` where it was cut (a truncation, or
    the last row of a step block); a terminal step does not bootstrap."""
    r, nv = rewards.numpy(), next_values.numpy()
    not_term, done = 1.0 - terminated.numpy(), dones.numpy() > 0
    g = np.zeros_like(r)
    nxt = nv[-1]
    for t in range(r.shape[0] - 1, -1, -1):
        nxt = r[t] + gamma * not_term[t] * np.where(done[t], nv[t], nxt)
        g[t] = nxt
    return torch.from_numpy(g)


def standardize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` with the population std (as numpy's ``np.std``)."""
    return (x - x.mean()) / (x.std(correction=0) + eps)


# --------------------------------------------------------------------------- categorical policies
def sample_categorical(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one action per row of ``logits``; returns ``(actions, log_probs)``."""
    logp_all = torch.log_softmax(logits, dim=-1)
    # inverse-CDF sampling: a few cheap ops instead of torch.multinomial's per-call overhead
    u = torch.rand(logits.shape[:-1] + (1,))
    actions = (logp_all.exp().cumsum(-1) < u).sum(-1, keepdim=True).clamp_(max=logits.shape[-1] - 1)
    return actions.squeeze(-1), logp_all.gather(-1, actions).squeeze(-1)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` per row."""
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution per row."""
    logp_all = torch.log_softmax(logits, dim=-1)
    return -(logp_all.exp() * logp_all).sum(-1)


# --------------------------------------------------------------------------- the loop
class _Episodes:
    """Per-env running return and length; records finished episodes in finishing order."""

    def __init__(self, n: int, rec: EpisodeRecorder, counters: Counters) -> None:
        self.ret = np.zeros(n)
        self.len = np.zeros(n, dtype=np.int64)
        self.rec, self.c = rec, counters

    def step(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.ret += rewards
        self.len += 1
        for i in np.flatnonzero(done):
            self.c.episode += 1
            self.rec.add(self.ret[i], int(self.len[i]), self.c.step)
            self.ret[i], self.len[i] = 0.0, 0


def _final_values(agent: OnPolicyAgent, info: dict[str, Any], idx: np.ndarray) -> np.ndarray:
    """V of the last observations of the episodes truncated at this step (``idx``)."""
    final = np.stack([info["final_obs"][i] for i in idx]).astype(np.float32)
    return agent.value(final)


def on_policy_loop(agent: OnPolicyAgent, envs: Any, rec: EpisodeRecorder, *, seed: int,
                   max_steps: int | None, n_steps: int | None = None, episodes_per_update: int = 1,
                   min_steps_per_update: int = 1) -> Counters:
    """Collect and update until ``rec.finished`` or ``max_steps``; returns the counters.

    ``n_steps`` set: rollouts of ``n_steps`` per env; otherwise rollouts of at least
    ``episodes_per_update`` whole episodes and ``min_steps_per_update`` steps.
    """
    c = Counters()
    limit = max_steps if max_steps is not None else math.inf
    obs, _ = envs.reset(seed=seed)
    state = _State(obs, [[] for _ in range(envs.num_envs)], _Episodes(envs.num_envs, rec, c))
    while not rec.finished and c.step < limit:
        if n_steps is not None:
            rollout = _collect_steps(agent, envs, state, n_steps, c, rec, limit)
        else:
            rollout = _collect_episodes(agent, envs, state, episodes_per_update, min_steps_per_update,
                                        c, rec, limit)
        if rollout is None:  # budget spent or solved mid-collection
            break
        metrics = agent.update(rollout, c)
        c.updates += 1
        check_finite(metrics, c.step)
        rec.tracker.log_metrics(metrics, step=c.step)
    return c


@dataclass
class _State:
    """What carries over from one collection to the next."""

    obs: np.ndarray  # the envs' current observations
    running: list[list[list[Any]]]  # whole-episode mode: per env, the steps of its unfinished episode
    episodes: _Episodes


def _collect_steps(agent: OnPolicyAgent, envs: Any, state: _State, n_steps: int, c: Counters,
                   rec: EpisodeRecorder, limit: float) -> Rollout | None:
    T, N = n_steps, envs.num_envs
    obs = state.obs
    buf_obs = np.zeros((T, N, obs.shape[1]), dtype=np.float32)
    actions = np.zeros((T, N), dtype=np.int64)
    log_probs, values, rewards, next_values, terminated, dones = (
        np.zeros((T, N), dtype=np.float32) for _ in range(6))
    for t in range(T):
        a, logp, v = agent.act(obs)
        buf_obs[t], actions[t], log_probs[t], values[t] = obs, a, logp, v
        obs, r, term, trunc, info = envs.step(a)
        c.step += N
        done = term | trunc
        rewards[t], terminated[t], dones[t] = r, term, done
        cut = np.flatnonzero(trunc & ~term)
        if cut.size:
            next_values[t, cut] = _final_values(agent, info, cut)
        state.episodes.step(r, done)
        if rec.finished or c.step >= limit:
            return None
    state.obs = obs
    # the next state of a step that did not end its episode is the next row's state
    nv = np.concatenate([values[1:], agent.value(obs)[None]])
    next_values = np.where(dones > 0, next_values, nv)
    return Rollout(*(torch.from_numpy(x) for x in (buf_obs, actions, log_probs, values, rewards,
                                                   next_values, terminated, dones)))


def _collect_episodes(agent: OnPolicyAgent, envs: Any, state: _State, n_episodes: int, min_steps: int,
                      c: Counters, rec: EpisodeRecorder, limit: float) -> Rollout | None:
    N = envs.num_envs
    obs, running = state.obs, state.running
    finished: list[list[list[Any]]] = []
    steps = 0
    while len(finished) < n_episodes or steps < min_steps:
        a, logp, v = agent.act(obs)
        next_obs, r, term, trunc, info = envs.step(a)
        c.step += N
        done = term | trunc
        cut = np.flatnonzero(trunc & ~term)
        final_v = {}
        if cut.size:
            final_v = dict(zip(cut.tolist(), _final_values(agent, info, cut).tolist(), strict=True))
        for i in range(N):
            # obs, action, log prob, value, reward, next value (filled below), terminated, done
            running[i].append([obs[i], a[i], logp[i], v[i], r[i], 0.0, float(term[i]), float(done[i])])
            if done[i]:
                ep = running[i]
                for k in range(len(ep) - 1):
                    ep[k][5] = ep[k + 1][3]
                ep[-1][5] = final_v.get(i, 0.0)  # V(final obs) if truncated; masked if terminated
                finished.append(ep)
                steps += len(ep)
                running[i] = []
        state.episodes.step(r, done)
        obs = next_obs
        if rec.finished or c.step >= limit:
            return None
    state.obs = obs
    cols = list(zip(*(row for ep in finished for row in ep), strict=True))
    o = np.stack(cols[0]).astype(np.float32)[:, None]
    act = np.asarray(cols[1], dtype=np.int64)[:, None]
    rest = [np.asarray(col, dtype=np.float32)[:, None] for col in cols[2:]]
    return Rollout(torch.from_numpy(o), torch.from_numpy(act), *(torch.from_numpy(x) for x in rest))


def num_envs(cfg: Config) -> int:
    """Envs to collect from: ``env.num_envs`` when above 1, else the algorithm's tuned ``num_envs``."""
    return cfg.env.num_envs if cfg.env.num_envs > 1 else int(getattr(cfg.algo, "num_envs", 1))


def run_on_policy(agent: OnPolicyAgent, cfg: Config, spec: EnvSpec, rec: EpisodeRecorder) -> Counters:
    """``train.LOOPS["on_policy"]``: build the vector env and run :func:`on_policy_loop`."""
    a = cfg.algo
    envs = make_vector_env(cfg.env, cfg.seed, num_envs(cfg))
    try:
        return on_policy_loop(agent, envs, rec, seed=cfg.seed, max_steps=cfg.train.max_steps,
                              n_steps=getattr(a, "n_steps", None),
                              episodes_per_update=getattr(a, "episodes_per_update", 1),
                              min_steps_per_update=getattr(a, "min_steps_per_update", 1))
    finally:
        envs.close()
