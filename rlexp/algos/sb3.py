"""Stable-Baselines3 PPO, DQN and A2C under rlexp's contract: the library baseline in the same harness.

The SB3 model is built from the typed config (its fields are the constructor's arguments, the rest
in ``algo.kwargs``), seeded with ``seed``, and trained on a vec env of ``num_envs`` copies of
``env.id``. A callback hands every finished episode (SB3's Monitor ``info["episode"]``) to the
episode recorder in finishing order, so episodes-to-solve, ``episodes.csv`` and the tracked metrics
mean what they mean for rlexp's own algorithms, and stops training once the recorder is finished
or ``train.max_steps`` is reached. SB3's ``train/*`` diagnostics go to the same tracker.

SB3 uses its own optimizers (Adam; RMSprop for A2C unless ``use_rms_prop=false``): only
``optimizer.lr`` is read from the optimizer group. ``lr_schedule=linear`` (and ``clip_schedule``
for PPO) decay to 0 over ``algo.n_timesteps``, or over ``train.max_steps`` when it is set.
stable-baselines3 is an optional extra, imported only when such a run starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from torch import nn

from rlexp.config import Config, ConfigError, SB3Config
from rlexp.envs import EnvSpec, num_envs
from rlexp.loops import Members
from rlexp.nets import _ACT
from rlexp.tracking import Tracker

_CLASSES = {"sb3_ppo": "PPO", "sb3_dqn": "DQN", "sb3_a2c": "A2C"}
_NOT_SB3_ARGS = {f.name for f in dataclasses.fields(SB3Config)} | {"clip_schedule"}


def _import_sb3(name: str) -> Any:
    try:
        import stable_baselines3
    except ImportError:
        raise ConfigError(f"algo.name={name!r} needs the optional stable-baselines3 package: "
                          "pip install 'rlexp[sb3]'") from None
    return stable_baselines3


def sb3_kwargs(cfg: Config, horizon: int) -> dict[str, Any]:
    """The SB3 constructor arguments of ``cfg`` (schedules resolved over ``horizon`` steps)."""
    from stable_baselines3.common.utils import LinearSchedule

    a = cfg.algo
    assert isinstance(a, SB3Config) and cfg.optimizer.lr is not None

    def schedule(value: float, kind: str) -> Any:
        return LinearSchedule(value, 0.0, 1.0) if kind == "linear" else value

    kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(a) if f.name not in _NOT_SB3_ARGS}
    if "clip_range" in kw:
        kw["clip_range"] = schedule(kw["clip_range"], getattr(a, "clip_schedule", "constant"))
    policy_kwargs = {"net_arch": list(a.hidden), "activation_fn": _ACT[a.activation]}
    policy_kwargs |= dict(a.kwargs.get("policy_kwargs", {}))
    return {**kw, "learning_rate": schedule(cfg.optimizer.lr, a.lr_schedule), "gamma": a.gamma,
            **{k: v for k, v in a.kwargs.items() if k != "policy_kwargs"}, "policy_kwargs": policy_kwargs}


def _tracker_writer(tracker: Tracker) -> Any:
    from stable_baselines3.common.logger import KVWriter

    class TrackerWriter(KVWriter):
        """Forwards SB3's numeric ``train/*`` records to the run's tracker at the env step."""

        def write(self, key_values: dict[str, Any], key_excluded: Mapping[str, Any], step: int = 0) -> None:
            m = {k: float(v) for k, v in key_values.items()
                 if k.startswith("train/") and isinstance(v, int | float | np.floating | np.integer)}
            if m:
                tracker.log_metrics(m, step=step)

    return TrackerWriter()


def _episode_callback(members: Members) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeCallback(BaseCallback):
        """Records finished episodes in order (env index within a step); stops when the run ends."""

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                ep = info.get("episode")
                if ep is not None and members.active:
                    members.episode(0, ep["r"], int(ep["l"]), self.num_timesteps)
            members.advance(self.num_timesteps)
            return bool(members.active)

    return EpisodeCallback()


class SB3Agent:
    """Builds and trains one SB3 model (one seed: SB3 has no seed axis); ``modules()`` yields its
    policy once trained."""

    def __init__(self, cfg: Config, spec: EnvSpec) -> None:
        self.sb3 = _import_sb3(cfg.algo.name)
        self.model: Any = None

    def make_model(self, cfg: Config, n_envs: int) -> Any:
        """The untrained SB3 model of ``cfg`` on a vec env of ``n_envs`` copies of ``env.id``."""
        from stable_baselines3.common.env_util import make_vec_env

        a = cfg.algo
        assert isinstance(a, SB3Config)
        env_cfg = cfg.env
        venv = make_vec_env(lambda: gym.make(env_cfg.id, **env_cfg.kwargs), n_envs=n_envs, seed=cfg.seed)
        cls = getattr(self.sb3, _CLASSES[a.name])
        self.model = cls("MlpPolicy", venv, seed=cfg.seed, device=cfg.train.device, verbose=0,
                         **sb3_kwargs(cfg, cfg.train.max_steps or a.n_timesteps))
        return self.model

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action for ``(1, B, obs_dim)`` observations: ``(1, B[, act_dim])``."""
        return self.model.predict(obs[0], deterministic=True)[0][None]

    def learn(self, cfg: Config, spec: EnvSpec, members: Members) -> None:
        from stable_baselines3.common.logger import Logger

        a = cfg.algo
        assert isinstance(a, SB3Config)
        horizon = cfg.train.max_steps or a.n_timesteps
        venv = self.make_model(cfg, num_envs(cfg)).get_env()
        self.model.set_logger(Logger(None, [_tracker_writer(members.recs[0].tracker)]))
        try:
            self.model.learn(total_timesteps=horizon, callback=_episode_callback(members))
        finally:
            venv.close()
        members.end_all("FINISHED")

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        if self.model is not None:
            yield "policy", self.model.policy
