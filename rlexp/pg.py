"""Policy-gradient maths over a batch of members, shared by REINFORCE, actor-critic and PPO: the
on-policy batch (:class:`Rollout`), returns and advantages (GAE), categorical policies, and each
member's own random stream for sampling.

Tensors are time-major ``(T, K, N, ...)`` (steps, members, envs) unless a docstring says otherwise;
every axis but time is independent, so the same code serves one member or many.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch


class Rollout(NamedTuple):
    """Time-major ``(T, K, N)`` tensors (``obs``: ``(T, K, N, obs_dim)``) of one collection phase,
    for the K members being updated (their order: the ``members`` handed to ``update``)."""

    obs: torch.Tensor
    actions: torch.Tensor  # int64 action indices
    log_probs: torch.Tensor  # log pi_old(a|s) at collection
    values: torch.Tensor  # V(s) at collection (0 for agents without a critic)
    rewards: torch.Tensor
    next_values: torch.Tensor  # V(s') of the true next state (final obs when truncated); masked if terminated
    terminated: torch.Tensor  # 1.0 where the episode ended in a terminal state
    dones: torch.Tensor  # 1.0 where the episode ended (terminated or truncated)



# --------------------------------------------------------------------------- returns and advantages
def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        dones: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and lambda-returns over time-major ``(T, ...)`` tensors
    (every other axis, members and envs, is independent).

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
    """Reward-to-go over time-major ``(T, ...)`` tensors: ``G_t = r_t + gamma * (1 - terminated_t) * X``
    with ``X = G_{t+1}`` inside an episode and ``X = next_values_t`` where it was cut (a truncation,
    or the last row of a step block); a terminal step does not bootstrap."""
    r, nv = rewards.numpy(), next_values.numpy()
    not_term, done = 1.0 - terminated.numpy(), dones.numpy() > 0
    g = np.zeros_like(r)
    nxt = nv[-1]
    for t in range(r.shape[0] - 1, -1, -1):
        nxt = r[t] + gamma * not_term[t] * np.where(done[t], nv[t], nxt)
        g[t] = nxt
    return torch.from_numpy(g)


def standardize(x: torch.Tensor, eps: float = 1e-8, dim: int | None = None) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` with the population std (as numpy's ``np.std``), over ``dim``
    (each member's own: ``dim=-1`` of ``(K, n)``) or the whole tensor."""
    return (x - x.mean(dim, keepdim=True)) / (x.std(dim, correction=0, keepdim=True) + eps)


def per_member(x: torch.Tensor) -> torch.Tensor:
    """A rollout tensor ``(T, K, N, ...)`` as ``(K, T * N, ...)``: each member's steps in time-major order."""
    return x.transpose(0, 1).flatten(1, 2)


# --------------------------------------------------------------------------- categorical policies
def sample_categorical(logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One action per row of ``logits`` by inverse CDF from the uniforms ``u`` (``logits.shape[:-1]``);
    returns ``(actions, log_probs)``."""
    logp_all = torch.log_softmax(logits, dim=-1)
    actions = (logp_all.exp().cumsum(-1) < u.unsqueeze(-1)).sum(-1, keepdim=True).clamp_(max=logits.shape[-1] - 1)
    return actions.squeeze(-1), logp_all.gather(-1, actions).squeeze(-1)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` per row."""
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution per row."""
    logp_all = torch.log_softmax(logits, dim=-1)
    return -(logp_all.exp() * logp_all).sum(-1)


class MemberRandom:
    """Each member's own random stream for its actions and minibatch orders.

    Seeded ``(seed, 1)``: a stream apart from the member's network initialisation (torch, ``seed``)
    and from its envs (gymnasium's ``seed + i``), so nearby seeds share nothing.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.rngs = [np.random.default_rng([int(s), 1]) for s in seeds]

    def uniforms(self, n: int) -> torch.Tensor:
        """``(K, n)`` float32 uniforms, row ``k`` from member ``k``'s stream."""
        return torch.from_numpy(np.stack([g.random(n, dtype=np.float32) for g in self.rngs]))

    def sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`sample_categorical` over ``(K, N, n_actions)`` logits of every member."""
        return sample_categorical(logits, self.uniforms(logits.shape[1]).to(logits.device))

    def permutations(self, members: torch.Tensor, n: int) -> torch.Tensor:
        """``(len(members), n)``: a random order of ``n`` items per member."""
        return torch.from_numpy(np.stack([self.rngs[k].permutation(n) for k in members.tolist()]))


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Each member's rows ``idx`` (``(K, m)``) of ``x`` (``(K, n, ...)``)."""
    return torch.take_along_dim(x, idx.view(*idx.shape, *([1] * (x.dim() - 2))), dim=1)
