"""DDPG on continuous actions (seed 004, after Keras' ddpg_pendulum), trained by the off-policy loop.

- actor ``mu(s)``: MLP, output ``tanh`` scaled to the action bounds, last layer initialised in
  ``+-final_init`` so the first actions are near the middle of the range;
- critic ``Q(s, a)``: a state branch and an action branch, concatenated, then an MLP to one value;
- critic target ``y = r + gamma * (1 - terminated) * Q'(s', mu'(s'))`` from the target networks,
  which follow the online ones by a soft update (tau) after every gradient step;
- actor loss ``-mean Q(s, mu(s))``;
- exploration: ``mu(s)`` plus Ornstein-Uhlenbeck (reset at every episode start) or Gaussian noise,
  clipped to the bounds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.buffer import Batch
from rlexp.config import DDPGConfig, OptimizerConfig
from rlexp.envs import EnvSpec
from rlexp.loops import Counters, mean_metrics
from rlexp.nets import mlp, out_features
from rlexp.optim import make_optimizer


class OUNoise:
    """Euler-Maruyama Ornstein-Uhlenbeck process around 0.

    ``x <- x - theta * x * dt + sigma * sqrt(dt) * N(0, 1)``, an AR(1) process with
    ``a = 1 - theta * dt``: from ``x_0``, ``E[x_t] = a^t x_0`` and
    ``Var[x_t] = sigma^2 dt (1 - a^(2t)) / (1 - a^2)``, so the stationary std is
    ``sigma / sqrt(theta * (2 - theta * dt))`` (``sigma / sqrt(2 theta)`` as ``dt -> 0``).
    """

    def __init__(self, size: int, sigma: float, theta: float, dt: float, rng: np.random.Generator,
                 x0: np.ndarray | None = None) -> None:
        self.sigma, self.theta, self.dt, self.rng = sigma, theta, dt, rng
        self.x0 = np.zeros(size) if x0 is None else np.asarray(x0, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self.x = self.x0.copy()

    def __call__(self) -> np.ndarray:
        noise = self.rng.standard_normal(self.x.shape)
        self.x = self.x - self.theta * self.x * self.dt + self.sigma * math.sqrt(self.dt) * noise
        return self.x

    def stationary_std(self) -> float:
        return self.sigma / math.sqrt(self.theta * (2.0 - self.theta * self.dt))


class Actor(nn.Module):
    """``mu(s) = center + half_range * tanh(MLP(s))``."""

    center: torch.Tensor
    half_range: torch.Tensor

    def __init__(self, obs_dim: int, spec: EnvSpec, cfg: DDPGConfig) -> None:
        super().__init__()
        assert spec.action_low is not None and spec.action_high is not None
        self.net = mlp(obs_dim, cfg.hidden, spec.n_actions, cfg.activation)
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.uniform_(last.weight, -cfg.final_init, cfg.final_init)
        nn.init.zeros_(last.bias)
        low, high = torch.as_tensor(spec.action_low), torch.as_tensor(spec.action_high)
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.center + self.half_range * torch.tanh(self.net(obs))


class Critic(nn.Module):
    """``Q(s, a)``: separate state and action branches, concatenated into an MLP head."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: DDPGConfig) -> None:
        super().__init__()
        self.state = mlp(obs_dim, cfg.critic_state_hidden, None, cfg.activation)
        self.action = mlp(act_dim, cfg.critic_action_hidden, None, cfg.activation)
        width = out_features(self.state, obs_dim) + out_features(self.action, act_dim)
        self.head = mlp(width, cfg.critic_hidden, 1, cfg.activation)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.state(obs), self.action(action)], dim=-1)).squeeze(-1)


class DDPGAgent:
    """Actor, critic, their targets and the exploration noise."""

    def __init__(self, cfg: DDPGConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seed: int) -> None:
        assert spec.action_low is not None and spec.action_high is not None
        self.cfg = cfg
        self.low, self.high = spec.action_low, spec.action_high
        self.actor = Actor(spec.obs_dim, spec, cfg)
        self.critic = Critic(spec.obs_dim, spec.n_actions, cfg)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params = list(self.actor.parameters())
        # (target, online) parameter lists for the soft updates, built once
        self.soft_pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [
            (list(t.parameters()), list(n.parameters()))
            for t, n in ((self.actor_target, self.actor), (self.critic_target, self.critic))]
        self.actor_optimizer = make_optimizer(self.actor_params, opt_cfg)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), opt_cfg, lr=cfg.critic_lr)
        self.rng = np.random.default_rng(seed + 1)
        self.ou = OUNoise(spec.n_actions, cfg.noise_sigma, cfg.noise_theta, cfg.noise_dt, self.rng)
        self.updates = 0

    # ------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, counters: Counters) -> np.ndarray:
        with torch.no_grad():
            a = self.actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()
        if self.cfg.noise == "ou":
            a = a + self.ou()
        elif self.cfg.noise == "gaussian":
            a = a + self.cfg.noise_sigma * self.rng.standard_normal(a.shape)
        return np.clip(a, self.low, self.high).astype(np.float32)

    def on_episode_start(self) -> None:
        self.ou.reset()

    # ------------------------------------------------------------------ learning
    def update(self, batch: Batch, counters: Counters) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            next_q = self.critic_target(batch.next_obs, self.actor_target(batch.next_obs))
            y = batch.rewards + cfg.gamma * (1.0 - batch.terminated) * next_q
        q = self.critic(batch.obs, batch.actions)
        critic_loss = F.mse_loss(q, y) if cfg.loss == "mse" else F.smooth_l1_loss(q, y)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm, foreach=True)
        self.critic_optimizer.step()

        actor_loss = -self.critic(batch.obs, self.actor(batch.obs)).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=self.actor_params)  # the critic's gradients are not needed here
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.actor_params, cfg.max_grad_norm, foreach=True)
        self.actor_optimizer.step()

        with torch.no_grad():
            for tgt, net in self.soft_pairs:
                torch._foreach_lerp_(tgt, net, cfg.tau)
        self.updates += 1
        return {"train/critic_loss": critic_loss.item(), "train/actor_loss": actor_loss.item(),
                "train/q_mean": q.mean().item()}

    def update_batches(self, batches: Sequence[Batch], counters: Counters) -> dict[str, float]:
        return mean_metrics(self.update(b, counters) for b in batches)

    def diagnostics(self) -> dict[str, float]:
        return {"train/updates": float(self.updates), "train/noise": float(np.abs(self.ou.x).mean())}

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "actor", self.actor
        yield "critic", self.critic
