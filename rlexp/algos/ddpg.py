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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.buffer import Batch
from rlexp.config import DDPGConfig, OptimizerConfig
from rlexp.envs import EnvSpec
from rlexp.metrics import Counters, Metrics
from rlexp.nets import MLP, generators
from rlexp.optim import StackedOptimizer, load_member_checkpoint, member_checkpoint


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
    """``mu(s) = center + half_range * tanh(MLP(s))`` for K members."""

    center: torch.Tensor
    half_range: torch.Tensor

    def __init__(self, obs_dim: int, spec: EnvSpec, cfg: DDPGConfig, gens: Sequence[torch.Generator]) -> None:
        super().__init__()
        assert spec.action_low is not None and spec.action_high is not None
        self.net = MLP(obs_dim, cfg.hidden, spec.n_actions, gens, cfg.activation)
        last = self.net.last
        with torch.no_grad():  # the output layer starts near zero: first actions near the middle
            for k, g in enumerate(gens):
                last.weight[k].uniform_(-cfg.final_init, cfg.final_init, generator=g)
            last.bias.zero_()
        low, high = torch.as_tensor(spec.action_low), torch.as_tensor(spec.action_high)
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.center + self.half_range * torch.tanh(self.net(obs))


class Critic(nn.Module):
    """``Q(s, a)`` for K members: separate state and action branches, concatenated into an MLP head."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: DDPGConfig, gens: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.state = MLP(obs_dim, cfg.critic_state_hidden, None, gens, cfg.activation)
        self.action = MLP(act_dim, cfg.critic_action_hidden, None, gens, cfg.activation)
        self.head = MLP(self.state.out_dim + self.action.out_dim, cfg.critic_hidden, 1, gens, cfg.activation)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.state(obs), self.action(action)], dim=-1)).squeeze(-1)


class DDPGAgent:
    """Actor, critic, their targets and the exploration noise, for K members."""

    def __init__(self, cfg: DDPGConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seeds: Sequence[int],
                 device: torch.device) -> None:
        assert spec.action_low is not None and spec.action_high is not None
        self.cfg, self.size, self.device = cfg, len(seeds), device
        self.low, self.high = spec.action_low, spec.action_high
        gens = generators(seeds)
        self.actor = Actor(spec.obs_dim, spec, cfg, gens).to(device)
        self.critic = Critic(spec.obs_dim, spec.n_actions, cfg, gens).to(device)
        self.actor_optimizer = StackedOptimizer(self.actor.parameters(), opt_cfg, self.size,
                                                max_grad_norm=cfg.max_grad_norm)
        self.critic_optimizer = StackedOptimizer(self.critic.parameters(), opt_cfg, self.size, lr=cfg.critic_lr,
                                                 max_grad_norm=cfg.max_grad_norm)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_params = list(self.actor.parameters())
        self.online: list[torch.Tensor] = [p for n in (self.actor, self.critic) for p in n.parameters()]
        self.target: list[torch.Tensor] = [p for n in (self.actor_target, self.critic_target) for p in n.parameters()]
        self.rngs = [np.random.default_rng(s + 1) for s in seeds]
        self.noise = [OUNoise(spec.n_actions, cfg.noise_sigma, cfg.noise_theta, cfg.noise_dt, rng)
                      for rng in self.rngs]
        self.updates = 0

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: np.ndarray, counters: Counters) -> np.ndarray:
        """Each member's ``mu(s)`` plus its own noise, clipped to the bounds: ``(K, act_dim)``."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)
        a = self.actor(x)[:, 0].cpu().numpy().astype(np.float64)
        for k, rng in enumerate(self.rngs):
            if self.cfg.noise == "ou":
                a[k] = a[k] + self.noise[k]()
            elif self.cfg.noise == "gaussian":
                a[k] = a[k] + self.cfg.noise_sigma * rng.standard_normal(a.shape[1])
        return np.clip(a, self.low, self.high).astype(np.float32)

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Each member's ``mu(s)`` without noise for ``(K, B, obs_dim)`` observations: ``(K, B, act_dim)``."""
        return self.actor(torch.as_tensor(obs, dtype=torch.float32, device=self.device)).cpu().numpy()

    def on_episode_start(self, members: Sequence[int]) -> None:
        for k in members:
            self.noise[k].reset()

    # ------------------------------------------------------------------ learning
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step of critic then actor, and the soft target update; per-member metrics."""
        cfg = self.cfg
        with torch.no_grad():
            next_q = self.critic_target(batch.next_obs, self.actor_target(batch.next_obs))
            y = batch.rewards + cfg.gamma * (1.0 - batch.terminated) * next_q
        q = self.critic(batch.obs, batch.actions)
        loss_fn = F.mse_loss if cfg.loss == "mse" else F.smooth_l1_loss
        critic_loss = loss_fn(q, y, reduction="none").mean(dim=-1)  # (K,)
        self.critic_optimizer.zero_grad()
        critic_loss.sum().backward()
        self.critic_optimizer.step()

        actor_loss = -self.critic(batch.obs, self.actor(batch.obs)).mean(dim=-1)  # (K,)
        self.actor_optimizer.zero_grad()
        actor_loss.sum().backward(inputs=self.actor_params)  # the critic's gradients are not needed here
        self.actor_optimizer.step()

        with torch.no_grad():
            torch._foreach_lerp_(self.target, self.online, cfg.tau)
        self.updates += 1
        return {"train/critic_loss": critic_loss.detach(), "train/actor_loss": actor_loss.detach(),
                "train/q_mean": q.detach().mean(dim=-1)}

    def update_batches(self, batches: Sequence[Batch], counters: Counters) -> Metrics:
        steps = [self.update(b) for b in batches]
        return {key: torch.stack([m[key] for m in steps]).mean(dim=0).cpu().numpy() for key in steps[0]}

    def diagnostics(self) -> Metrics:
        return {"train/updates": float(self.updates),
                "train/noise": np.array([float(np.abs(n.x).mean()) for n in self.noise])}

    def _nets(self) -> list[nn.Module]:
        return [self.actor, self.critic, self.actor_target, self.critic_target]

    def member_state(self, k: int) -> dict[str, Any]:
        """Everything member ``k`` needs to continue exactly (a checkpoint)."""
        return {**member_checkpoint(k, self.size, self._nets(), [self.actor_optimizer, self.critic_optimizer],
                                    self.rngs[k]), "noise": self.noise[k].x.copy(), "updates": self.updates}

    def load_member(self, state: dict[str, Any], k: int = 0) -> None:
        load_member_checkpoint(state, self._nets(), [self.actor_optimizer, self.critic_optimizer], self.rngs[k], k)
        self.noise[k].x = state["noise"].copy()
        self.updates = state["updates"]

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "actor", self.actor
        yield "critic", self.critic
