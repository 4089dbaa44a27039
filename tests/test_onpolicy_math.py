"""Policy-gradient maths against hand computations: reward-to-go, GAE, the clipped objective,
categorical sampling, the member axis (each member's numbers are its own), the on-policy loop's
bootstrapping bookkeeping, and the Ornstein-Uhlenbeck noise statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlexp.algos.ddpg import OUNoise
from rlexp.algos.ppo import clipped_surrogate
from rlexp.config import EnvConfig
from rlexp.envs import EnvBatch
from rlexp.loops import EpisodeRecorder, Members
from rlexp.metrics import Counters
from rlexp.onpolicy import episode_rollouts, step_rollouts
from rlexp.pg import (
    MemberRandom,
    Rollout,
    discounted_returns,
    gae,
    per_member,
    sample_categorical,
    standardize,
    take,
)
from rlexp.tracking import NullTracker


def col(*xs: float) -> torch.Tensor:
    """A [T, 1] float32 column."""
    return torch.tensor(xs, dtype=torch.float32).unsqueeze(1)


# --------------------------------------------------------------------------- reward-to-go
def test_reward_to_go_is_the_seed_example():
    # seed 004, discounted_rewards([1, 1, 1, 1, 1], gamma=0.5) -> [1.9375, 1.875, 1.75, 1.5, 1.]
    end = col(0, 0, 0, 0, 1)
    g = discounted_returns(col(1, 1, 1, 1, 1), col(0, 0, 0, 0, 0), end, end, 0.5)
    assert g.squeeze(1).tolist() == [1.9375, 1.875, 1.75, 1.5, 1.0]


def test_reward_to_go_restarts_at_each_episode():
    # two episodes [1, 2] and [3], gamma 0.5: G = [1 + 0.5 * 2, 2, 3]
    g = discounted_returns(col(1, 2, 3), col(9, 9, 9), col(0, 1, 1), col(0, 1, 1), 0.5)
    assert g.squeeze(1).tolist() == [2.0, 2.0, 3.0]


def test_truncated_reward_to_go_bootstraps_and_terminated_does_not():
    rewards, done = col(1, 1, 1), col(0, 0, 1)
    next_values = col(0, 0, 10)  # V(final obs) = 10
    truncated = discounted_returns(rewards, next_values, col(0, 0, 0), done, 0.5)
    assert truncated.squeeze(1).tolist() == [3.0, 4.0, 6.0]  # 1 + 0.5 * 10 = 6, 1 + 3 = 4, 1 + 2 = 3
    terminated = discounted_returns(rewards, next_values, col(0, 0, 1), done, 0.5)
    assert terminated.squeeze(1).tolist() == [1.75, 1.5, 1.0]


# --------------------------------------------------------------------------- GAE
GAMMA, LAM = 0.9, 0.8  # gamma * lam = 0.72
R, V = col(1, 2, 3), col(0.5, 1.0, 1.5)


def test_gae_over_a_cut_rollout_bootstraps_the_last_step():
    # no episode end: next values are V(s_{t+1}) and, after the last step, V(s_3) = 2
    adv, ret = gae(R, V, col(1.0, 1.5, 2.0), col(0, 0, 0), col(0, 0, 0), GAMMA, LAM)
    # deltas: 1 + .9*1 - .5 = 1.4, 2 + .9*1.5 - 1 = 2.35, 3 + .9*2 - 1.5 = 3.3
    expected = [1.4 + 0.72 * (2.35 + 0.72 * 3.3), 2.35 + 0.72 * 3.3, 3.3]
    assert adv.squeeze(1).tolist() == pytest.approx(expected, rel=1e-6)
    assert (ret - adv).squeeze(1).tolist() == pytest.approx([0.5, 1.0, 1.5])


def test_gae_truncated_episode_bootstraps_from_its_final_observation():
    # episode truncated after step 1: V(final obs) = 4 bootstraps it; step 2 starts a new episode
    adv, _ = gae(R, V, col(1.0, 4.0, 2.0), col(0, 0, 0), col(0, 1, 0), GAMMA, LAM)
    # delta_1 = 2 + .9*4 - 1 = 4.6 and nothing flows back from step 2 across the episode boundary
    assert adv.squeeze(1).tolist() == pytest.approx([1.4 + 0.72 * 4.6, 4.6, 3.3], rel=1e-6)


def test_gae_terminated_episode_does_not_bootstrap():
    adv, ret = gae(R, V, col(1.0, 4.0, 2.0), col(0, 1, 0), col(0, 1, 0), GAMMA, LAM)
    # delta_1 = 2 - 1 = 1: the next value is ignored at a terminal step
    assert adv.squeeze(1).tolist() == pytest.approx([1.4 + 0.72 * 1.0, 1.0, 3.3], rel=1e-6)
    assert ret[1].item() == pytest.approx(2.0)  # the return of a terminal step is its reward


def test_gae_lambda_one_is_reward_to_go_minus_value_and_columns_are_independent():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 1.0]])
    values = torch.tensor([[0.3, 0.1], [0.2, 0.4], [0.7, 0.2]])
    next_values = torch.tensor([[0.2, 0.4], [0.7, 5.0], [0.0, 3.0]])
    term = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    dones = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    adv, ret = gae(rewards, values, next_values, term, dones, 0.5, 1.0)
    g = discounted_returns(rewards, next_values, term, dones, 0.5)
    assert torch.allclose(ret, g) and torch.allclose(adv, g - values)
    # column 1: truncated after step 1 (V = 5), a new episode cut at step 2 (V = 3)
    assert g[:, 1].tolist() == pytest.approx([0 + 0.5 * (2 + 0.5 * 5), 2 + 0.5 * 5, 1 + 0.5 * 3])


def test_standardize_uses_the_population_std():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    z = standardize(x)
    np.testing.assert_allclose(z.numpy(), (x.numpy() - 3.0) / np.std(x.numpy()), rtol=1e-6)


def test_returns_and_advantages_treat_every_member_and_env_on_its_own():
    # (T, K, N) = (4, 3, 2): the result for each (member, env) column is that column's alone
    g = torch.Generator().manual_seed(0)
    r, v, nv = (torch.rand(4, 3, 2, generator=g) for _ in range(3))
    term = (torch.rand(4, 3, 2, generator=g) < 0.2).float()
    done = torch.maximum(term, (torch.rand(4, 3, 2, generator=g) < 0.2).float())
    adv, ret = gae(r, v, nv, term, done, 0.9, 0.8)
    g_all = discounted_returns(r, nv, term, done, 0.9)
    for k in range(3):
        for i in range(2):
            col_ = (r[:, k, i:i + 1], v[:, k, i:i + 1], nv[:, k, i:i + 1], term[:, k, i:i + 1], done[:, k, i:i + 1])
            a1, r1 = gae(*col_, 0.9, 0.8)
            assert torch.equal(adv[:, k, i:i + 1], a1) and torch.equal(ret[:, k, i:i + 1], r1)
            g1 = discounted_returns(col_[0], col_[2], col_[3], col_[4], 0.9)
            assert torch.equal(g_all[:, k, i:i + 1], g1)


def test_standardize_per_member_and_the_member_major_layout():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [10.0, 10.0, 20.0, 20.0]])
    z = standardize(x, dim=-1)
    for k in range(2):
        assert torch.equal(z[k], standardize(x[k]))
    assert z[1].tolist() == pytest.approx([-1.0, -1.0, 1.0, 1.0])
    # (T, K, N) -> (K, T * N), each member's steps time-major: row t * N + i is step t of env i
    ro = torch.arange(2 * 3 * 2).view(2, 3, 2)
    assert per_member(ro)[1].tolist() == [ro[0, 1, 0], ro[0, 1, 1], ro[1, 1, 0], ro[1, 1, 1]]
    obs = torch.arange(2 * 3 * 2 * 4).view(2, 3, 2, 4)
    assert per_member(obs).shape == (3, 4, 4) and torch.equal(per_member(obs)[2, 3], obs[1, 2, 1])


def test_take_gathers_each_members_own_rows():
    x = torch.arange(2 * 5 * 3).view(2, 5, 3)
    idx = torch.tensor([[4, 0], [1, 1]])
    out = take(x, idx)
    assert torch.equal(out[0], x[0, [4, 0]]) and torch.equal(out[1], x[1, [1, 1]])
    assert torch.equal(take(x[..., 0], idx), out[..., 0])


# --------------------------------------------------------------------------- categorical sampling
def test_sample_categorical_is_the_inverse_cdf_of_the_uniforms():
    logits = torch.tensor([0.2, 0.5, 0.3]).log().expand(5, 3)
    u = torch.tensor([0.1, 0.3, 0.69, 0.71, 1.0])  # cdf: 0.2, 0.7, 1.0
    actions, logp = sample_categorical(logits, u)
    assert actions.tolist() == [0, 1, 1, 2, 2]  # u = 1 (cdf rounding below 1) is clamped to the last action
    assert logp.tolist() == pytest.approx(np.log([0.2, 0.5, 0.5, 0.3, 0.3]).tolist(), rel=1e-6)


def test_a_members_random_stream_does_not_depend_on_the_batch():
    alone, batch = MemberRandom([3]), MemberRandom([1, 2, 3])
    for _ in range(3):
        assert torch.equal(alone.uniforms(5)[0], batch.uniforms(5)[2])
    assert torch.equal(alone.permutations(torch.tensor([0]), 8)[0],
                       batch.permutations(torch.tensor([1, 2]), 8)[1])
    assert not torch.equal(batch.uniforms(5)[0], batch.uniforms(5)[1])


# --------------------------------------------------------------------------- the clipped objective
def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([1.5, 0.5, 0.9, 1.3])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    logp = ratio.log().requires_grad_(True)
    loss, clip_frac = clipped_surrogate(logp, torch.zeros(4), adv, 0.2)
    # min(r A, clip(r) A) = [min(1.5, 1.2), min(0.5, 0.8), -0.9, min(-1.3, -1.2)] = [1.2, 0.5, -0.9, -1.3]
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 0.9 - 1.3) / 4)
    assert clip_frac.item() == pytest.approx(0.75)  # |r - 1| > 0.2 for 1.5, 0.5, 1.3
    loss.backward()
    # d loss / d log pi = -A r / n where the unclipped term is the minimum, 0 where the clip binds
    assert logp.grad.tolist() == pytest.approx([0.0, -0.5 / 4, 0.9 / 4, 1.3 / 4], rel=1e-6)
    # over members (K, B): one loss and clip fraction per member, each its own row's
    losses, fracs = clipped_surrogate(torch.stack([ratio.log(), torch.zeros(4)]), torch.zeros(2, 4),
                                      torch.stack([adv, adv]), 0.2)
    assert losses.tolist() == pytest.approx([loss.item(), -(1 + 1 - 1 - 1) / 4]) and fracs.tolist() == [0.75, 0.0]


# --------------------------------------------------------------------------- the loop's bookkeeping
class _Probe:
    """Always pushes left; V(s) = sum(s) so that every value is checkable; keeps each member's rollouts."""

    def __init__(self, size: int) -> None:
        self.rollouts: list[list[Rollout]] = [[] for _ in range(size)]

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        zeros = np.zeros(obs.shape[:-1], np.float32)
        return zeros.astype(np.int64), zeros, self.value(obs)

    def value(self, obs: np.ndarray) -> np.ndarray:
        return obs.sum(axis=-1).astype(np.float32)

    def update(self, ro: Rollout, members: torch.Tensor, counters: Counters) -> dict[str, np.ndarray]:
        for j, k in enumerate(members.tolist()):
            self.rollouts[k].append(Rollout(*(x[:, j] for x in ro)))  # (T, N) of member k
        return {"train/x": np.zeros(len(members))}

    def modules(self):  # pragma: no cover - not used
        return iter(())


def _members(size: int, max_steps: int) -> Members:
    recs = [EpisodeRecorder(window=100, threshold=1e9, max_episodes=10**6, stop_on_solve=False,
                            tracker=NullTracker(), seed=k) for k in range(size)]
    return Members(recs, max_steps, lambda k, status, error: None)


@pytest.mark.parametrize("n_steps", [7, None])
def test_loop_bootstraps_truncations_with_the_final_observation(n_steps):
    # always pushing left ends CartPole in ~9 steps: a 9-step limit mixes truncations and terminations
    env_cfg = EnvConfig(id="CartPole-v1", kwargs={"max_episode_steps": 9})
    envs = EnvBatch(env_cfg, seeds=[0, 10], n=3)
    first = EnvBatch(env_cfg, seeds=[0, 10], n=3).reset()  # what the loop's first rows must hold
    agent, members = _Probe(2), _members(2, 600)
    if n_steps is not None:
        c = step_rollouts(agent, envs, members, n_steps)
    else:
        c = episode_rollouts(agent, envs, members, n_episodes=2)
    envs.close()
    assert c.step == 600 and not members.active
    for k, rollouts in enumerate(agent.rollouts):
        ro = Rollout(*(torch.cat(parts) for parts in zip(*rollouts, strict=True)))  # contiguous in time
        trunc = (ro.dones > 0) & (ro.terminated == 0)
        assert trunc.any() and (ro.terminated > 0).any()
        # within an episode the next value is the next row's value (same env)
        same = ro.dones[:-1] == 0
        assert torch.equal(ro.next_values[:-1][same], ro.values[1:][same])
        # at a truncation it is V(final obs), not V of the next episode's first observation
        assert (ro.next_values[trunc] != 0).all()
        if n_steps is not None:
            assert (ro.next_values[:-1][trunc[:-1]] != ro.values[1:][trunc[:-1]]).all()
            assert torch.equal(ro.obs[0], torch.from_numpy(first[k]))
        # every finished episode was recorded once, numbered in finishing order
        rec = members.recs[k]
        assert rec.episodes == c.episodes[k] >= sum(int(r.dones.sum()) for r in rollouts)
        numbers = [v for _, v in rec.tracker.metrics["episode"]]
        assert numbers == list(range(1, rec.episodes + 1))
        assert [s for s, _ in rec.tracker.metrics["train/x"]] == sorted({s for s, _ in rec.tracker.metrics["train/x"]})
        if n_steps is None:  # whole episodes: every rollout ends on an episode boundary, none is cut
            assert all(r.dones[-1].item() == 1.0 for r in rollouts)
            assert all(int(r.dones.sum()) >= 2 for r in rollouts)
            lengths = [v for _, v in rec.tracker.metrics["episode_length"]]
            assert sum(len(r.rewards) for r in rollouts) <= sum(lengths)
    # the two members saw different episodes (their envs have their own seeds)
    assert members.recs[0].returns != members.recs[1].returns


def test_episode_budget_ends_a_member_and_the_others_go_on():
    envs = EnvBatch(EnvConfig(id="CartPole-v1"), seeds=[0, 1], n=2)
    agent, members = _Probe(2), _members(2, 10**6)
    members.recs[0].max_episodes = 3
    members.recs[1].max_episodes = 7
    ended: list[tuple[int, int]] = []
    members.on_end = lambda k, status, error: ended.append((k, members.step))
    c = episode_rollouts(agent, envs, members)
    envs.close()
    # member 0 stops at exactly 3 episodes, even when two of its envs end in the same step
    assert [r.episodes for r in members.recs] == [3, 7] == c.episodes.tolist()
    assert [k for k, _ in ended] == [0, 1] and ended[0][1] < ended[1][1] == c.step
    assert ended[0][1] == members.recs[0].env_steps  # a member's steps: up to its last episode


# --------------------------------------------------------------------------- Ornstein-Uhlenbeck noise
def _ou_run(theta: float, sigma: float, dt: float, steps: int, size: int, x0: float = 0.0) -> np.ndarray:
    ou = OUNoise(size, sigma, theta, dt, np.random.default_rng(0), x0=np.full(size, x0))
    return np.stack([ou().copy() for _ in range(steps)])


def test_ou_mean_reverts_geometrically():
    theta, dt = 0.15, 1e-2
    xs = _ou_run(theta, 0.2, dt, 1000, 4000, x0=1.0)  # 4000 independent processes from x0 = 1
    a = 1 - theta * dt
    for t in (100, 500, 1000):
        assert xs[t - 1].mean() == pytest.approx(a ** t, abs=0.02)  # E[x_t] = a^t x0
        var_t = 0.2**2 * dt * (1 - a ** (2 * t)) / (1 - a**2)
        assert xs[t - 1].std() == pytest.approx(math.sqrt(var_t), rel=0.05)


def test_ou_stationary_std_is_sigma_over_sqrt_theta_times_two_minus_theta_dt():
    # seed values: sigma / sqrt(theta (2 - theta dt)) = 0.3652, ~sigma / sqrt(2 theta) for small dt
    ou = OUNoise(1, 0.2, 0.15, 1e-2, np.random.default_rng(0))
    assert ou.stationary_std() == pytest.approx(0.2 / math.sqrt(0.15 * (2 - 0.15e-2)))
    assert ou.stationary_std() == pytest.approx(0.2 / math.sqrt(2 * 0.15), rel=1e-3)
    xs = _ou_run(0.15, 0.2, 1e-2, 20_000, 200)[5_000:]  # burn-in: a^5000 ~ 5e-4
    assert xs.std() == pytest.approx(ou.stationary_std(), rel=0.04)
    assert abs(xs.mean()) < 0.05


def test_ou_discretised_formula_not_the_continuous_one_for_a_coarse_step():
    # theta dt = 0.5: the discretised std sigma / sqrt(0.75) = 1.155 sigma, not sigma / sqrt(2 theta) = sigma
    ou = OUNoise(1, 1.0, 0.5, 1.0, np.random.default_rng(0))
    xs = _ou_run(0.5, 1.0, 1.0, 5_000, 100)[100:]
    assert xs.std() == pytest.approx(ou.stationary_std(), rel=0.02)
    assert ou.stationary_std() == pytest.approx(1 / math.sqrt(0.75))
    assert abs(xs.std() - 1.0) > 0.1


def test_ou_reset_returns_to_the_start():
    ou = OUNoise(2, 0.2, 0.15, 1e-2, np.random.default_rng(0))
    for _ in range(10):
        ou()
    assert np.abs(ou.x).sum() > 0
    ou.reset()
    assert np.array_equal(ou.x, np.zeros(2))
