"""Replay buffers of K members over preallocated numpy arrays (member axis first)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """Minibatches of transitions, ``(K, B, ...)`` float32/int64 tensors; ``terminated`` is 1.0 at
    true ends only."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """One ring buffer per member. Members step together, so they share the write position;
    each samples with its own generator. Truncated transitions are stored as non-terminal so they
    bootstrap."""

    _ARRAYS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def __init__(self, capacity: int, obs_dim: int, action_dim: int | None, seeds: Sequence[int],
                 device: torch.device | str = "cpu") -> None:
        """``action_dim=None`` stores discrete (int64) actions, otherwise float32 vectors."""
        k = len(seeds)
        self.capacity, self.device = capacity, torch.device(device)
        self.obs = np.zeros((k, capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((k, capacity, obs_dim), dtype=np.float32)
        if action_dim is None:
            self.actions = np.zeros((k, capacity), dtype=np.int64)
        else:
            self.actions = np.zeros((k, capacity, action_dim), dtype=np.float32)
        self.rewards = np.zeros((k, capacity), dtype=np.float32)
        self.terminated = np.zeros((k, capacity), dtype=np.float32)
        self.pos = 0
        self.size = 0
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self._rows = np.arange(k)[:, None]

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """One transition per member (arrays with the member axis first)."""
        i = self.pos
        self.obs[:, i] = obs
        self.actions[:, i] = actions
        self.rewards[:, i] = rewards
        self.next_obs[:, i] = next_obs
        self.terminated[:, i] = terminated
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def member_state(self, k: int) -> dict[str, Any]:
        """Member ``k``'s transitions (the filled part), write position and sampling generator."""
        arrays = {name: getattr(self, name)[k, :self.size].copy() for name in self._ARRAYS}
        return {"arrays": arrays, "pos": self.pos, "size": self.size, "rng": self.rngs[k].bit_generator.state}

    def load_member(self, state: dict[str, Any], k: int = 0) -> None:
        """Restore member ``k`` from :meth:`member_state` (the others' write position is shared)."""
        size = int(state["size"])
        for name, a in state["arrays"].items():
            getattr(self, name)[k, :size] = a
        self.pos, self.size = int(state["pos"]), size
        self.rngs[k].bit_generator.state = state["rng"]

    def sample(self, batch_size: int, n_batches: int = 1) -> list[Batch]:
        """``n_batches`` independent uniform minibatches per member, gathered in one go."""
        n = batch_size * n_batches
        idx = np.stack([rng.integers(0, self.size, size=n) for rng in self.rngs])
        parts = [torch.from_numpy(a[self._rows, idx]).to(self.device) for a in
                 (self.obs, self.actions, self.rewards, self.next_obs, self.terminated)]
        return [Batch(*(p[:, j * batch_size:(j + 1) * batch_size] for p in parts)) for j in range(n_batches)]
