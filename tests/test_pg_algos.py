"""Policy-gradient, DDPG and SB3 algorithms: every valid pairing runs, every invalid one is refused,
vectorised collection, the tracking contract; learnability and determinism behind ``slow``."""

from __future__ import annotations

import importlib.util
import subprocess

import numpy as np
import pytest
import torch

from rlexp.algos.registry import check_compatible
from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.loops import DivergenceError
from rlexp.tracking import NullTracker
from rlexp.train import train, train_batch

from .conftest import PYTHON, cli_env, pick

HAS_SB3 = importlib.util.find_spec("stable_baselines3") is not None
needs_sb3 = pytest.mark.skipif(not HAS_SB3, reason="stable-baselines3 (extra rlexp[sb3]) not installed")

DISCRETE_ENVS = ["cartpole", "acrobot", "mountaincar"]
ON_POLICY = ["reinforce", "reinforce_baseline", "actor_critic", "ppo",
             "reinforce_seed", "reinforce_baseline_seed", "actor_critic_seed", "ppo_seed"]
SB3 = ["sb3_ppo", "sb3_dqn", "sb3_a2c"]
BASE = ["train.max_steps=300", "tracking.enabled=false", "train.save_model=false"]
# tiny networks and rollouts so that a few hundred steps see several updates
TINY = {
    "reinforce": ["algo.hidden=[8]", "algo.num_envs=1", "algo.min_steps_per_update=1",
                  "algo.episodes_per_update=2"],
    "actor_critic": ["algo.hidden=[8]", "algo.num_envs=1"],
    "ppo": ["algo.hidden=[8]", "algo.num_envs=1", "algo.n_steps=50", "algo.train_pi_iters=3",
            "algo.train_v_iters=3"],
    "ddpg": ["algo.hidden=[8]", "algo.critic_state_hidden=[4]", "algo.critic_action_hidden=[4]",
             "algo.critic_hidden=[8]", "algo.batch_size=16", "algo.learning_starts=50"],
    "sb3_ppo": ["algo.hidden=[8]", "algo.n_steps=16", "algo.batch_size=32", "algo.n_epochs=2"],
    "sb3_dqn": ["algo.hidden=[8]", "algo.learning_starts=50", "algo.train_freq=16", "algo.gradient_steps=2"],
    "sb3_a2c": ["algo.hidden=[8]"],
}


def tiny(algo: str) -> list[str]:
    key = algo.removesuffix("_seed").removesuffix("_baseline")
    return TINY[key]


def run(algo: str, env: str, *extra: str) -> tuple:
    cfg = compose_config([pick(algo), f"env={env}", *BASE, *tiny(algo), *extra])
    tracker = NullTracker()
    return train(cfg, tracker), tracker, cfg


def check_contract(r, tracker, max_steps: int = 300, num_envs: int = 1) -> None:
    assert max_steps <= r.env_steps < max_steps + num_envs
    assert len(r.returns) == r.episodes == len(tracker.metrics.get("episode_return", []))
    if r.episodes:
        assert [v for _, v in tracker.metrics["episode"]] == list(range(1, r.episodes + 1))
        steps = [s for s, _ in tracker.metrics["episode_return"]]  # the env-step axis
        assert steps == sorted(steps) and 0 < steps[-1] <= r.env_steps


@pytest.mark.parametrize("env", DISCRETE_ENVS)
@pytest.mark.parametrize("algo", ON_POLICY)
def test_on_policy_smoke(algo, env):
    # 50-step time limit: whole-episode algorithms see several (truncated) episodes in 300 steps
    r, tracker, _ = run(algo, env, "+env.kwargs.max_episode_steps=50")
    check_contract(r, tracker)
    assert tracker.metrics["train/policy_loss"], "no update in 300 steps"
    steps = [s for s, _ in tracker.metrics["train/policy_loss"]]
    assert steps == sorted(steps) and steps[-1] <= r.env_steps


@pytest.mark.parametrize("algo", ["ddpg"])
def test_ddpg_smoke_on_pendulum(algo):
    r, tracker, _ = run(algo, "pendulum", "train.log_interval=100")
    check_contract(r, tracker)
    assert r.episodes == 1  # Pendulum episodes are 200 steps
    assert tracker.metrics["train/critic_loss"] and tracker.metrics["train/actor_loss"]


def test_ddpg_gaussian_noise_and_bounds():
    from rlexp.algos.ddpg import DDPGAgent
    from rlexp.metrics import Counters

    cfg = compose_config(["algo=ddpg", "env=pendulum", "algo.noise=gaussian", "algo.noise_sigma=10",
                          *tiny("ddpg")])
    agent = DDPGAgent(cfg.algo, check_compatible(cfg), cfg.optimizer, [0], torch.device("cpu"))
    actions = np.array([agent.act(np.zeros((1, 3), np.float32), Counters())[0] for _ in range(200)])
    assert actions.dtype == np.float32 and actions.shape == (200, 1)
    assert actions.min() == -2.0 and actions.max() == 2.0  # huge noise, clipped to the bounds
    with torch.no_grad():  # the initial actor is near the middle of the range (last layer +-3e-3)
        assert agent.actor(torch.randn(1, 64, 3)).abs().max() < 0.5


SB3_PAIRS = [(a, e) for a in SB3 for e in DISCRETE_ENVS] + [("sb3_ppo", "pendulum"), ("sb3_a2c", "pendulum")]


@needs_sb3
@pytest.mark.parametrize(("algo", "env"), SB3_PAIRS)
def test_sb3_smoke(algo, env):
    r, tracker, cfg = run(algo, env)
    check_contract(r, tracker, num_envs=cfg.algo.num_envs)


@needs_sb3
def test_sb3_records_every_episode_in_order_and_logs_its_diagnostics():
    r, tracker, _ = run("sb3_ppo", "cartpole", "train.max_steps=2000")
    lengths = [v for _, v in tracker.metrics["episode_length"]]
    assert r.episodes >= 50 and sum(lengths) <= r.env_steps
    assert sum(lengths) > r.env_steps - 8 * 500  # at most one unfinished episode per env
    assert "train/approx_kl" in tracker.metrics and "train/value_loss" in tracker.metrics


def test_sb3_missing_is_a_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"algo.name='sb3_ppo' needs the optional stable-baselines3"):
        train(compose_config(["algo=sb3_ppo", *BASE]))


# --------------------------------------------------------------------------- refusals
INVALID = ([("ddpg", e) for e in DISCRETE_ENVS] + [(a, "pendulum") for a in ON_POLICY]
           + [("sb3_dqn", "pendulum")])


@pytest.mark.parametrize(("algo", "env"), INVALID)
def test_invalid_pairings_are_refused(algo, env):
    cfg = compose_config([pick(algo), f"env={env}"])
    with pytest.raises(ConfigError, match=rf"algo='{cfg.algo.name}' cannot act in env="):
        check_compatible(cfg)


@pytest.mark.parametrize("args", [["algo=ddpg", "env=cartpole"], ["algo=ppo", "env=pendulum"]])
def test_cli_refuses_a_wrong_action_space_with_one_line(args, tmp_path):
    p = subprocess.run([PYTHON, "-m", "rlexp", *args], cwd=tmp_path, env=cli_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot act in env=" in lines[0], p.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_ddpg_refuses_several_envs():
    with pytest.raises(ConfigError, match="env.num_envs=2 is not supported by algo='ddpg'"):
        check_compatible(compose_config(["algo=ddpg", "env=pendulum", "env.num_envs=2"]))


@pytest.mark.parametrize(("overrides", "message"), [
    (["algo=ppo", "algo.clip_ratio=1.5"], "algo.clip_ratio=1.5 must be in (0, 1)"),
    (["algo=ppo", "algo.n_steps=0"], "algo.n_steps=0 must be >= 1"),
    (["algo=ppo", "algo.target_kl=0"], "algo.target_kl=0.0 must be > 0"),
    (["algo=ppo", "algo.value_target=mc"], "algo.value_target='mc' must be one of reward_to_go, lambda"),
    (["algo=reinforce", "algo.episodes_per_update=0"], "algo.episodes_per_update=0 must be >= 1"),
    (["algo=actor_critic", "algo.reduction=max"], "algo.reduction='max' must be one of sum, mean"),
    (["algo=ddpg", "env=pendulum", "algo.noise=pink"], "algo.noise='pink' must be one of ou, gaussian, none"),
    (["algo=ddpg", "env=pendulum", "algo.tau=0"], "algo.tau=0.0 must be in (0, 1]"),
    (["algo=sb3_ppo", "algo.lr_schedule=cos"], "algo.lr_schedule='cos' must be one of constant, linear"),
])
def test_bad_values_are_refused_naming_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose_config(overrides)
    assert message in str(e.value)


# --------------------------------------------------------------------------- vectorised collection
@pytest.mark.parametrize("algo", ["ppo", "reinforce_baseline", "actor_critic"])
def test_two_envs(algo, tmp_path):
    cfg = compose_config([f"algo={algo}", "env=cartpole", "env.num_envs=2", *BASE, *tiny(algo)])
    tracker = NullTracker()
    r = train(cfg, tracker, workdir=tmp_path)
    check_contract(r, tracker, num_envs=2)
    assert r.env_steps % 2 == 0
    rows = [line.split(",") for line in (tmp_path / "episodes.csv").read_text().splitlines()[1:]]
    env_steps = [int(x[3]) for x in rows]
    assert env_steps == sorted(env_steps) and sum(int(x[2]) for x in rows) <= r.env_steps


def test_algo_num_envs_is_the_default_and_env_num_envs_overrides_it():
    from rlexp.envs import num_envs

    assert num_envs(compose_config(["algo=ppo", "algo.num_envs=4"])) == 4
    assert num_envs(compose_config(["algo=ppo", "algo.num_envs=4", "env.num_envs=2"])) == 2


# --------------------------------------------------------------------------- tracking contract
def test_ppo_logs_its_namespaced_metrics_and_saves_both_networks(tmp_path):
    cfg = compose_config(["algo=ppo", "env=cartpole", *BASE[:2], *tiny("ppo")])
    tracker = NullTracker()
    train(cfg, tracker, workdir=tmp_path)
    for key in ("train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl",
                "train/clip_fraction", "train/pi_iters"):
        assert tracker.metrics[key], key
    assert all(0 <= v <= 3 for _, v in tracker.metrics["train/pi_iters"])
    assert set(torch.load(tmp_path / "model.pt")) == {"actor", "critic"}


def test_kl_early_stop_cuts_the_policy_passes():
    cfg = compose_config(["algo=ppo", "env=cartpole", *BASE, *tiny("ppo"), "algo.train_pi_iters=50",
                          "optimizer.lr=0.05", "algo.target_kl=0.001"])
    tracker = NullTracker()
    train(cfg, tracker)
    assert min(v for _, v in tracker.metrics["train/pi_iters"]) < 50


def test_nan_update_raises_divergence(monkeypatch):
    from rlexp.algos import ppo

    monkeypatch.setattr(ppo.PPOAgent, "update",
                        lambda self, ro, members, c: {"train/policy_loss": np.full(len(members), np.nan)})
    with pytest.raises(DivergenceError, match="train/policy_loss became nan"):
        train(compose_config(["algo=ppo", *BASE, *tiny("ppo")]))


# --------------------------------------------------------------------------- slow: learning, determinism
@pytest.mark.slow
def test_ppo_learns_cartpole():
    """Learnability: default PPO passes 195 over 20 episodes within 300 episodes (2 of 3 seeds, one batch)."""
    cfgs = [compose_config(["algo=ppo", f"seed={seed}", "solve.threshold=195", "solve.window=20",
                            "train.max_episodes=300", "tracking.enabled=false", "train.save_model=false"])
            for seed in range(3)]
    assert sum(r.solved for r in train_batch(cfgs)) >= 2


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "env", "extra"), [
    ("ppo", "cartpole", ["env.num_envs=2"]), ("reinforce_baseline", "cartpole", []),
    ("actor_critic", "cartpole", []), ("ddpg", "pendulum", []),
])
def test_same_seed_same_returns(algo, env, extra):
    ov = [f"algo={algo}", f"env={env}", "train.max_steps=3000", "tracking.enabled=false",
          "train.save_model=false", *extra]
    a, b = train(compose_config([*ov, "seed=3"])), train(compose_config([*ov, "seed=3"]))
    c = train(compose_config([*ov, "seed=4"]))
    assert a.returns == b.returns and len(a.returns) >= 10
    assert a.returns != c.returns


@needs_sb3
@pytest.mark.slow
def test_sb3_same_seed_same_returns():
    ov = ["algo=sb3_ppo", "train.max_steps=3000", "tracking.enabled=false", "train.save_model=false"]
    a, b = train(compose_config([*ov, "seed=3"])), train(compose_config([*ov, "seed=3"]))
    assert a.returns == b.returns and len(a.returns) > 10
