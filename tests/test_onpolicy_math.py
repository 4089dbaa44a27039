"""Policy-gradient maths against hand computations: reward-to-go, GAE, the clipped objective,
the on-policy loop's bootstrapping bookkeeping, and the Ornstein-Uhlenbeck noise statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlexp.algos.ddpg import OUNoise
from rlexp.algos.ppo import clipped_surrogate
from rlexp.config import EnvConfig
from rlexp.envs import make_vector_env
from rlexp.loops import Counters, EpisodeRecorder
from rlexp.onpolicy import Rollout, discounted_returns, gae, on_policy_loop, standardize
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


# --------------------------------------------------------------------------- the loop's bookkeeping
class _Probe:
    """Always pushes left; V(s) = sum(s) so that every value is checkable; keeps the rollouts."""

    def __init__(self) -> None:
        self.rollouts: list[Rollout] = []

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros(len(obs), dtype=np.int64), np.zeros(len(obs), np.float32), self.value(obs)

    def value(self, obs: np.ndarray) -> np.ndarray:
        return obs.sum(axis=1).astype(np.float32)

    def update(self, ro: Rollout, counters: Counters) -> dict[str, float]:
        self.rollouts.append(ro)
        return {"train/x": 0.0}

    def modules(self):  # pragma: no cover - not used
        return iter(())


def _recorder() -> EpisodeRecorder:
    return EpisodeRecorder(window=100, threshold=1e9, max_episodes=10**6, stop_on_solve=False,
                           tracker=NullTracker())


@pytest.mark.parametrize("n_steps", [7, None])
def test_loop_bootstraps_truncations_with_the_final_observation(n_steps):
    # always pushing left ends CartPole in ~9 steps: a 9-step limit mixes truncations and terminations
    envs = make_vector_env(EnvConfig(id="CartPole-v1", kwargs={"max_episode_steps": 9}), seed=0, num_envs=3)
    agent, rec = _Probe(), _recorder()
    c = on_policy_loop(agent, envs, rec, seed=0, max_steps=600, n_steps=n_steps, episodes_per_update=2)
    envs.close()
    ro = Rollout(*(torch.cat(parts) for parts in zip(*agent.rollouts, strict=True)))  # contiguous in time
    trunc = (ro.dones > 0) & (ro.terminated == 0)
    assert trunc.any() and (ro.terminated > 0).any()
    # within an episode the next value is the next row's value (same env)
    same = (ro.dones[:-1] == 0)
    assert torch.equal(ro.next_values[:-1][same], ro.values[1:][same])
    # at a truncation it is V(final obs), not V of the next episode's first observation
    assert (ro.next_values[trunc] != 0).all()
    if n_steps is not None:
        assert (ro.next_values[:-1][trunc[:-1]] != ro.values[1:][trunc[:-1]]).all()
    # every finished episode was recorded once, numbered in finishing order
    assert rec.episodes == c.episode >= sum(int(r.dones.sum()) for r in agent.rollouts)
    numbers = [s for s, _ in rec.tracker.metrics["episode_return"]]
    assert numbers == list(range(1, rec.episodes + 1))
    if n_steps is None:  # whole episodes: every rollout ends on an episode boundary, none is cut
        assert all(r.dones[-1].item() == 1.0 for r in agent.rollouts)
        assert all(int(r.dones.sum()) >= 2 for r in agent.rollouts)
        lengths = [v for _, v in rec.tracker.metrics["episode_length"]]
        assert sum(len(r.rewards) for r in agent.rollouts) <= sum(lengths)


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
