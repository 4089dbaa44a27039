"""What training counts and measures: the loop's counters, the metrics an update returns, and pure
functions for the solve criterion (shared by the loop, the tests and the analysis)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Counters:
    """Progress counters the loop advances and the agents read (schedules depend on them).

    Members step together, so ``step`` and ``updates`` are shared; episodes are per member."""

    step: int = 0  # env steps taken by each active member
    updates: int = 0  # gradient updates done
    episodes: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # (K,) finished


Metrics = Mapping[str, np.ndarray | float]  # per-member values, ``(K,)`` arrays (or one for all)


def rolling_mean(returns: Sequence[float], window: int) -> np.ndarray:
    """Mean of the last ``min(i, window)`` returns at each 1-based episode i."""
    r = np.asarray(returns, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(r)])
    idx = np.arange(1, len(r) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def episodes_to_solve(returns: Sequence[float], window: int, threshold: float) -> int | None:
    """First 1-based episode at which the mean of the last ``window`` returns is >= threshold.

    Needs a full window: nothing can be solved before episode ``window``. None if never solved.
    """
    r = np.asarray(returns, dtype=np.float64)
    if len(r) < window:
        return None
    c = np.concatenate([[0.0], np.cumsum(r)])
    means = (c[window:] - c[:-window]) / window
    hit = np.flatnonzero(means >= threshold - 1e-9)
    return int(hit[0]) + window if hit.size else None


class SolveTracker:
    """Incremental form of :func:`episodes_to_solve` (exact sums over a window deque)."""

    def __init__(self, window: int, threshold: float) -> None:
        self.window, self.threshold = window, threshold
        self._recent: deque[float] = deque(maxlen=window)
        self.episodes = 0
        self.solved_at: int | None = None

    def add(self, ret: float) -> float:
        """Record one episode's return; returns the rolling mean over the window so far."""
        self._recent.append(float(ret))
        self.episodes += 1
        mean = sum(self._recent) / len(self._recent)
        if (self.solved_at is None and len(self._recent) == self.window
                and mean >= self.threshold - 1e-9):
            self.solved_at = self.episodes
        return mean
