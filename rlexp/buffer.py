"""Replay buffer over preallocated numpy arrays."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """A minibatch of transitions as float32/int64 tensors; ``terminated`` is 1.0 at true ends only."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """Ring buffer of transitions. Truncated transitions are stored as non-terminal so they bootstrap."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int | None, seed: int) -> None:
        """``action_dim=None`` stores discrete (int64) actions, otherwise float32 vectors."""
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        if action_dim is None:
            self.actions = np.zeros(capacity, dtype=np.int64)
        else:
            self.actions = np.zeros((capacity, action_dim), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs: np.ndarray, action: np.ndarray | int, reward: float,
            next_obs: np.ndarray, terminated: bool) -> None:
        i = self.pos
        self.obs[i] = obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_obs[i] = next_obs
        self.terminated[i] = terminated
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, n_batches: int = 1) -> list[Batch]:
        """``n_batches`` independent uniform minibatches, gathered and converted in one go."""
        idx = self.rng.integers(0, self.size, size=batch_size * n_batches)
        parts = [torch.from_numpy(a[idx]) for a in
                 (self.obs, self.actions, self.rewards, self.next_obs, self.terminated)]
        return [Batch(*(p[k * batch_size:(k + 1) * batch_size] for p in parts)) for k in range(n_batches)]
