"""REINFORCE (seed 004), with and without a learned state-value baseline.

Each update takes a batch of whole episodes (``episodes_per_update``, at least
``min_steps_per_update`` steps) and makes one policy gradient step on

    loss = -mean_t log pi(a_t|s_t) * (G_t - V(s_t))

with ``G_t`` the discounted reward-to-go and ``V = 0`` without a baseline. The baseline is its
own MLP regressed on ``G_t`` (MSE, ``value_iters`` steps); with it, a truncated episode's
reward-to-go bootstraps from V of its last observation (without it there is nothing to bootstrap
from, as in the seed).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.config import OptimizerConfig, ReinforceConfig
from rlexp.envs import EnvSpec
from rlexp.loops import Counters
from rlexp.nets import mlp
from rlexp.onpolicy import (
    Rollout,
    categorical_entropy,
    categorical_log_prob,
    discounted_returns,
    sample_categorical,
    standardize,
)
from rlexp.optim import make_optimizer


class ReinforceAgent:
    """Softmax policy MLP, optional value MLP baseline."""

    def __init__(self, cfg: ReinforceConfig, spec: EnvSpec, opt_cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        self.policy = mlp(spec.obs_dim, cfg.hidden, spec.n_actions, cfg.activation)
        self.optimizer = make_optimizer(self.policy.parameters(), opt_cfg)
        self.baseline: nn.Module | None = None
        if cfg.baseline:
            self.baseline = mlp(spec.obs_dim, cfg.hidden, 1, cfg.activation)
            self.value_optimizer = make_optimizer(self.baseline.parameters(), opt_cfg, lr=cfg.value_lr)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(obs)
        actions, logp = sample_categorical(self.policy(x))
        return actions.numpy(), logp.numpy(), self.value(obs)

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        if self.baseline is None:
            return np.zeros(len(obs), dtype=np.float32)
        return self.baseline(torch.from_numpy(obs)).squeeze(-1).numpy()

    def update(self, ro: Rollout, counters: Counters) -> dict[str, float]:
        cfg = self.cfg
        returns = discounted_returns(ro.rewards, ro.next_values, ro.terminated, ro.dones, cfg.gamma).flatten()
        obs, actions = ro.obs.flatten(0, 1), ro.actions.flatten()
        adv = returns - ro.values.flatten()
        if cfg.normalize_advantages:
            adv = standardize(adv)
        logits = self.policy(obs)
        logp, entropy = categorical_log_prob(logits, actions), categorical_entropy(logits)
        loss = -(logp * adv).mean() - cfg.ent_coef * entropy.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm, foreach=True)
        self.optimizer.step()
        out = {"train/policy_loss": loss.item(), "train/entropy": entropy.mean().item(),
               "train/return_mean": returns.mean().item()}
        if self.baseline is not None:
            for _ in range(cfg.value_iters):
                v_loss = F.mse_loss(self.baseline(obs).squeeze(-1), returns)
                self.value_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                self.value_optimizer.step()
            out["train/value_loss"] = v_loss.item()
        return out

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "policy", self.policy
        if self.baseline is not None:
            yield "baseline", self.baseline
