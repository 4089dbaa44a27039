"""The algorithm registry: ``algo.name`` -> how to build and train it, and the algorithm/env check.

Each entry names the action spaces it can act in, the loop that trains it and a ``build``
function turning a typed config into an agent; the algorithm modules are imported only when a run
builds its agent.
"""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlexp.config import Config, ConfigError
from rlexp.envs import EnvSpec, describe


@dataclass(frozen=True)
class Algorithm:
    """A registered algorithm."""

    name: str
    loop: str  # off_policy | on_policy | external
    action_spaces: tuple[str, ...]  # subset of ("discrete", "continuous")
    build: Callable[..., Any]  # (cfg: Config, spec: EnvSpec, seeds: list[int], device) -> agent of len(seeds) members
    vectorized: bool = False  # accepts env.num_envs > 1
    batched: bool = True  # trains several seeds at once (False: one seed per run)


_REGISTRY: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> None:
    _REGISTRY[algo.name] = algo


def get_algorithm(name: str) -> Algorithm:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"algo.name={name!r} is not a registered algorithm; "
                          f"known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)



def check_compatible(cfg: Config) -> EnvSpec:
    """Validate the algorithm/env pairing and the solve threshold; returns the env's spec."""
    spec = describe(cfg.env)
    algo = get_algorithm(cfg.algo.name)
    kind = "discrete" if spec.discrete else "continuous"
    if kind not in algo.action_spaces:
        raise ConfigError(
            f"algo={cfg.algo.name!r} cannot act in env={cfg.env.id!r}: it needs "
            f"{' or '.join(algo.action_spaces)} actions and {cfg.env.id} has {kind} actions"
        )
    if cfg.solve.threshold is None and spec.threshold is None:
        raise ConfigError(
            f"env.id={cfg.env.id!r} registers no reward threshold: set env.threshold or solve.threshold"
        )
    if cfg.env.num_envs > 1 and not algo.vectorized:
        raise ConfigError(f"env.num_envs={cfg.env.num_envs} is not supported by algo={cfg.algo.name!r}; use 1")
    return spec

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
