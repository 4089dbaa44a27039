"""Every DQN variant runs on every discrete env; determinism; the loop's bookkeeping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rlexp.compose import compose_config
from rlexp.loops import DivergenceError
from rlexp.metrics import episodes_to_solve
from rlexp.tracking import NullTracker
from rlexp.train import train

from .conftest import TINY, pick

DQN_FAMILY = ["dqn", "dqn_target", "double_dqn", "clipped_double_dqn", "dueling_dqn",
              "dqn_seed", "dqn_target_seed", "double_dqn_seed", "clipped_double_dqn_seed", "dueling_dqn_seed"]


@pytest.mark.parametrize("env", ["cartpole", "acrobot", "mountaincar"])
@pytest.mark.parametrize("algo", DQN_FAMILY)
def test_smoke(algo, env):
    cfg = compose_config([pick(algo), f"env={env}", "train.max_steps=300", "algo.learning_starts=50",
                          "algo.batch_size=16", "algo.dueling_hidden=4", *TINY])
    tracker = NullTracker()
    r = train(cfg, tracker)
    assert r.env_steps == 300
    assert len(r.returns) == r.episodes == len(tracker.metrics.get("episode_return", []))
    if r.episodes:
        assert [v for _, v in tracker.metrics["episode"]] == list(range(1, r.episodes + 1))
        # the curves' step axis is env steps: one env, so an episode ends at the sum of the lengths so far
        lengths = [int(v) for _, v in tracker.metrics["episode_length"]]
        assert [s for s, _ in tracker.metrics["episode_return"]] == list(itertools.accumulate(lengths))


def test_episode_budget_and_csv(tmp_path):
    cfg = compose_config(["train.max_episodes=7", *TINY])
    tracker = NullTracker()
    r = train(cfg, tracker, workdir=tmp_path)
    rows = (tmp_path / "episodes.csv").read_text().splitlines()
    assert rows[0] == "episode,return,length,env_step,wall_time_s"
    assert r.episodes == 7 and len(rows) == 8
    lengths = [int(x.split(",")[2]) for x in rows[1:]]
    assert [int(x.split(",")[3]) for x in rows[1:]] == list(np.cumsum(lengths))
    assert r.env_steps == sum(lengths)
    final = {k: v[-1][1] for k, v in tracker.metrics.items()}
    assert final["solved"] == 0.0 and final["episodes"] == 7 and final["env_steps"] == r.env_steps
    assert "episodes_to_solve" not in final


def test_stop_on_solve_with_an_easy_threshold():
    cfg = compose_config(["solve.threshold=5", "solve.window=3", "train.max_episodes=50", *TINY])
    r = train(cfg)
    assert r.solved and r.episodes_to_solve == 3 == r.episodes
    assert r.episodes_to_solve == episodes_to_solve(r.returns, 3, 5)


def test_same_seed_same_returns():
    ov = ["algo=dueling_dqn", "train.max_steps=2500", "algo.learning_starts=200", "algo.hidden=[32]", *TINY[1:]]
    a, b = train(compose_config(ov + ["seed=3"])), train(compose_config(ov + ["seed=3"]))
    c = train(compose_config(ov + ["seed=4"]))
    assert a.returns == b.returns and len(a.returns) > 10
    assert a.returns != c.returns


def test_nan_loss_raises_divergence(monkeypatch):
    from rlexp.algos import dqn

    monkeypatch.setattr(dqn.DQNAgent, "update_batches", lambda self, b, c: {"train/loss": float("nan")})
    cfg = compose_config(["train.max_steps=3000", "algo.learning_starts=10", "train.log_interval=100", *TINY])
    with pytest.raises(DivergenceError, match="train/loss became nan"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dqn_target", "dueling_dqn"])
def test_learns_cartpole(algo):
    """Learnability: the default config passes 195 over 20 episodes within 400 episodes (3 seeds)."""
    solved = 0
    for seed in range(3):
        cfg = compose_config([f"algo={algo}", f"seed={seed}", "solve.threshold=195", "solve.window=20",
                              "train.max_episodes=400", "tracking.enabled=false", "train.save_model=false"])
        solved += train(cfg).solved
    assert solved >= 2
