"""Exploration schedules as pure functions of the loop's counters."""

from __future__ import annotations

import math

from rlexp.config import ExplorationConfig


def epsilon(cfg: ExplorationConfig, step: int, episode: int, updates: int) -> float:
    """Epsilon after ``step`` env steps, ``episode`` finished episodes and ``updates`` updates.

    - linear: from start to end over ``cfg.steps`` env steps, then flat;
    - exponential: ``end + (start - end) * exp(-rate * episode)`` (seed 000, notebook 2);
    - multiplicative: ``start * factor**updates`` floored at end (seeds' ``eps *= decay`` per replay).
    """
    if cfg.schedule == "linear":
        frac = min(step / cfg.steps, 1.0)
        return cfg.start + frac * (cfg.end - cfg.start)
    if cfg.schedule == "exponential":
        return cfg.end + (cfg.start - cfg.end) * math.exp(-cfg.rate * episode)
    return max(cfg.end, cfg.start * cfg.factor**updates)
