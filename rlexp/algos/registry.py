"""Registers every algorithm module's names (imported lazily by ``rlexp.algos``)."""

from __future__ import annotations

from typing import Any

from rlexp.algos import Algorithm, register
from rlexp.algos.actor_critic import ActorCriticAgent
from rlexp.algos.ddpg import DDPGAgent
from rlexp.algos.dqn import DQNAgent
from rlexp.algos.ppo import PPOAgent
from rlexp.algos.reinforce import ReinforceAgent
from rlexp.algos.sb3 import SB3Agent


def _dqn(cfg: Any, spec: Any) -> DQNAgent:
    return DQNAgent(cfg.algo, spec, cfg.optimizer, cfg.seed)


for _name in ("dqn", "dqn_target", "double_dqn", "clipped_double_dqn", "dueling_dqn"):
    register(Algorithm(_name, "off_policy", ("discrete",), _dqn))


# --------------------------------------------------------------------------- policy gradient, DDPG, SB3
def _reinforce(cfg: Any, spec: Any) -> ReinforceAgent:
    return ReinforceAgent(cfg.algo, spec, cfg.optimizer)


def _actor_critic(cfg: Any, spec: Any) -> ActorCriticAgent:
    return ActorCriticAgent(cfg.algo, spec, cfg.optimizer)


def _ppo(cfg: Any, spec: Any) -> PPOAgent:
    return PPOAgent(cfg.algo, spec, cfg.optimizer)


def _ddpg(cfg: Any, spec: Any) -> DDPGAgent:
    return DDPGAgent(cfg.algo, spec, cfg.optimizer, cfg.seed)


for _name in ("reinforce", "reinforce_baseline"):
    register(Algorithm(_name, "on_policy", ("discrete",), _reinforce, vectorized=True))
register(Algorithm("actor_critic", "on_policy", ("discrete",), _actor_critic, vectorized=True))
register(Algorithm("ppo", "on_policy", ("discrete",), _ppo, vectorized=True))
register(Algorithm("ddpg", "off_policy", ("continuous",), _ddpg))
# the library baseline; SB3 itself is imported only when a run starts
register(Algorithm("sb3_ppo", "external", ("discrete", "continuous"), SB3Agent, vectorized=True))
register(Algorithm("sb3_a2c", "external", ("discrete", "continuous"), SB3Agent, vectorized=True))
register(Algorithm("sb3_dqn", "external", ("discrete",), SB3Agent, vectorized=True))
