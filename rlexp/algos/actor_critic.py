"""Actor-critic with one network (seed 004, after the TensorFlow tutorial).

A shared trunk feeds a softmax actor head and a value head. After every episode
(``episodes_per_update``) the returns ``G_t`` are computed, standardised over the update
(``normalize_returns``, the seed's choice), and one gradient step is taken on

    loss = reduce_t[-log pi(a_t|s_t) * (G_t - V(s_t))] + value_coef * reduce_t[huber(V(s_t), G_t)]

with ``reduce`` a sum (seed) or a mean. The advantage is treated as a constant in the actor term.
Standardised returns have no reward scale to bootstrap in, so truncated episodes bootstrap from
the value head only with ``normalize_returns=false``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.config import ActorCriticConfig, OptimizerConfig
from rlexp.envs import EnvSpec
from rlexp.loops import Counters
from rlexp.nets import mlp, out_features
from rlexp.onpolicy import (
    Rollout,
    categorical_entropy,
    categorical_log_prob,
    discounted_returns,
    sample_categorical,
    standardize,
)
from rlexp.optim import make_optimizer


class ActorCriticNet(nn.Module):
    """Shared MLP trunk, actor logits head, state-value head."""

    def __init__(self, obs_dim: int, n_actions: int, cfg: ActorCriticConfig) -> None:
        super().__init__()
        self.trunk = mlp(obs_dim, cfg.hidden, None, cfg.activation)
        width = out_features(self.trunk, obs_dim)
        self.actor = nn.Linear(width, n_actions)
        self.critic = nn.Linear(width, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.actor(h), self.critic(h).squeeze(-1)


class ActorCriticAgent:
    """One network, one optimizer, one update per episode."""

    def __init__(self, cfg: ActorCriticConfig, spec: EnvSpec, opt_cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        self.net = ActorCriticNet(spec.obs_dim, spec.n_actions, cfg)
        self.optimizer = make_optimizer(self.net.parameters(), opt_cfg)
        self.eps = float(np.finfo(np.float32).eps)  # the seed's std floor

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, v = self.net(torch.from_numpy(obs))
        actions, logp = sample_categorical(logits)
        return actions.numpy(), logp.numpy(), v.numpy()

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.net(torch.from_numpy(obs))[1].numpy()

    def update(self, ro: Rollout, counters: Counters) -> dict[str, float]:
        cfg = self.cfg
        next_values = torch.zeros_like(ro.next_values) if cfg.normalize_returns else ro.next_values
        returns = discounted_returns(ro.rewards, next_values, ro.terminated, ro.dones, cfg.gamma).flatten()
        if cfg.normalize_returns:
            returns = standardize(returns, self.eps)
        logits, v = self.net(ro.obs.flatten(0, 1))
        logp, entropy = categorical_log_prob(logits, ro.actions.flatten()), categorical_entropy(logits)
        reduce = torch.sum if cfg.reduction == "sum" else torch.mean
        policy_loss = reduce(-logp * (returns - v.detach()))
        value_loss = reduce(F.huber_loss(v, returns, reduction="none", delta=cfg.huber_delta))
        loss = policy_loss + cfg.value_coef * value_loss - cfg.ent_coef * reduce(entropy)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm, foreach=True)
        self.optimizer.step()
        return {"train/policy_loss": policy_loss.item(), "train/value_loss": value_loss.item(),
                "train/entropy": entropy.mean().item()}

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "actor_critic", self.net
