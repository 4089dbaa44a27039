"""Environment construction and the checks that run before any training starts."""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rlexp.config import Config, ConfigError, EnvConfig


@dataclass(frozen=True)
class EnvSpec:
    """What an algorithm needs to know about an environment to build its networks."""

    id: str
    obs_dim: int
    discrete: bool
    n_actions: int  # discrete: number of actions; continuous: action dimension
    action_low: np.ndarray | None  # continuous only
    action_high: np.ndarray | None
    threshold: float | None  # registered or configured solve threshold


def registered_threshold(env_id: str) -> float | None:
    """The env's registered ``reward_threshold``; ConfigError for an unknown id. In gymnasium's
    ``module:EnvId`` form, ``module`` is imported first (it registers the env), as ``gym.make`` does."""
    module, sep, name = env_id.partition(":")
    if sep:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ConfigError(f"env.id={env_id!r}: importing {module!r} failed ({type(e).__name__}: {e}); "
                              "it must be installed or in the working directory") from None
    try:
        spec = gym.spec(name if sep else env_id)
    except gym.error.Error as e:
        raise ConfigError(f"env.id={env_id!r} is not a registered gymnasium environment ({e})") from None
    return spec.reward_threshold


def missing_dependency(env_id: str, e: Exception) -> str:
    """One line for an env whose optional dependency is missing: the env and the pip extra
    (gymnasium names it in its message: ``gymnasium[box2d]``, ``gymnasium[mujoco]``)."""
    m = re.search(r"gymnasium\[[\w-]+\]", str(e))
    extra = m.group(0) if m else None
    what = str(e).split(",")[0].split(". ")[0].rstrip(".") or type(e).__name__
    todo = f'pip install "{extra}"' if extra else "install the package it names"
    return f"env.id={env_id!r} needs an optional dependency: {what}; {todo}"


class EnvBatch:
    """The environments of K members, ``n`` each; every env is its own gymnasium env with its own
    random generator, so a member's episodes depend on its seed only.

    Member ``k``'s env ``i`` is seeded with ``seeds[k] + i`` at the first reset. Same-step autoreset:
    the step that ends an episode returns the next episode's first observation in ``obs`` and the
    true last one in ``next_obs``, so every step is a real transition and a truncated one can be
    bootstrapped. Only the envs of the members given to :meth:`step` move.
    """

    def __init__(self, cfg: EnvConfig, seeds: Sequence[int], n: int = 1) -> None:
        self.seeds, self.n = [int(s) for s in seeds], n
        self.envs = [[gym.make(cfg.id, **cfg.kwargs) for _ in range(n)] for _ in self.seeds]
        for seed, member in zip(self.seeds, self.envs, strict=True):
            for i, env in enumerate(member):
                env.action_space.seed(seed + i)
        self.obs: np.ndarray = np.zeros(0, dtype=np.float32)

    def reset(self) -> np.ndarray:
        """Every env's first observation, ``(K, n, obs_dim)``."""
        self.obs = np.stack([np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(member)])
                             for seed, member in zip(self.seeds, self.envs, strict=True)]).astype(np.float32)
        return self.obs.copy()

    def step(self, actions: np.ndarray, members: Sequence[int]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step the envs of ``members`` with ``actions`` (``(K, n, ...)``); returns ``obs`` (after
        autoreset), ``next_obs`` (the true next states), ``rewards``, ``terminated``, ``truncated``,
        each ``(K, n, ...)``; the other members' entries are zeros and their ``obs`` unchanged."""
        k = len(self.envs)
        next_obs = np.zeros_like(self.obs)
        rewards = np.zeros((k, self.n), dtype=np.float32)
        terminated = np.zeros((k, self.n), dtype=bool)
        truncated = np.zeros((k, self.n), dtype=bool)
        for m in members:
            for i, env in enumerate(self.envs[m]):
                o, r, te, tr, _ = env.step(actions[m, i])
                next_obs[m, i], rewards[m, i], terminated[m, i], truncated[m, i] = o, r, te, tr
                self.obs[m, i] = env.reset()[0] if te or tr else o
        return self.obs.copy(), next_obs, rewards, terminated, truncated

    def close(self) -> None:
        for member in self.envs:
            for env in member:
                env.close()


def describe(cfg: EnvConfig) -> EnvSpec:
    """Build the env once to read its spaces; refuses spaces rlexp cannot handle."""
    registered = registered_threshold(cfg.id)
    try:
        env = gym.make(cfg.id, **cfg.kwargs)
    except TypeError as e:
        raise ConfigError(f"env.kwargs={dict(cfg.kwargs)!r} rejected by {cfg.id}: {e}") from None
    except gym.error.DependencyNotInstalled as e:
        raise ConfigError(missing_dependency(cfg.id, e)) from None
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(f"env.id={cfg.id!r} has observation space {obs_space}; rlexp needs a flat Box")
    threshold = cfg.threshold if cfg.threshold is not None else registered
    if isinstance(act_space, gym.spaces.Discrete):
        return EnvSpec(cfg.id, int(obs_space.shape[0]), True, int(act_space.n), None, None, threshold)
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return EnvSpec(cfg.id, int(obs_space.shape[0]), False, int(act_space.shape[0]),
                       act_space.low.astype(np.float32), act_space.high.astype(np.float32), threshold)
    raise ConfigError(f"env.id={cfg.id!r} has action space {act_space}; rlexp handles Discrete and 1-D Box")


def solve_threshold(cfg: Config, spec: EnvSpec) -> float:
    """solve.threshold, else the env config's, else the registered one (checked to exist)."""
    if cfg.solve.threshold is not None:
        return float(cfg.solve.threshold)
    assert spec.threshold is not None
    return float(spec.threshold)


def num_envs(cfg: Config) -> int:
    """Envs per member: ``env.num_envs`` when above 1, else the algorithm's tuned ``num_envs``."""
    return cfg.env.num_envs if cfg.env.num_envs > 1 else int(getattr(cfg.algo, "num_envs", 1))
