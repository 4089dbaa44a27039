"""The analysis on real (tiny) training runs written by the core's API, not on synthetic ones."""

from __future__ import annotations

import pytest
import torch

from analysis.collect import RunQuery, collect
from analysis.report import make_report

from .conftest import new_store

train = pytest.importorskip("rlexp.train", reason="the core's training API is not there yet")
compose = pytest.importorskip("rlexp.compose")

TINY = [
    "train.max_episodes=8",
    "algo.hidden=[16]",
    "algo.learning_starts=50",
    "train.save_model=false",
    "solve.threshold=22",
    "solve.window=3",
]  # a low bar: some seeds solve within 8 episodes


@pytest.fixture(scope="module")
def real_runs(empty_db, tmp_path_factory):
    """2 algos x 3 seeds of real DQN training, a few hundred steps each; (URI, results by run id)."""
    uri = new_store(empty_db, tmp_path_factory.mktemp("real"))
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        results = {}
        for algo in ("dqn", "dueling_dqn"):
            for seed in range(3):
                cfg = compose.compose_config([f"algo={algo}", f"seed={seed}", *TINY])
                r = train.run(cfg, label=algo, group="g-real")
                results[r.run_id] = r
    finally:
        mp.undo()
    return uri, results


def test_collection_reads_what_training_logged(real_runs):
    uri, results = real_runs
    c = collect(RunQuery(experiment="CartPole-v1", groups=["g-real"]), uri)
    assert set(c.runs["run_id"]) == set(results) and c.excluded == {}
    for row in c.runs.itertuples(index=False):
        r = results[row.run_id]
        assert (row.solved, row.episodes, row.env_steps) == (r.solved, r.episodes, r.env_steps)
        assert (row.episodes_to_solve if r.solved else None) == r.episodes_to_solve
        ep = c.episodes[c.episodes["run_id"] == row.run_id]
        assert ep["return"].tolist() == r.returns and ep["env_step"].iloc[-1] == r.env_steps
    assert set(c.runs["cpu"]) == {torch.backends.cpu.get_cpu_capability()}  # where the floats came from


def test_report_on_real_runs(real_runs, tmp_path):
    uri, _ = real_runs
    result = make_report(RunQuery(experiment="CartPole-v1"), tmp_path, tracking_uri=uri, n_permutations=500)
    md = result.paths["markdown"].read_text()
    assert "| algo.dueling | False | True |" in md  # the config difference between the two arms
    assert "dqn has only 3 runs (fewer than 5 seeds)" in md
    cpu = torch.backends.cpu.get_cpu_capability()
    assert (
        f"Runs' CPU instruction sets (`runtime.cpu`; seeded runs reproduce only on the same one): {cpu}" in md
    )
    assert len(result.analyses[0].pairs) == 1 and result.run_id is not None
