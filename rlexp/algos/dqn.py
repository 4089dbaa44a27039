"""The DQN family in one module: plain, target-network, double, clipped double and dueling DQN.

The variants differ by a formula, so they are flags on one agent (see ``DQNConfig``):

- target: ``y = r + gamma * (1 - terminated) * max_a' Q_tgt(s', a')`` with ``Q_tgt`` the online net
  itself (``target_update=none``), a hard copy every N env steps, or a soft (tau) average;
- double: ``a* = argmax_a' Q(s', a')`` from the online net, evaluated by the target net;
- clipped: two online nets, both trained on ``y = r + gamma * min(max Q1(s'), max Q2(s'))``;
- dueling: ``Q = V + A - mean_a A`` with the mean per state;
- blending (seed Q-agent): regress on ``q + alpha * (y - q)`` instead of ``y``.

Truncated transitions are stored as non-terminal and bootstrap like any other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.buffer import Batch
from rlexp.config import DQNConfig, OptimizerConfig
from rlexp.envs import EnvSpec
from rlexp.loops import Counters
from rlexp.nets import mlp, out_features
from rlexp.optim import make_optimizer
from rlexp.schedules import epsilon


class QNetwork(nn.Module):
    """MLP Q-function; with ``dueling`` the trunk feeds a value and an advantage head."""

    def __init__(self, obs_dim: int, n_actions: int, cfg: DQNConfig) -> None:
        super().__init__()
        self.dueling = cfg.dueling
        if cfg.dueling:
            self.trunk = mlp(obs_dim, cfg.hidden, None, cfg.activation)
            width = out_features(self.trunk, obs_dim)
            self.value = mlp(width, [cfg.dueling_hidden], 1, cfg.activation)
            self.advantage = mlp(width, [cfg.dueling_hidden], n_actions, cfg.activation)
        else:
            self.q = mlp(obs_dim, cfg.hidden, n_actions, cfg.activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.q(obs)
        h = self.trunk(obs)
        adv = self.advantage(h)
        return self.value(h) + adv - adv.mean(dim=1, keepdim=True)


def td_target(cfg: DQNConfig, batch: Batch, online: nn.Module, target: nn.Module,
              second: nn.Module | None = None) -> torch.Tensor:
    """The bootstrapped target ``r + gamma * (1 - terminated) * next_value`` (no gradient).

    ``second`` is the other network of the clipped form; ``target`` is ``online`` when there is no
    target network. ``terminal_reward`` replaces the reward of terminating transitions.
    """
    with torch.no_grad():
        rewards = batch.rewards
        if cfg.terminal_reward is not None:
            rewards = torch.where(batch.terminated > 0, torch.full_like(rewards, cfg.terminal_reward), rewards)
        q_next = target(batch.next_obs)
        if cfg.clipped:
            assert second is not None
            next_v = torch.minimum(q_next.max(dim=1).values, second(batch.next_obs).max(dim=1).values)
        elif cfg.double:
            a_star = online(batch.next_obs).argmax(dim=1, keepdim=True)
            next_v = q_next.gather(1, a_star).squeeze(1)
        else:
            next_v = q_next.max(dim=1).values
        return rewards + cfg.gamma * (1.0 - batch.terminated) * next_v


class DQNAgent:
    """Epsilon-greedy agent over one (or, clipped, two) Q-networks."""

    def __init__(self, cfg: DQNConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seed: int) -> None:
        self.cfg = cfg
        self.n_actions = spec.n_actions
        self.rng = np.random.default_rng(seed + 1)
        self.q = QNetwork(spec.obs_dim, spec.n_actions, cfg)
        self.nets: list[nn.Module] = [self.q]
        if cfg.clipped:
            self.nets.append(QNetwork(spec.obs_dim, spec.n_actions, cfg))
        self.targets: list[nn.Module] = []
        if cfg.target_update != "none":
            self.targets = [copy.deepcopy(n).requires_grad_(False) for n in self.nets]
        self.optimizers = [make_optimizer(n.parameters(), opt_cfg) for n in self.nets]
        self.updates = 0
        self._last_sync = 0
        self.eps = cfg.exploration.start

    # ------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, counters: Counters) -> int:
        self.eps = epsilon(self.cfg.exploration, counters.step, counters.episode, self.updates)
        if self.rng.random() < self.eps:
            return int(self.rng.integers(self.n_actions))
        return self.greedy(obs)

    def greedy(self, obs: np.ndarray) -> int:
        with torch.no_grad():
            return int(self.q(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).argmax())

    def on_episode_start(self) -> None:
        pass

    # ------------------------------------------------------------------ learning
    def update(self, batch: Batch, counters: Counters) -> dict[str, float]:
        cfg = self.cfg
        targets = self.targets or self.nets
        second = targets[1] if cfg.clipped else None
        y = td_target(cfg, batch, self.nets[0], targets[0], second)
        out: dict[str, float] = {}
        for i, (net, opt) in enumerate(zip(self.nets, self.optimizers, strict=True)):
            q = net(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
            goal = y if cfg.target_alpha == 1.0 else q.detach() + cfg.target_alpha * (y - q.detach())
            loss = F.smooth_l1_loss(q, goal) if cfg.loss == "huber" else F.mse_loss(q, goal)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm, foreach=True)
            opt.step()
            out["train/loss" if i == 0 else f"train/loss{i + 1}"] = loss.item()
            if i == 0:
                out["train/q_mean"] = q.mean().item()
        self.updates += 1
        self._sync_targets(counters.step)
        return out

    def _sync_targets(self, step: int) -> None:
        if self.cfg.target_update == "soft":
            with torch.no_grad():
                for tgt, net in zip(self.targets, self.nets, strict=True):
                    torch._foreach_lerp_(list(tgt.parameters()), list(net.parameters()), self.cfg.tau)
        elif self.cfg.target_update == "hard" and step - self._last_sync >= self.cfg.target_update_interval:
            self._last_sync = step
            for tgt, net in zip(self.targets, self.nets, strict=True):
                tgt.load_state_dict(net.state_dict())

    def diagnostics(self) -> dict[str, float]:
        return {"train/epsilon": self.eps, "train/updates": float(self.updates)}

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        for i, n in enumerate(self.nets):
            yield ("q" if i == 0 else f"q{i + 1}"), n
