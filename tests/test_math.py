"""The formulas against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlexp.algos.dqn import QNetwork, td_target
from rlexp.buffer import Batch, ReplayBuffer
from rlexp.compose import compose_config
from rlexp.config import DQNConfig, ExplorationConfig
from rlexp.metrics import SolveTracker, episodes_to_solve, rolling_mean
from rlexp.schedules import epsilon


# ----------------------------------------------------------------------------- solve criterion
@pytest.mark.parametrize(("returns", "window", "threshold", "expected"), [
    ([1, 2, 3, 4], 2, 3.5, 4),          # means 1.5, 2.5, 3.5 -> first at episode 4
    ([5, 5, 5], 3, 5.0, 3),             # needs a full window: solved at episode 3, not 1
    ([10, 10], 3, 1.0, None),           # fewer episodes than the window: never solved
    ([0, 10, 0, 10, 10], 2, 10.0, 5),   # a single high episode is not enough
    ([3, 1, 2], 1, 3.0, 1),             # window 1: the first episode at the threshold
    ([1, 1, 1, 1], 2, 2.0, None),
])
def test_episodes_to_solve(returns, window, threshold, expected):
    assert episodes_to_solve(returns, window, threshold) == expected
    t = SolveTracker(window, threshold)
    for r in returns:
        t.add(r)
    assert t.solved_at == expected


def test_solve_tracker_matches_pure_function_on_random_sequences():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = rng.integers(0, 10, size=rng.integers(1, 40)).tolist()
        w, thr = int(rng.integers(1, 8)), float(rng.integers(2, 8))
        t = SolveTracker(w, thr)
        means = [t.add(x) for x in r]
        assert t.solved_at == episodes_to_solve(r, w, thr)
        np.testing.assert_allclose(means, rolling_mean(r, w))


def test_rolling_mean_by_hand():
    np.testing.assert_allclose(rolling_mean([2, 4, 6, 8], 2), [2, 3, 5, 7])


# ----------------------------------------------------------------------------- exploration
def test_linear_schedule():
    c = ExplorationConfig(schedule="linear", start=1.0, end=0.1, steps=100)
    assert epsilon(c, 0, 0, 0) == 1.0
    assert epsilon(c, 50, 3, 7) == pytest.approx(0.55)
    assert epsilon(c, 100, 0, 0) == pytest.approx(0.1)
    assert epsilon(c, 10_000, 0, 0) == pytest.approx(0.1)


def test_exponential_schedule_per_episode():
    c = ExplorationConfig(schedule="exponential", start=1.0, end=0.01, rate=0.01)
    assert epsilon(c, 999, 0, 999) == pytest.approx(1.0)
    assert epsilon(c, 0, 100, 0) == pytest.approx(0.01 + 0.99 * math.exp(-1.0))


def test_multiplicative_schedule_per_update():
    c = ExplorationConfig(schedule="multiplicative", start=1.0, end=0.005, factor=0.999)
    assert epsilon(c, 10**6, 10**6, 1000) == pytest.approx(0.999**1000)
    assert epsilon(c, 0, 0, 100_000) == 0.005


# ----------------------------------------------------------------------------- TD targets
class Fixed(torch.nn.Module):
    """A 'network' returning fixed Q-values per row, to check targets by hand."""

    def __init__(self, q):
        super().__init__()
        self.q = torch.tensor(q, dtype=torch.float32)

    def forward(self, obs):
        return self.q[: obs.shape[0]]


def batch(rewards, terminated):
    n = len(rewards)
    return Batch(torch.zeros(n, 2), torch.zeros(n, dtype=torch.int64), torch.tensor(rewards, dtype=torch.float32),
                 torch.zeros(n, 2), torch.tensor(terminated, dtype=torch.float32))


def test_plain_target_bootstraps_unless_terminated():
    cfg = DQNConfig(gamma=0.9)
    net = Fixed([[1.0, 3.0], [2.0, 0.5]])
    y = td_target(cfg, batch([1.0, 1.0], [0.0, 1.0]), net, net)
    # row 0 (e.g. truncated): 1 + 0.9 * 3; row 1 terminated: reward only
    assert y.tolist() == pytest.approx([1 + 0.9 * 3, 1.0])


def test_double_target_online_picks_target_evaluates():
    cfg = DQNConfig(gamma=0.5, double=True)
    online = Fixed([[0.0, 9.0]])      # argmax = action 1
    target = Fixed([[7.0, 2.0]])      # evaluates action 1 -> 2, not its own max 7
    assert td_target(cfg, batch([1.0], [0.0]), online, target).item() == pytest.approx(1 + 0.5 * 2)


def test_clipped_target_is_min_of_maxes():
    cfg = DQNConfig(gamma=1.0, clipped=True)
    q1, q2 = Fixed([[1.0, 5.0]]), Fixed([[4.0, 3.0]])
    assert td_target(cfg, batch([0.0], [0.0]), q1, q1, q2).item() == pytest.approx(4.0)


def test_terminal_reward_replaces_reward_on_terminated_steps_only():
    cfg = DQNConfig(gamma=0.5, terminal_reward=-1.0)
    net = Fixed([[2.0, 0.0], [2.0, 0.0]])
    y = td_target(cfg, batch([1.0, 1.0], [1.0, 0.0]), net, net)
    assert y.tolist() == pytest.approx([-1.0, 2.0])


def test_dueling_mean_is_per_state():
    from rlexp.nets import generators

    cfg = DQNConfig(dueling=True, hidden=[4], dueling_hidden=3)
    net = QNetwork(3, 2, cfg, generators([0, 1]))
    obs = torch.randn(2, 5, 3)  # (members, states, obs)
    h = net.trunk(obs)
    v, a = net.value(h), net.advantage(h)
    expected = v + a - a.mean(dim=-1, keepdim=True)
    torch.testing.assert_close(net(obs), expected)
    # per-state mean: Q(s, .) - V(s) averages to zero for every state of every member
    torch.testing.assert_close((net(obs) - v).mean(dim=-1), torch.zeros(2, 5), atol=1e-6, rtol=0)


def test_blending_alpha_moves_prediction_part_way():
    """target_alpha=0.3 regresses on q + 0.3 (y - q): the loss gradient is 0.3x the plain one (MSE)."""
    torch.manual_seed(0)
    grads = {}
    for alpha in (1.0, 0.3):
        cfg = compose_config(["algo=dqn", f"algo.target_alpha={alpha}", "algo.loss=mse", "algo.hidden=[4]",
                              "algo.max_grad_norm=null"])
        from rlexp.algos.dqn import DQNAgent
        from rlexp.envs import describe
        from rlexp.metrics import Counters

        agent = DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, [0], torch.device("cpu"))
        b = Batch(torch.ones(1, 3, 4), torch.tensor([[0, 1, 0]]), torch.ones(1, 3), torch.ones(1, 3, 4),
                  torch.zeros(1, 3))
        w = agent.nets[0].q.layers[0].weight
        agent.optimizers[0].step = lambda *a: None  # keep weights; look at the gradient only
        agent.update_batches([b], Counters())
        grads[alpha] = w.grad.clone()
    torch.testing.assert_close(grads[0.3], 0.3 * grads[1.0])


# ----------------------------------------------------------------------------- replay buffer
def test_replay_buffer_ring_and_sampling():
    buf = ReplayBuffer(3, 2, None, seeds=[0, 1])  # two members
    for i in range(5):
        buf.add(np.full((2, 2), i), np.array([i % 2, 1 - i % 2]), np.array([i, 10 + i], dtype=np.float32),
                np.full((2, 2), i + 1), np.array([i == 4, False]))
    assert buf.size == 3 and buf.pos == 2
    assert sorted(buf.rewards[0].tolist()) == [2.0, 3.0, 4.0]  # the two oldest were overwritten
    assert sorted(buf.rewards[1].tolist()) == [12.0, 13.0, 14.0]
    (b1, b2) = buf.sample(4, 2)
    assert b1.obs.shape == (2, 4, 2) and b1.actions.dtype == torch.int64
    assert set(b1.rewards[0].tolist() + b2.rewards[0].tolist()) <= {2.0, 3.0, 4.0}
    assert set(b1.rewards[1].tolist()) <= {12.0, 13.0, 14.0}  # each member samples its own transitions
    # obs/next_obs/terminated stay aligned per transition
    np.testing.assert_array_equal(b1.next_obs[..., 0].numpy(), b1.obs[..., 0].numpy() + 1)
    assert all(t == (r == 4.0) for t, r in zip(b1.terminated[0].tolist(), b1.rewards[0].tolist(), strict=True))
    # a member's draws come from its own generator: the same alone
    alone = ReplayBuffer(3, 2, None, seeds=[1])
    for i in range(5):
        alone.add(np.full((1, 2), i), np.array([1 - i % 2]), np.array([10 + i], dtype=np.float32),
                  np.full((1, 2), i + 1), np.array([False]))
    assert torch.equal(alone.sample(4, 2)[0].rewards[0], b1.rewards[1])


def test_continuous_actions_are_stored_as_vectors():
    buf = ReplayBuffer(4, 3, 2, seeds=[0])
    buf.add(np.zeros((1, 3)), np.array([[0.5, -1.0]]), np.zeros(1), np.zeros((1, 3)), np.zeros(1))
    assert buf.sample(1)[0].actions.tolist() == [[[0.5, -1.0]]]
