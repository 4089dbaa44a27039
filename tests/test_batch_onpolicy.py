"""The on-policy algorithms over a batch of seeds: a member trains bit for bit as it does alone,
members end on their own (solved, budget, diverged), and PPO's KL early stop is per member."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from rlexp.algos.registry import check_compatible
from rlexp.compose import compose_config
from rlexp.config import Config
from rlexp.pg import Rollout, categorical_log_prob
from rlexp.train import TrainResult, train_batch

# tiny networks; a solve bar that some members of seeds 1, 2, 3 pass (at different episodes) and some do not
BASE = ["tracking.enabled=false", "train.max_episodes=15", "solve.window=3"]
TINY = {
    "reinforce": ["algo.hidden=[16]", "algo.episodes_per_update=2", "env.num_envs=2", "solve.threshold=30"],
    "reinforce_baseline": ["algo.hidden=[16]", "algo.episodes_per_update=2", "algo.value_iters=3",
                           "solve.threshold=30"],
    "actor_critic": ["algo.hidden=[16]", "solve.threshold=30"],
    "ppo": ["algo.hidden=[16]", "algo.n_steps=32", "algo.train_pi_iters=4", "algo.train_v_iters=4",
            "solve.threshold=24"],
}


@functools.cache
def compose(algo: str, *extra: str) -> Config:
    return compose_config([f"algo={algo}", *BASE, *TINY[algo], *extra])  # once: it is the slow part


def configs(algo: str, seeds: list[int], *extra: str) -> list[Config]:
    return [dataclasses.replace(compose(algo, *extra), seed=s) for s in seeds]


def run(algo: str, seeds: list[int], tmp: Path, *extra: str) -> tuple[list[TrainResult], list[dict]]:
    dirs = [tmp / f"{algo}-{len(seeds)}-{s}" for s in seeds]
    results = train_batch(configs(algo, seeds, *extra), workdirs=dirs)
    return results, [torch.load(d / "model.pt") for d in dirs]


@pytest.mark.parametrize("algo", list(TINY))
def test_a_member_trains_bit_for_bit_as_it_does_alone(algo, tmp_path):
    batch, batch_models = run(algo, [1, 2, 3], tmp_path)
    (alone,), (alone_model,) = run(algo, [2], tmp_path)
    member = batch[1]
    assert member.returns == alone.returns and member.env_steps == alone.env_steps
    assert member.episodes_to_solve == alone.episodes_to_solve
    for name, state in alone_model.items():  # the same weights at the end, bit for bit
        for key, t in state.items():
            assert torch.equal(batch_models[1][name][key], t), (name, key)
    # the members ended at different episodes (solved or not) and each trained on its own
    assert len({r.episodes for r in batch}) > 1 and any(r.solved for r in batch)
    assert all(r.status == "FINISHED" for r in batch)
    assert batch[0].returns != batch[1].returns != batch[2].returns


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_a_diverged_member_fails_alone_and_the_others_go_on(algo, monkeypatch):
    cls = {"reinforce": "rlexp.algos.reinforce.ReinforceAgent", "ppo": "rlexp.algos.ppo.PPOAgent"}[algo]
    module, name = cls.rsplit(".", 1)
    agent_cls = getattr(__import__(module, fromlist=[name]), name)
    update = agent_cls.update

    def nan_for_member_1(self, ro, members, counters):
        out = update(self, ro, members, counters)
        out["train/policy_loss"] = np.where(members.numpy() == 1, np.nan, out["train/policy_loss"])
        return out

    monkeypatch.setattr(agent_cls, "update", nan_for_member_1)
    results = train_batch(configs(algo, [1, 2, 3], "solve.threshold=1000"))
    assert [r.status for r in results] == ["FINISHED", "FAILED", "FINISHED"]
    assert "train/policy_loss became nan" in (results[1].error or "")
    assert results[1].episodes < 15 == results[0].episodes == results[2].episodes


def test_ppo_kl_early_stop_leaves_the_stopped_members_actor_unchanged():
    from rlexp.algos.ppo import PPOAgent

    cfg = configs("ppo", [0, 1], "algo.n_minibatches=1", "algo.target_kl=0.01")[0]
    agent = PPOAgent(cfg.algo, check_compatible(cfg), cfg.optimizer, [0, 1], torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    T, K = 16, 2
    obs = torch.randn(T, K, 1, 4, generator=g)
    actions = torch.randint(0, 2, (T, K, 1), generator=g)
    with torch.no_grad():
        logp = categorical_log_prob(agent.actor(obs[:, :, 0].transpose(0, 1)), actions[:, :, 0].T).T[:, :, None]
    logp[:, 0] += 1.0  # member 0's policy looks far from the one that collected: approx KL = 1
    zeros = torch.zeros(T, K, 1)
    ro = Rollout(obs, actions, logp, zeros, torch.randn(T, K, 1, generator=g), zeros, zeros, zeros)
    actor = [p.detach().clone() for p in agent.actor.parameters()]
    critic = [p.detach().clone() for p in agent.critic.parameters()]
    metrics = agent.update(ro, torch.tensor([0, 1]), None)  # type: ignore[arg-type]
    for before, p in zip(actor, agent.actor.parameters(), strict=True):
        assert torch.equal(p[0], before[0])  # stopped before its first step
        assert not torch.equal(p[1], before[1])
    for before, p in zip(critic, agent.critic.parameters(), strict=True):
        assert not torch.equal(p[0], before[0]) and not torch.equal(p[1], before[1])
    assert agent.pi_optimizer.steps.tolist() == [0, 4] and agent.v_optimizer.steps.tolist() == [4, 4]
    assert metrics["train/pi_iters"].tolist() == [0, 4]
    assert metrics["train/approx_kl"][0] == pytest.approx(1.0, rel=1e-5)
    assert metrics["train/policy_loss"][0] == 0.0 and np.isfinite(metrics["train/policy_loss"][1])
