"""The seed axis: a member trains the same alone or in a batch, stacked optimizers equal separate
ones, members end on their own, and the launcher batches a multirun's seeds."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rlexp.compose import compose_config
from rlexp.config import ConfigError, OptimizerConfig
from rlexp.nets import MLP, generators, member_state
from rlexp.optim import StackedOptimizer
from rlexp.tracking import ROLE_TAG
from rlexp.train import run_batch, train_batch

from .conftest import PYTHON, ROOT, TINY, cli_env


def _batch(overrides: list[str], seeds: list[int]) -> list:
    base = compose_config(overrides)
    return [dataclasses.replace(base, seed=s) for s in seeds]


# --------------------------------------------------------------------------- independence
@pytest.mark.parametrize("algo", ["dqn", "dqn_target", "double_dqn", "clipped_double_dqn", "dueling_dqn", "ddpg"])
def test_a_member_trains_the_same_alone_and_in_a_batch(algo):
    env = ["env=pendulum", "algo.hidden=[32,32]", "algo.critic_hidden=[32]"] if algo == "ddpg" else []
    ov = [f"algo={algo}", *env, "train.max_steps=700", "train.stop_on_solve=false", "algo.learning_starts=100",
          "algo.batch_size=32", "train.log_interval=100", *TINY]
    if algo != "ddpg":
        ov = [*ov, "algo.hidden=[32,32]"]
    together = train_batch(_batch(ov, [1, 2, 3]))
    alone = train_batch(_batch(ov, [2]))[0]
    assert together[1].returns == alone.returns  # bit for bit
    assert together[0].returns != together[1].returns  # and the members do differ
    assert [r.env_steps for r in together] == [700] * 3


def test_members_end_on_their_own_and_stop_learning():
    """With stop_on_solve and an easy threshold the members solve at different episodes; each
    ends there with its own result, and what it did is what it does alone."""
    ov = ["algo=dqn_target", "solve.threshold=30", "solve.window=5", "train.max_episodes=60",
          "algo.learning_starts=100", "algo.hidden=[32]", "tracking.enabled=false", "train.save_model=false"]
    together = train_batch(_batch(ov, [0, 1, 2, 3]))
    ends = [r.episodes for r in together]
    assert len(set(ends)) > 1, ends
    for seed, r in zip([0, 1, 2, 3], together, strict=True):
        assert r.status == "FINISHED" and r.episodes == len(r.returns)
        alone = train_batch(_batch(ov, [seed]))[0]
        assert alone.returns == r.returns and alone.env_steps == r.env_steps


def test_a_diverging_member_fails_alone(monkeypatch, mlflow_uri):
    """Member 1's loss becomes NaN: its run ends FAILED with the reason; the others finish."""
    from mlflow import MlflowClient

    from rlexp.algos import dqn

    real = dqn.DQNAgent.update_batches

    def poisoned(self, batches, counters):
        out = dict(real(self, batches, counters))
        loss = np.array(out["train/loss"], dtype=float)
        loss[1] = np.nan
        out["train/loss"] = loss
        return out

    monkeypatch.setattr(dqn.DQNAgent, "update_batches", poisoned)
    ov = ["algo=dqn_target", "train.max_episodes=12", "algo.learning_starts=20", "train.log_interval=50",
          "algo.hidden=[16]", "train.save_model=false"]
    results = run_batch(_batch(ov, [5, 6, 7]))
    assert [r.status for r in results] == ["FINISHED", "FAILED", "FINISHED"]
    assert "train/loss became nan" in (results[1].error or "")
    assert results[0].episodes == results[2].episodes == 12 and results[1].episodes < 12
    client = MlflowClient(mlflow_uri)
    runs = {r.run_id: client.get_run(r.run_id) for r in results}
    assert [runs[r.run_id].info.status for r in results] == ["FINISHED", "FAILED", "FINISHED"]
    assert "train/loss became nan" in runs[results[1].run_id].data.tags["error"]
    assert [runs[r.run_id].data.tags["seed"] for r in results] == ["5", "6", "7"]


def test_a_batch_refuses_configs_that_differ_in_more_than_the_seed():
    a = compose_config(["seed=1", *TINY])
    b = compose_config(["seed=2", "algo.lr=0.1", *TINY])
    with pytest.raises(ConfigError, match="differ only in their seed"):
        train_batch([a, b])
    with pytest.raises(ConfigError, match="distinct"):
        train_batch([a, a])


# --------------------------------------------------------------------------- stacked pieces
@pytest.mark.parametrize("opt", [
    {"name": "adam"}, {"name": "adam", "weight_decay": 0.01, "betas": [0.8, 0.99]},
    {"name": "rmsprop"}, {"name": "rmsprop", "momentum": 0.9},
    {"name": "sgd"}, {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.001}])
def test_a_stacked_step_equals_separate_steps_and_torch(opt):
    """K members stepped together equal each stepped alone (bit for bit), and torch.optim's
    optimizer on that member's weights (to float rounding)."""
    cfg = OptimizerConfig(lr=1e-2, **opt)
    seeds = [0, 1, 2]
    net = MLP(3, [8], 2, generators(seeds), "tanh", layer_norm=True)
    alone = [MLP(3, [8], 2, generators([s]), "tanh", layer_norm=True) for s in seeds]
    refs = [MLP(3, [8], 2, generators([s]), "tanh", layer_norm=True) for s in seeds]
    stacked = StackedOptimizer(net.parameters(), cfg, 3, max_grad_norm=0.5)
    singles = [StackedOptimizer(n.parameters(), cfg, 1, max_grad_norm=0.5) for n in alone]
    kw = {"adam": {"betas": tuple(cfg.betas)}, "rmsprop": {"alpha": cfg.alpha, "momentum": cfg.momentum},
          "sgd": {"momentum": cfg.momentum, "nesterov": cfg.nesterov}}[cfg.name]
    cls = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}[cfg.name]
    torch_opts = [cls(r.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **kw) for r in refs]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(3, 16, 3, generator=g)
        stacked.zero_grad()
        net(x).pow(2).mean(dim=(1, 2)).sum().backward()
        stacked.step()
        for k, (n, opt, r, topt) in enumerate(zip(alone, singles, refs, torch_opts, strict=True)):
            opt.zero_grad()
            n(x[k:k + 1]).pow(2).mean().backward()
            opt.step()
            topt.zero_grad()
            r(x[k:k + 1]).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(r.parameters(), 0.5)
            topt.step()
    for k in range(3):
        for (name, a), b, c in zip(member_state(net, k, 3).items(), alone[k].state_dict().values(),
                                   refs[k].state_dict().values(), strict=True):
            assert torch.equal(a, b[0]), name
            assert torch.allclose(a, c[0], rtol=1e-5, atol=1e-6), name


def test_a_step_for_some_members_leaves_the_others_as_they_were():
    net = MLP(3, [4], 1, generators([0, 1, 2]))
    opt = StackedOptimizer(net.parameters(), OptimizerConfig(lr=0.1), 3)
    before = [t.clone() for t in net.parameters()]
    net(torch.ones(3, 2, 3)).sum().backward()
    opt.step(torch.tensor([1]))
    after = list(net.parameters())
    for b, a in zip(before, after, strict=True):
        assert torch.equal(b[0], a[0]) and torch.equal(b[2], a[2]) and not torch.equal(b[1], a[1])
    assert opt.steps.tolist() == [0, 1, 0]


def test_members_are_initialised_from_their_own_seed():
    a = MLP(4, [8], 2, generators([5, 6]))
    b = MLP(4, [8], 2, generators([6]))
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x[1], y[0]) and not torch.equal(x[0], x[1])


def test_an_unknown_device_is_refused_and_cuda_needs_a_gpu():
    with pytest.raises(ConfigError, match="train.device='banana'"):
        compose_config(["train.device=banana"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device='cuda'"):
            train_batch([compose_config(["train.device=cuda", *TINY])])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_trains_on_cuda():
    r = train_batch(_batch(["train.device=cuda", "train.max_steps=300", "algo.learning_starts=50", *TINY], [1, 2]))
    assert all(x.env_steps == 300 for x in r)


# --------------------------------------------------------------------------- the launcher and the CLI
def _cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return subprocess.run([PYTHON, "-m", "rlexp", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_launcher_batches_each_configs_seeds(tmp_path):
    """``algo=dqn,ppo seed=1,2,3 -m``: two batches, six runs, six output folders."""
    from mlflow import MlflowClient

    p = _cli(tmp_path, "algo=dqn,ppo", "seed=1,2,3", "train.max_episodes=3", "algo.hidden=[8]",
             "train.save_model=false", "-m")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "6 jobs locally in 2 batch(es)" in p.stdout + p.stderr  # Hydra's log line
    dirs = sorted(d.name for d in (tmp_path / "sweep").iterdir() if d.is_dir() and not d.name.startswith("parent-"))
    assert dirs == ["0-dqn-1", "1-dqn-2", "2-dqn-3", "3-ppo-1", "4-ppo-2", "5-ppo-3"]
    (summary,) = (tmp_path / "sweep").glob("parent-*/summary.md")  # the parent run's aggregate, kept beside
    for d in dirs:
        assert (tmp_path / "sweep" / d / ".hydra" / "config.yaml").exists()
        assert len((tmp_path / "sweep" / d / "episodes.csv").read_text().splitlines()) == 4
        assert json.loads((tmp_path / "sweep" / d / "rlexp-job.json").read_text())["status"] == "FINISHED"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if ROLE_TAG in r.data.tags]  # one parent for the command's two batches
    runs = [r for r in runs if r is not parent]
    assert sorted((r.data.tags["algo"], r.data.tags["seed"]) for r in runs) == [
        (a, s) for a in ("dqn", "ppo") for s in ("1", "2", "3")]
    assert {r.info.status for r in [parent, *runs]} == {"FINISHED"}
    assert {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in runs} == {parent.info.run_id}


def test_max_batch_caps_a_batch():
    from hydra_plugins.rlexp_batch_launcher.batch_launcher import batches

    jobs = [["algo=dqn", f"seed={s}"] for s in range(5)] + [["algo=ppo", "seed=0"]]
    assert batches(jobs, 16) == [[0, 1, 2, 3, 4], [5]]
    assert batches(jobs, 2) == [[0, 1], [2, 3], [4], [5]]
    assert batches(jobs, 1) == [[i] for i in range(6)]
