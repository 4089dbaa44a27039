"""Environment construction and the checks that run before any training starts."""

from __future__ import annotations

import re
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
    """The env's registered ``reward_threshold``; ConfigError for an unknown id."""
    try:
        spec = gym.spec(env_id)
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


def make_env(cfg: EnvConfig, seed: int | None = None) -> gym.Env:
    """One environment, episode statistics recorded by the loop (not a wrapper)."""
    env = gym.make(cfg.id, **cfg.kwargs)
    if seed is not None:
        env.action_space.seed(seed)
    return env


def make_vector_env(cfg: EnvConfig, seed: int, num_envs: int | None = None) -> gym.vector.VectorEnv:
    """``num_envs`` (default ``cfg.num_envs``) copies behind gymnasium's vector API.

    Same-step autoreset: the step that ends an episode already returns the next episode's first
    observation; the last one is in ``info["final_obs"][i]`` (masked by ``info["_final_obs"]``),
    so every step the env takes is a real transition and a truncated one can be bootstrapped.
    Sub-env ``i`` is seeded with ``seed + i`` by the first ``reset(seed=seed)``.
    """
    n = cfg.num_envs if num_envs is None else num_envs
    fns = [lambda: gym.make(cfg.id, **cfg.kwargs) for _ in range(n)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if cfg.vectorization == "async":
        envs: gym.vector.VectorEnv = gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
    else:
        envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    envs.action_space.seed(seed)
    return envs


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


def check_compatible(cfg: Config) -> EnvSpec:
    """Validate the algorithm/env pairing and the solve threshold; returns the env's spec."""
    from rlexp.algos import get_algorithm  # local: algos import this module

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


def solve_threshold(cfg: Config, spec: EnvSpec) -> float:
    """solve.threshold, else the env config's, else the registered one (checked to exist)."""
    if cfg.solve.threshold is not None:
        return float(cfg.solve.threshold)
    assert spec.threshold is not None
    return float(spec.threshold)
