"""docs/extending.md's recipe for a new algorithm, followed step by step for a small one: linear
Q-learning (a Q-function linear in the observation, one TD(0) step per minibatch, fixed epsilon).

The steps are done the way the recipe says, against a copy of ``conf/`` (so the checkout is left as
it is): a schema added to ``ALGO_SCHEMAS``, a ``conf/algo/<name>.yaml`` that sets values only, a module
that implements the off-policy loop's protocol over a member axis, one ``register`` line. The new
algorithm must then compose, be refused where it cannot act, train a batch of seeds with each member
independent of the batch, and end tracked with its metrics.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import rlexp.compose
from rlexp.algos import registry
from rlexp.buffer import Batch
from rlexp.config import ALGO_SCHEMAS, ConfigError, OffPolicyConfig, OptimizerConfig, _check
from rlexp.envs import EnvSpec
from rlexp.metrics import Counters, Metrics
from rlexp.nets import MLP, generators
from rlexp.optim import StackedOptimizer


# --------------------------------------------------------------------------- 1. schema
@dataclass
class LinearQConfig(OffPolicyConfig):
    """Linear Q-learning."""

    epsilon: float = 0.1  # probability of a uniformly random action, in [0, 1]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.epsilon <= 1.0, "algo.epsilon", self.epsilon, "must be in [0, 1]")


# --------------------------------------------------------------------------- 2. values
YAML = """\
# Linear Q-learning: Q(s, .) linear in the observation, epsilon-greedy with a fixed epsilon
defaults:
  - base_linear_q
name: linear_q
hidden: []
lr: 1.0e-3
epsilon: 0.1
buffer_size: 10000
batch_size: 32
learning_starts: 100
"""


# --------------------------------------------------------------------------- 3. module
class LinearQAgent:
    """K members, each a linear Q-function with its own weights, optimizer state and generator."""

    def __init__(self, cfg: LinearQConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seeds: Sequence[int],
                 device: torch.device) -> None:
        self.cfg, self.size, self.device, self.n_actions = cfg, len(seeds), device, spec.n_actions
        self.rngs = [np.random.default_rng(s + 1) for s in seeds]
        self.q = MLP(spec.obs_dim, cfg.hidden, spec.n_actions, generators(seeds)).to(device)
        self.opt = StackedOptimizer(self.q.parameters(), opt_cfg, self.size)

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """``(K, B, obs_dim)`` -> ``(K, B)`` greedy actions."""
        return self.q(torch.as_tensor(obs, dtype=torch.float32, device=self.device)).argmax(-1).cpu().numpy()

    def act(self, obs: np.ndarray, counters: Counters) -> np.ndarray:
        actions = self.greedy(obs[:, None])[:, 0]
        for k, rng in enumerate(self.rngs):
            if rng.random() < self.cfg.epsilon:
                actions[k] = rng.integers(self.n_actions)
        return actions

    def update_batches(self, batches: Sequence[Batch], counters: Counters) -> Metrics:
        losses = []
        for b in batches:
            with torch.no_grad():
                y = b.rewards + self.cfg.gamma * (1.0 - b.terminated) * self.q(b.next_obs).max(-1).values
            q = self.q(b.obs).gather(-1, b.actions.unsqueeze(-1)).squeeze(-1)
            loss = ((q - y) ** 2).mean(dim=-1)  # (K,): each member's own loss
            self.opt.zero_grad()
            loss.sum().backward()
            self.opt.step()
            losses.append(loss.detach())
        return {"train/loss": torch.stack(losses).mean(0).cpu().numpy()}

    def on_episode_start(self, members: Sequence[int]) -> None:
        pass

    def diagnostics(self) -> Metrics:
        return {"train/epsilon": self.cfg.epsilon}

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "q", self.q


def _build(cfg, spec, seeds, device):
    return LinearQAgent(cfg.algo, spec, cfg.optimizer, seeds, device)


# --------------------------------------------------------------------------- the recipe applied
@pytest.fixture
def linear_q(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(rlexp.compose.CONF_DIR, conf)
    (conf / "algo" / "linear_q.yaml").write_text(YAML)
    monkeypatch.setattr(rlexp.compose, "CONF_DIR", conf)
    monkeypatch.setitem(ALGO_SCHEMAS, "base_linear_q", LinearQConfig)  # step 1
    # step 4: the register line
    monkeypatch.setitem(registry._REGISTRY, "linear_q", registry.Algorithm("linear_q", "off_policy", ("discrete",),
                                                                          _build))
    return conf


def test_the_new_algorithm_composes_with_its_schema(linear_q):
    from rlexp.compose import compose_config, group_options

    assert "linear_q" in group_options("algo")
    cfg = compose_config(["algo=linear_q"])
    assert isinstance(cfg.algo, LinearQConfig) and cfg.algo.name == "linear_q" and cfg.algo.hidden == []
    with pytest.raises(ConfigError, match=r"algo.epsilon=1.5 must be in \[0, 1\]"):
        compose_config(["algo=linear_q", "algo.epsilon=1.5"])
    with pytest.raises(ConfigError, match="algo.epsilonn=0.2 is not a key"):  # the schema refuses an unknown key
        compose_config(["algo=linear_q", "+algo.epsilonn=0.2"])


def test_the_new_algorithm_is_refused_where_it_cannot_act(linear_q):
    from rlexp.compose import preflight

    with pytest.raises(ConfigError, match="algo='linear_q' cannot act in env='Pendulum-v1'"):
        preflight(["algo=linear_q", "env=pendulum"])


def test_the_new_algorithm_trains_a_batch_of_independent_members(linear_q, mlflow_uri):
    from mlflow import MlflowClient

    from rlexp.compose import compose_config
    from rlexp.train import run_batch, train_batch

    base = compose_config(["algo=linear_q", "train.max_steps=600", "train.stop_on_solve=false",
                           "train.max_episodes=100000", "tracking.enabled=false", "train.save_model=false"])
    together = train_batch([dataclasses.replace(base, seed=s) for s in (1, 2)])
    alone = train_batch([dataclasses.replace(base, seed=2)])[0]
    assert together[1].returns == alone.returns  # bit for bit
    assert together[0].returns != together[1].returns
    assert [r.env_steps for r in together] == [600, 600]

    tracked = compose_config(["algo=linear_q", "train.max_episodes=5"])
    results = run_batch([dataclasses.replace(tracked, seed=s) for s in (1, 2)], label="linear_q")
    client = MlflowClient(mlflow_uri)
    for r in results:
        run = client.get_run(r.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["algo.epsilon"] == "0.1"
        assert len(client.get_metric_history(r.run_id, "episode_return")) == 5
