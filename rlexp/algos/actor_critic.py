"""Actor-critic with one network (seed 004, after the TensorFlow tutorial).

A shared trunk feeds a softmax actor head and a value head. After every episode
(``episodes_per_update``) the returns ``G_t`` are computed, standardised over the update
(``normalize_returns``, the seed's choice), and one gradient step is taken on

    loss = reduce_t[-log pi(a_t|s_t) * (G_t - V(s_t))] + value_coef * reduce_t[huber(V(s_t), G_t)]

with ``reduce`` a sum (seed) or a mean. The advantage is treated as a constant in the actor term.
Standardised returns have no reward scale to bootstrap in, so truncated episodes bootstrap from
the value head only with ``normalize_returns=false``. K members (seeds) share the stacked network
(``rlexp.nets``); each acts from its own generator and updates when its own episodes are in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.config import ActorCriticConfig, OptimizerConfig
from rlexp.envs import EnvSpec
from rlexp.metrics import Counters, Metrics
from rlexp.nets import MLP, Linear, generators
from rlexp.nets import Members as Index
from rlexp.optim import StackedOptimizer, load_member_checkpoint, member_checkpoint
from rlexp.pg import (
    MemberRandom,
    Rollout,
    categorical_entropy,
    categorical_log_prob,
    discounted_returns,
    per_member,
    standardize,
)


class ActorCriticNet(nn.Module):
    """Shared MLP trunk, actor logits head, state-value head, for K members."""

    def __init__(self, obs_dim: int, n_actions: int, cfg: ActorCriticConfig, gens: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.trunk = MLP(obs_dim, cfg.hidden, None, gens, cfg.activation)
        self.actor = Linear(self.trunk.out_dim, n_actions, gens)
        self.critic = Linear(self.trunk.out_dim, 1, gens)

    def forward(self, obs: torch.Tensor, idx: Index = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, B, obs_dim)`` -> logits ``(K, B, n_actions)`` and values ``(K, B)``."""
        h = self.trunk(obs, idx)
        return self.actor(h, idx), self.critic(h, idx).squeeze(-1)


class ActorCriticAgent:
    """One network, one optimizer, one update per episode (per member)."""

    def __init__(self, cfg: ActorCriticConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seeds: Sequence[int],
                 device: torch.device) -> None:
        self.cfg, self.size, self.device = cfg, len(seeds), device
        self.net = ActorCriticNet(spec.obs_dim, spec.n_actions, cfg, generators(seeds)).to(device)
        self.optimizer = StackedOptimizer(self.net.parameters(), opt_cfg, self.size, max_grad_norm=cfg.max_grad_norm)
        self.random = MemberRandom(seeds)
        self.eps = float(np.finfo(np.float32).eps)  # the seed's std floor

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, v = self.net(torch.as_tensor(obs, device=self.device))
        actions, logp = self.random.sample(logits)
        return actions.cpu().numpy(), logp.cpu().numpy(), v.cpu().numpy()

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Each member's most probable action for ``(K, B, obs_dim)`` observations: ``(K, B)``."""
        return self.net(torch.as_tensor(obs, dtype=torch.float32, device=self.device))[0].argmax(-1).cpu().numpy()

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.net(torch.as_tensor(obs, device=self.device))[1].cpu().numpy()

    def update(self, ro: Rollout, members: torch.Tensor, counters: Counters) -> Metrics:
        cfg = self.cfg
        next_values = torch.zeros_like(ro.next_values) if cfg.normalize_returns else ro.next_values
        returns = discounted_returns(ro.rewards, next_values, ro.terminated, ro.dones, cfg.gamma)
        obs, actions, returns = (per_member(x).to(self.device) for x in (ro.obs, ro.actions, returns))
        if cfg.normalize_returns:
            returns = standardize(returns, self.eps, dim=-1)
        logits, v = self.net(obs, members.to(self.device))
        logp, entropy = categorical_log_prob(logits, actions), categorical_entropy(logits)

        def reduce(x: torch.Tensor) -> torch.Tensor:
            return x.sum(-1) if cfg.reduction == "sum" else x.mean(-1)

        policy_loss = reduce(-logp * (returns - v.detach()))
        value_loss = reduce(F.huber_loss(v, returns, reduction="none", delta=cfg.huber_delta))
        loss = policy_loss + cfg.value_coef * value_loss - cfg.ent_coef * reduce(entropy)
        self.optimizer.zero_grad()
        loss.sum().backward()  # each member's gradient is its own loss's
        self.optimizer.step(members)
        return {"train/policy_loss": policy_loss.detach().cpu().numpy(),
                "train/value_loss": value_loss.detach().cpu().numpy(),
                "train/entropy": entropy.detach().mean(-1).cpu().numpy()}

    def member_state(self, k: int) -> dict[str, Any]:
        """Everything member ``k`` needs to continue exactly (a checkpoint)."""
        return member_checkpoint(k, self.size, [self.net], [self.optimizer], self.random.rngs[k])

    def load_member(self, state: dict[str, Any], k: int = 0) -> None:
        load_member_checkpoint(state, [self.net], [self.optimizer], self.random.rngs[k], k)

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "actor_critic", self.net
