"""The DQN family in one module: plain, target-network, double, clipped double and dueling DQN.

The variants differ by a formula, so they are flags on one agent (see ``DQNConfig``):

- target: ``y = r + gamma * (1 - terminated) * max_a' Q_tgt(s', a')`` with ``Q_tgt`` the online net
  itself (``target_update=none``), a hard copy every N env steps, or a soft (tau) average;
- double: ``a* = argmax_a' Q(s', a')`` from the online net, evaluated by the target net;
- clipped: two online nets, both trained on ``y = r + gamma * min(max Q1(s'), max Q2(s'))``;
- dueling: ``Q = V + A - mean_a A`` with the mean per state;
- blending (seed Q-agent): regress on ``q + alpha * (y - q)`` instead of ``y``.

Truncated transitions are stored as non-terminal and bootstrap like any other. Every tensor has
the member axis first: the agent trains K seeds at once (``rlexp.nets``), each with its own
initialisation, exploration generator and optimizer state.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.buffer import Batch
from rlexp.config import DQNConfig, OptimizerConfig
from rlexp.envs import EnvSpec
from rlexp.metrics import Counters, Metrics
from rlexp.nets import MLP, generators
from rlexp.optim import StackedOptimizer, load_member_checkpoint, member_checkpoint
from rlexp.schedules import epsilon


class QNetwork(nn.Module):
    """MLP Q-function of K members; with ``dueling`` the trunk feeds a value and an advantage head."""

    def __init__(self, obs_dim: int, n_actions: int, cfg: DQNConfig, gens: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.dueling = cfg.dueling
        if cfg.dueling:
            self.trunk = MLP(obs_dim, cfg.hidden, None, gens, cfg.activation, cfg.layer_norm)
            self.value = MLP(self.trunk.out_dim, [cfg.dueling_hidden], 1, gens, cfg.activation)
            self.advantage = MLP(self.trunk.out_dim, [cfg.dueling_hidden], n_actions, gens, cfg.activation)
        else:
            self.q = MLP(obs_dim, cfg.hidden, n_actions, gens, cfg.activation, cfg.layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``(K, B, obs_dim)`` -> ``(K, B, n_actions)``."""
        if not self.dueling:
            return self.q(obs)
        h = self.trunk(obs)
        adv = self.advantage(h)
        return self.value(h) + adv - adv.mean(dim=-1, keepdim=True)


def td_target(cfg: DQNConfig, batch: Batch, online: nn.Module, target: nn.Module,
              second: nn.Module | None = None) -> torch.Tensor:
    """The bootstrapped target ``r + gamma * (1 - terminated) * next_value`` (no gradient), ``(K, B)``.

    ``second`` is the other (target) network of the clipped form; ``target`` is ``online`` when
    there is no target network. ``terminal_reward`` replaces the reward of terminating transitions.
    """
    with torch.no_grad():
        q_next = target(batch.next_obs)
        if cfg.clipped:
            assert second is not None
            next_v = torch.minimum(q_next.max(dim=-1).values, second(batch.next_obs).max(dim=-1).values)
        elif cfg.double:
            a_star = online(batch.next_obs).argmax(dim=-1, keepdim=True)
            next_v = q_next.gather(-1, a_star).squeeze(-1)
        else:
            next_v = q_next.max(dim=-1).values
        rewards = batch.rewards
        if cfg.terminal_reward is not None:
            rewards = torch.where(batch.terminated > 0, torch.full_like(rewards, cfg.terminal_reward), rewards)
        return rewards + cfg.gamma * (1.0 - batch.terminated) * next_v


def td_loss(cfg: DQNConfig, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-member loss ``(K,)`` of ``q`` against ``y`` (blended by ``target_alpha``), mean over the batch."""
    goal = y if cfg.target_alpha == 1.0 else q.detach() + cfg.target_alpha * (y - q.detach())
    loss = F.smooth_l1_loss if cfg.loss == "huber" else F.mse_loss
    return loss(q, goal, reduction="none").mean(dim=-1)


class DQNAgent:
    """Epsilon-greedy agent over one (or, clipped, two) Q-networks, for K members."""

    def __init__(self, cfg: DQNConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seeds: Sequence[int],
                 device: torch.device) -> None:
        self.cfg, self.size, self.device = cfg, len(seeds), device
        self.n_actions = spec.n_actions
        self.rngs = [np.random.default_rng(s + 1) for s in seeds]
        gens = generators(seeds)
        self.nets = [QNetwork(spec.obs_dim, spec.n_actions, cfg, gens).to(device)
                     for _ in range(2 if cfg.clipped else 1)]
        self.targets: list[QNetwork] = []
        if cfg.target_update != "none":
            self.targets = [copy.deepcopy(n).requires_grad_(False) for n in self.nets]
        self.optimizers = [StackedOptimizer(n.parameters(), opt_cfg, self.size, max_grad_norm=cfg.max_grad_norm)
                           for n in self.nets]
        self.params: list[torch.Tensor] = [p for n in self.nets for p in n.parameters()]
        self.target_params: list[torch.Tensor] = [p for n in self.targets for p in n.parameters()]
        self.updates = 0
        self._last_sync = 0
        self.eps = np.full(self.size, cfg.exploration.start)

    # ------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, counters: Counters) -> np.ndarray:
        """Each member's epsilon-greedy action; its random draws come from its own generator."""
        actions = np.full(self.size, -1, dtype=np.int64)  # -1: this member acts greedily
        for k, rng in enumerate(self.rngs):
            self.eps[k] = epsilon(self.cfg.exploration, counters.step, int(counters.episodes[k]), self.updates)
            if rng.random() < self.eps[k]:
                actions[k] = rng.integers(self.n_actions)
        greedy = actions < 0
        if greedy.any():  # one forward pass for every member, only when one of them needs it
            actions[greedy] = self.greedy(obs[:, None])[greedy, 0]
        return actions

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(s, a) of each member for ``(K, B, obs_dim)`` observations: ``(K, B)``."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.nets[0](x).argmax(dim=-1).cpu().numpy()

    def on_episode_start(self, members: Sequence[int]) -> None:
        pass

    # ------------------------------------------------------------------ learning
    def update_batches(self, batches: Sequence[Batch], counters: Counters) -> Metrics:
        """One gradient step per minibatch; returns each member's metrics averaged over them.

        A due hard copy of the target network happens first (it is scheduled in env steps, which
        do not advance during the minibatches).
        """
        cfg = self.cfg
        self._hard_sync(counters.step)
        targets = self.targets or self.nets  # no target network: the online nets bootstrap from themselves
        losses, q_means = [], []
        for batch in batches:
            y = td_target(cfg, batch, self.nets[0], targets[0], targets[1] if cfg.clipped else None)
            idx = batch.actions.unsqueeze(-1)
            qs = [net(batch.obs).gather(-1, idx).squeeze(-1) for net in self.nets]
            member_losses = torch.stack([td_loss(cfg, q, y) for q in qs])  # (nets, K)
            for opt in self.optimizers:
                opt.zero_grad()
            member_losses.sum().backward()  # each member's (and net's) gradient is its own loss's
            for opt in self.optimizers:
                opt.step()
            losses.append(member_losses.detach())
            q_means.append(qs[0].detach().mean(dim=-1))
            self.updates += 1
            self._soft_sync()
        loss = torch.stack(losses).mean(dim=0).cpu().numpy()
        out: dict[str, np.ndarray | float] = {"train/q_mean": torch.stack(q_means).mean(dim=0).cpu().numpy()}
        for i, v in enumerate(loss):
            out["train/loss" if i == 0 else f"train/loss{i + 1}"] = v
        return out

    def _soft_sync(self) -> None:
        if self.cfg.target_update == "soft":
            with torch.no_grad():
                torch._foreach_lerp_(self.target_params, self.params, self.cfg.tau)

    def _hard_sync(self, step: int) -> None:
        if self.cfg.target_update == "hard" and step - self._last_sync >= self.cfg.target_update_interval:
            self._last_sync = step
            with torch.no_grad():
                torch._foreach_copy_(self.target_params, self.params)

    def diagnostics(self) -> Metrics:
        return {"train/epsilon": self.eps.copy(), "train/updates": float(self.updates)}

    def member_state(self, k: int) -> dict[str, Any]:
        """Everything member ``k`` needs to continue exactly (a checkpoint)."""
        return {**member_checkpoint(k, self.size, self.nets + self.targets, self.optimizers, self.rngs[k]),
                "updates": self.updates, "last_sync": self._last_sync}

    def load_member(self, state: dict[str, Any], k: int = 0) -> None:
        load_member_checkpoint(state, self.nets + self.targets, self.optimizers, self.rngs[k], k)
        self.updates, self._last_sync = state["updates"], state["last_sync"]

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        for i, n in enumerate(self.nets):
            yield ("q" if i == 0 else f"q{i + 1}"), n
