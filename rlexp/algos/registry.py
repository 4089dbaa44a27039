"""Registers every algorithm module's names (imported lazily by ``rlexp.algos``)."""

from __future__ import annotations

from typing import Any

from rlexp.algos import Algorithm, register
from rlexp.algos.dqn import DQNAgent


def _dqn(cfg: Any, spec: Any) -> DQNAgent:
    return DQNAgent(cfg.algo, spec, cfg.optimizer, cfg.seed)


for _name in ("dqn", "dqn_target", "double_dqn", "clipped_double_dqn", "dueling_dqn"):
    register(Algorithm(_name, "off_policy", ("discrete",), _dqn))
