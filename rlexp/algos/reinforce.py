"""REINFORCE (seed 004), with and without a learned state-value baseline.

Each update takes a batch of one member's whole episodes (``episodes_per_update``, at least
``min_steps_per_update`` steps) and makes one policy gradient step on

    loss = -mean_t log pi(a_t|s_t) * (G_t - V(s_t))

with ``G_t`` the discounted reward-to-go and ``V = 0`` without a baseline. The baseline is its
own MLP regressed on ``G_t`` (MSE, ``value_iters`` steps); with it, a truncated episode's
reward-to-go bootstraps from V of its last observation (without it there is nothing to bootstrap
from, as in the seed). K members (seeds) share the stacked networks (``rlexp.nets``); each acts
from its own generator and updates when its own episodes are in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.config import OptimizerConfig, ReinforceConfig
from rlexp.envs import EnvSpec
from rlexp.metrics import Counters, Metrics
from rlexp.nets import MLP, generators
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


class ReinforceAgent:
    """Softmax policy MLP, optional value MLP baseline, for K members."""

    def __init__(self, cfg: ReinforceConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seeds: Sequence[int],
                 device: torch.device) -> None:
        self.cfg, self.size, self.device = cfg, len(seeds), device
        gens = generators(seeds)
        self.policy = MLP(spec.obs_dim, cfg.hidden, spec.n_actions, gens, cfg.activation).to(device)
        self.optimizer = StackedOptimizer(self.policy.parameters(), opt_cfg, self.size,
                                          max_grad_norm=cfg.max_grad_norm)
        self.baseline: MLP | None = None
        if cfg.baseline:
            self.baseline = MLP(spec.obs_dim, cfg.hidden, 1, gens, cfg.activation).to(device)
            self.value_optimizer = StackedOptimizer(self.baseline.parameters(), opt_cfg, self.size,
                                                    lr=cfg.value_lr)
        self.random = MemberRandom(seeds)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        actions, logp = self.random.sample(self.policy(torch.as_tensor(obs, device=self.device)))
        return actions.cpu().numpy(), logp.cpu().numpy(), self.value(obs)

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Each member's most probable action for ``(K, B, obs_dim)`` observations: ``(K, B)``."""
        return self.policy(torch.as_tensor(obs, dtype=torch.float32, device=self.device)).argmax(-1).cpu().numpy()

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        if self.baseline is None:
            return np.zeros(obs.shape[:-1], dtype=np.float32)
        return self.baseline(torch.as_tensor(obs, device=self.device)).squeeze(-1).cpu().numpy()

    def update(self, ro: Rollout, members: torch.Tensor, counters: Counters) -> Metrics:
        cfg = self.cfg
        returns = discounted_returns(ro.rewards, ro.next_values, ro.terminated, ro.dones, cfg.gamma)
        obs, actions, values, returns = (per_member(x).to(self.device) for x in
                                         (ro.obs, ro.actions, ro.values, returns))
        idx = members.to(self.device)
        adv = returns - values
        if cfg.normalize_advantages:
            adv = standardize(adv, dim=-1)
        logits = self.policy(obs, idx)
        logp, entropy = categorical_log_prob(logits, actions), categorical_entropy(logits)
        loss = -(logp * adv).mean(-1) - cfg.ent_coef * entropy.mean(-1)
        self.optimizer.zero_grad()
        loss.sum().backward()  # each member's gradient is its own loss's
        self.optimizer.step(members)
        out = {"train/policy_loss": loss.detach(), "train/entropy": entropy.detach().mean(-1),
               "train/return_mean": returns.mean(-1)}
        if self.baseline is not None:
            for _ in range(cfg.value_iters):
                v_loss = F.mse_loss(self.baseline(obs, idx).squeeze(-1), returns, reduction="none").mean(-1)
                self.value_optimizer.zero_grad()
                v_loss.sum().backward()
                self.value_optimizer.step(members)
            out["train/value_loss"] = v_loss.detach()
        return {key: v.cpu().numpy() for key, v in out.items()}

    def _parts(self) -> tuple[list[nn.Module], list[StackedOptimizer]]:
        if self.baseline is None:
            return [self.policy], [self.optimizer]
        return [self.policy, self.baseline], [self.optimizer, self.value_optimizer]

    def member_state(self, k: int) -> dict[str, Any]:
        """Everything member ``k`` needs to continue exactly (a checkpoint)."""
        return member_checkpoint(k, self.size, *self._parts(), self.random.rngs[k])

    def load_member(self, state: dict[str, Any], k: int = 0) -> None:
        load_member_checkpoint(state, *self._parts(), self.random.rngs[k], k)

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "policy", self.policy
        if self.baseline is not None:
            yield "baseline", self.baseline
