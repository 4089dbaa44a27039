"""Evaluate, watch and load a trained agent: rlexp.eval, rlexp.load_policy, the pyfunc model."""

from __future__ import annotations

import dataclasses
import math

import imageio_ffmpeg
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import rlexp
from rlexp.algos.registry import get_algorithm
from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.eval import EVAL_SEED, EvalArgs, evaluate, main, parse_args, run_eval
from rlexp.policy import Policy, agent_state
from rlexp.train import run, train_batch

# a few hundred steps: enough for learned (not initial) weights, short enough for the fast suite
RUNS = {
    "dqn_target": ["env=cartpole", "algo.hidden=[16]", "algo.learning_starts=50", "algo.batch_size=16"],
    "ppo": ["env=cartpole", "algo.hidden=[8]", "algo.num_envs=1", "algo.n_steps=50", "algo.train_pi_iters=3",
            "algo.train_v_iters=3"],
    "reinforce_baseline": ["env=cartpole", "algo.hidden=[8]", "algo.num_envs=1"],
    "actor_critic": ["env=acrobot", "algo.hidden=[8]", "algo.num_envs=1"],
    "ddpg": ["env=pendulum", "algo.hidden=[8]", "algo.critic_state_hidden=[4]", "algo.critic_action_hidden=[4]",
             "algo.critic_hidden=[8]", "algo.batch_size=16", "algo.learning_starts=50"],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for this module's runs (creating a store's tables takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        MlflowClient(uri).search_experiments()
        yield uri


def _cfg(algo: str, *extra: str):
    return compose_config([f"algo={algo}", *RUNS[algo], "train.max_steps=300", "eval.episodes=2", *extra])


@pytest.mark.parametrize("algo", sorted(RUNS))
def test_eval_at_the_end_equals_eval_of_the_logged_model(algo, store):
    """The end-of-run evaluation (from the live agent) and rlexp.eval (from the MLflow model alone:
    config and weights) play the same greedy episodes; load_policy and the pyfunc model agree."""
    result = run(_cfg(algo))
    client = MlflowClient(store)
    logged = client.get_run(result.run_id).data.metrics
    assert logged["eval/episodes"] == 2
    again = run_eval(EvalArgs(run=result.run_id, episodes=2))
    assert again.metrics()["eval/return_mean"] == logged["eval/return_mean"]
    assert again.metrics()["eval/return_std"] == logged["eval/return_std"]
    assert [m.step for m in client.get_metric_history(result.run_id, "eval/return_mean")] == [result.episodes] * 2

    policy = rlexp.load_policy(result.run_id)
    assert policy.env_id == policy.config.env.id and policy.config.algo.name == algo
    obs = np.random.default_rng(0).normal(size=(5, policy.spec.obs_dim)).astype(np.float32)
    actions = policy.act(obs)
    assert actions.shape == ((5,) if policy.spec.discrete else (5, policy.spec.n_actions))
    assert np.array_equal(policy.act(obs[2]), actions[2])  # one observation, one action
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert np.array_equal(pyfunc.predict(obs), actions)
    assert pyfunc.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, policy.spec.obs_dim)


def test_a_member_of_a_batch_is_loaded_as_itself(monkeypatch):
    """Member k's policy (its saved state, one member rebuilt) acts as member k acts in the batch."""
    cfgs = [_cfg("dqn_target", f"seed={s}", "tracking.enabled=false") for s in (1, 2)]
    agents = []
    registered = get_algorithm("dqn_target")
    monkeypatch.setattr("rlexp.train.get_algorithm", lambda name: dataclasses.replace(
        registered, build=lambda *a: agents.append(registered.build(*a)) or agents[-1]))
    train_batch(cfgs)
    obs = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    greedy = agents[0].greedy(np.stack([obs, obs]))
    for k, c in enumerate(cfgs):
        assert np.array_equal(Policy(c, agent_state(agents[0], k, 2)).act(obs), greedy[k])
    assert not np.array_equal(greedy[0], greedy[1])


def test_evaluation_seeds_and_the_video(tmp_path):
    """Episode j starts from env seed EVAL_SEED + j (none a training env uses); with a video dir the
    first episodes are MP4 files of the episode's frames."""
    import gymnasium as gym

    first = [gym.make("CartPole-v1").reset(seed=EVAL_SEED + j)[0] for j in range(3)]
    seen: list[np.ndarray] = []

    def push_left(obs):
        seen.append(np.asarray(obs))
        return 0

    res = evaluate(push_left, _cfg("dqn_target").env, 3, video_dir=tmp_path / "video", video_episodes=2)
    assert res.returns == [float(n) for n in res.lengths]  # CartPole: +1 per step
    starts = np.cumsum([0, *res.lengths[:-1]])
    assert all(np.array_equal(seen[s], first[j]) for j, s in enumerate(starts))
    videos = sorted(p.name for p in (tmp_path / "video").glob("*.mp4"))
    assert videos == ["eval-episode-0.mp4", "eval-episode-1.mp4"]
    for j in range(2):
        frames, secs = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "video" / videos[j]))
        # RecordVideo keeps the reset frame and one per step; moviepy writes int(duration * fps)
        # frames of a duration summed from 1/fps per frame, which rounds the last one away or not
        assert frames == int(sum([1.0 / 50] * (res.lengths[j] + 1)) * 50) >= res.lengths[j]
        assert math.isclose(secs, frames / 50, abs_tol=0.05)  # CartPole renders at 50 fps


def test_eval_cli_logs_the_video_and_the_metrics(store, capsys):
    result = run(_cfg("dqn_target", "eval.episodes=0"))
    client = MlflowClient(store)
    assert "eval/return_mean" not in client.get_run(result.run_id).data.metrics  # eval.episodes=0: none
    assert main([f"run={result.run_id}", "episodes=3", "video=true"]) == 0
    assert "greedy return" in capsys.readouterr().out
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["eval/episodes"] == 3 and np.isfinite(metrics["eval/return_std"])
    assert [a.path for a in client.list_artifacts(result.run_id, "video")] == ["video/eval-episode-0.mp4"]

    mlflow.set_tracking_uri(store)
    version = mlflow.register_model(f"runs:/{result.run_id}/model", "cartpole-dqn")
    registered = rlexp.load_policy(f"models:/cartpole-dqn/{version.version}")
    obs = np.random.default_rng(2).normal(size=(20, 4)).astype(np.float32)
    assert np.array_equal(registered.act(obs), rlexp.load_policy(result.run_id).act(obs))


def test_eval_refusals(store, capsys):
    for argv, says in ((["run=0123456789abcdef0123456789abcdef"], "run='0123456789abcdef0123456789abcdef'"),
                       (["episodes=3"], "run= is required"),
                       (["run=x", "episodes=0"], "episodes=0 must be >= 1"), (["run=x", "episodes=two"], "episodes='two' must be an integer"),
                       (["run=x", "video=maybe"], "video='maybe' must be true or false"),
                       (["run=x", "speed=3"], "'speed=3' is not an argument")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("rlexp.eval: error: ") and says in err[0], err
    with pytest.raises(ConfigError, match="eval.episodes=-1 must be >= 0"):
        compose_config(["eval.episodes=-1"])
    assert parse_args(["run=abc", "video=TRUE", "video_episodes=2"]).video


def test_sb3_policy_round_trip(store):
    pytest.importorskip("stable_baselines3")
    cfg = compose_config(["algo=sb3_ppo", "env=cartpole", "algo.hidden=[8]", "algo.n_steps=16", "algo.batch_size=16",
                          "algo.n_epochs=1", "algo.num_envs=1", "train.max_steps=64", "eval.episodes=2"])
    result = run(cfg)
    logged = MlflowClient(store).get_run(result.run_id).data.metrics["eval/return_mean"]
    assert run_eval(EvalArgs(run=result.run_id, episodes=2)).metrics()["eval/return_mean"] == logged
    policy = rlexp.load_policy(result.run_id)
    obs = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    expected = policy.agent.model.predict(obs, deterministic=True)[0]
    assert np.array_equal(policy.act(obs), expected)
