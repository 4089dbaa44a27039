"""The benchmark commands run end to end (tiny budgets) and write their tables."""

from __future__ import annotations

import pytest

from benchmarks import bench_algos


def test_bench_algos_table_and_throughput_sections(tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    bench_algos.main(["--algos", "dqn_target", "ppo", "--seeds", "2", "--jobs", "1", "--throughput",
                      "--throughput-steps", "300", "--throughput-repeats", "1",
                      "--override", "train.max_episodes=3", "algo.hidden=[8]",
                      "--name", "t", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("t-*.md")
    text = out.read_text()
    assert "| dqn_target | CartPole-v1 | 0/2 |" in text and "| ppo | CartPole-v1 | 0/2 |" in text
    assert "## Throughput: rlexp DQN vs Stable-Baselines3 DQN" in text
    assert "## Throughput: rlexp PPO vs Stable-Baselines3 PPO" in text
    assert text.count("ratio rlexp / SB3:") == 2
    assert "versions: python" in text and "command: `python -m benchmarks.bench_algos --algos" in text


def test_bench_algos_refuses_an_unknown_algorithm(tmp_path):
    with pytest.raises(SystemExit, match="unknown --algos nope"):
        bench_algos.main(["--algos", "nope", "--out", str(tmp_path)])


def test_bench_sweep_writes_its_table_after_each_stage(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench_sweep, "RESULTS", tmp_path / "results")
    assert bench_sweep.main(["sweep=dqn_cartpole", "n_trials=2", "seeds=[1]", "eval_seeds=1",
                             "train.max_episodes=3", "algo.hidden=[8]", "algo.learning_starts=10"]) == 0
    (out,) = (tmp_path / "results").glob("sweep-*.md")
    text = out.read_text()
    assert "| pruner | median |" in text and "| no pruner | none |" in text
    assert "| default config |" in text and "Env steps saved by pruning:" in text
