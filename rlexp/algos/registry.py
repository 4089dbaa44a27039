"""Registers every algorithm's name; each module is imported when a run builds its agent."""

from __future__ import annotations

from typing import Any

from rlexp.algos import Algorithm, register


def _dqn(cfg: Any, spec: Any, seeds: list[int], device: Any) -> Any:
    from rlexp.algos.dqn import DQNAgent

    return DQNAgent(cfg.algo, spec, cfg.optimizer, seeds, device)


def _reinforce(cfg: Any, spec: Any, seeds: list[int], device: Any) -> Any:
    from rlexp.algos.reinforce import ReinforceAgent

    return ReinforceAgent(cfg.algo, spec, cfg.optimizer, seeds, device)


def _actor_critic(cfg: Any, spec: Any, seeds: list[int], device: Any) -> Any:
    from rlexp.algos.actor_critic import ActorCriticAgent

    return ActorCriticAgent(cfg.algo, spec, cfg.optimizer, seeds, device)


def _ppo(cfg: Any, spec: Any, seeds: list[int], device: Any) -> Any:
    from rlexp.algos.ppo import PPOAgent

    return PPOAgent(cfg.algo, spec, cfg.optimizer, seeds, device)


def _ddpg(cfg: Any, spec: Any, seeds: list[int], device: Any) -> Any:
    from rlexp.algos.ddpg import DDPGAgent

    return DDPGAgent(cfg.algo, spec, cfg.optimizer, seeds, device)


def _sb3(cfg: Any, spec: Any, seeds: list[int], device: Any) -> Any:
    from rlexp.algos.sb3 import SB3Agent  # SB3 itself is imported only when such a run starts

    return SB3Agent(cfg, spec)


for _name in ("dqn", "dqn_target", "double_dqn", "clipped_double_dqn", "dueling_dqn"):
    register(Algorithm(_name, "off_policy", ("discrete",), _dqn))
for _name in ("reinforce", "reinforce_baseline"):
    register(Algorithm(_name, "on_policy", ("discrete",), _reinforce, vectorized=True))
register(Algorithm("actor_critic", "on_policy", ("discrete",), _actor_critic, vectorized=True))
register(Algorithm("ppo", "on_policy", ("discrete",), _ppo, vectorized=True))
register(Algorithm("ddpg", "off_policy", ("continuous",), _ddpg))
for _name, _spaces in (("sb3_ppo", ("discrete", "continuous")), ("sb3_a2c", ("discrete", "continuous")),
                       ("sb3_dqn", ("discrete",))):
    register(Algorithm(_name, "external", _spaces, _sb3, vectorized=True, batched=False))
