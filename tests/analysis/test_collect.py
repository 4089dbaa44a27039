"""Collection from a temporary MLflow store filled with contract-shaped runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from analysis.collect import (
    EPISODE_COLUMNS,
    RUN_COLUMNS,
    CollectionError,
    RunQuery,
    collect,
    param_differences,
)
from analysis.testing import log_contract_run
from rlexp.tracking import ROLE_TAG

from .conftest import new_store

FAST = [10.0, 20, 30, 40, 50, 60]  # window 3, threshold 30: solved at episode 4, ran on to 6
SLOW = [10.0, 10, 10, 10, 10]  # never solved: censored at 5 episodes
SOLVE = {"threshold": 30.0, "window": 3}


@pytest.fixture(scope="module")
def filled_store(empty_db, tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A store with a mix of runs (read-only for the tests); its URI and a name -> run id map."""
    uri = new_store(empty_db, tmp_path_factory.mktemp("filled"))
    client = MlflowClient(uri)
    exp = client.create_experiment("CartPole-v1")
    other = client.create_experiment("Other")
    ids = {}
    for seed in range(3):
        ids[f"ppo{seed}"] = log_contract_run(
            client, exp, algo="ppo", env="CartPole-v1", seed=seed, returns=FAST, group="g1", **SOLVE
        )
        ids[f"dqn{seed}"] = log_contract_run(
            client,
            exp,
            algo="dqn",
            env="CartPole-v1",
            seed=seed,
            returns=SLOW,
            group="g1",
            params={"optimizer.lr": 3e-4},
            **SOLVE,
        )
    ids["failed"] = log_contract_run(
        client, exp, algo="dqn", env="CartPole-v1", seed=3, returns=SLOW[:2], status="FAILED", **SOLVE
    )
    ids["killed"] = log_contract_run(
        client, exp, algo="ppo", env="CartPole-v1", seed=4, returns=SLOW[:1], status="KILLED", **SOLVE
    )
    ids["sweep"] = log_contract_run(
        client,
        exp,
        algo="ppo",
        env="Acrobot-v1",
        seed=0,
        returns=FAST,
        group="g2",
        tags={"sweep": "s1", "trial": "7"},
        **SOLVE,
    )
    ids["nocsv"] = log_contract_run(
        client,
        exp,
        algo="a2c",
        env="CartPole-v1",
        seed=0,
        returns=FAST,
        group="g3",
        episodes_csv=False,
        **SOLVE,
    )
    ids["legacy"] = log_contract_run(  # recorded before the env-step axis, no episodes.csv
        client, exp, algo="a2c", env="CartPole-v1", seed=1, returns=SLOW, group="g4",
        episodes_csv=False, step_axis="episode", **SOLVE,
    )
    ids["report"] = client.create_run(exp, tags={"report": "1", "algo": "ppo"}).info.run_id
    for holder in ({ROLE_TAG: "multirun"}, {"sweep_role": "study"}, {"sweep_role": "trial"}):
        run = client.create_run(exp, tags={**holder, "algo": "ppo", "env": "CartPole-v1", "group": "g3"})
        client.set_terminated(run.info.run_id)  # FINISHED without episodes: a run of runs, skipped
    ids["elsewhere"] = log_contract_run(
        client, other, algo="ppo", env="CartPole-v1", seed=9, returns=FAST, **SOLVE
    )
    return uri, ids


@pytest.fixture
def store(filled_store, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", filled_store[0])
    return filled_store[0]


@pytest.fixture
def filled(filled_store) -> dict[str, str]:
    return filled_store[1]


def test_collects_finished_runs_into_tidy_tables(filled, store):
    c = collect(RunQuery(experiment="CartPole-v1"))  # URI from MLFLOW_TRACKING_URI
    assert c.tracking_uri == store and c.excluded == {}
    runs = c.runs.set_index("run_id")
    assert set(runs.index) == {
        filled[k]
        for k in ("ppo0", "ppo1", "ppo2", "dqn0", "dqn1", "dqn2", "sweep", "nocsv", "legacy", "failed", "killed")
    }  # no report run, no parent; FAILED and KILLED runs are counted (censored where they stopped)
    assert runs.loc[filled["failed"], "status"] == "FAILED" and runs.loc[filled["failed"], "episodes"] == 2
    assert runs.loc[filled["ppo0"], "budget"] == 6  # train.max_episodes
    finished = collect(RunQuery(experiment="CartPole-v1", statuses=("FINISHED",)), with_episodes=False)
    assert finished.excluded == {"FAILED": 1, "KILLED": 1}
    assert set(RUN_COLUMNS) <= set(c.runs.columns)
    ppo = runs.loc[filled["ppo1"]]
    assert (ppo["algo"], ppo["env"], ppo["seed"], ppo["group"], ppo["solved"]) == (
        "ppo",
        "CartPole-v1",
        1,
        "g1",
        True,
    )
    assert (ppo["episodes_to_solve"], ppo["episodes"]) == (4, 6)
    assert ppo["param.optimizer.lr"] == "0.001" and ppo["param.solve.window"] == "3"
    dqn = runs.loc[filled["dqn0"]]
    assert not dqn["solved"] and math.isnan(dqn["episodes_to_solve"]) and dqn["episodes"] == 5
    sweep = runs.loc[filled["sweep"]]
    assert (sweep["sweep"], sweep["trial"]) == ("s1", 7)
    ep = c.episodes
    assert list(ep.columns) == EPISODE_COLUMNS
    one = ep[ep["run_id"] == filled["dqn2"]]
    assert one["episode"].tolist() == [1, 2, 3, 4, 5] and one["return"].tolist() == SLOW
    assert (one["algo"].unique().tolist(), one["seed"].unique().tolist()) == (["dqn"], [2])
    assert one["env_step"].tolist() == np.cumsum(SLOW).tolist()
    fallback = ep[ep["run_id"] == filled["nocsv"]]  # no episodes.csv: metric histories at step = env step
    assert fallback["episode"].tolist() == [1, 2, 3, 4, 5, 6] and fallback["return"].tolist() == FAST
    assert fallback["env_step"].tolist() == np.cumsum(FAST).tolist()
    legacy = ep[ep["run_id"] == filled["legacy"]]  # metric histories at step = episode
    assert legacy["episode"].tolist() == [1, 2, 3, 4, 5] and legacy["return"].tolist() == SLOW
    assert legacy["env_step"].isna().all()


def test_filters_by_algo_env_group_sweep_tag_status_and_run_ids(filled, store):
    def ids(**kw):
        return set(collect(RunQuery(**kw), store, with_episodes=False).runs["run_id"])

    exp = "CartPole-v1"
    assert ids(experiment=exp, algos=["ppo"]) == {
        filled[k] for k in ("ppo0", "ppo1", "ppo2", "sweep", "killed")
    }
    assert ids(experiment=exp, algos=["ppo", "a2c"], envs=["CartPole-v1"]) == {
        filled[k] for k in ("ppo0", "ppo1", "ppo2", "nocsv", "legacy", "killed")
    }
    assert filled["killed"] not in ids(experiment=exp, algos=["ppo"], exclude_run_ids=[filled["killed"]])
    assert ids(experiment=exp, groups=["g2", "g3"]) == {filled["sweep"], filled["nocsv"]}
    assert ids(experiment=exp, sweeps=["s1"]) == ids(experiment=exp, tags={"trial": "7"}) == {filled["sweep"]}
    assert ids(experiment=exp, algos=["dqn"], statuses=("FINISHED", "FAILED")) == {
        filled[k] for k in ("dqn0", "dqn1", "dqn2", "failed")
    }
    assert ids(run_ids=[filled["ppo0"], filled["elsewhere"]]) == {filled["ppo0"], filled["elsewhere"]}
    assert ids(experiment=exp, run_ids=[filled["ppo0"], filled["report"]]) == {filled["ppo0"]}


def test_unknown_experiment_or_no_match_is_a_one_line_error(filled, store):
    with pytest.raises(CollectionError, match="experiment 'Nope' not found"):
        collect(RunQuery(experiment="Nope"), store)
    with pytest.raises(CollectionError, match=r"no runs match .*algos=sac") as e:
        collect(RunQuery(experiment="CartPole-v1", algos=["sac"]), store)
    assert "\n" not in str(e.value)
    with pytest.raises(CollectionError, match="no MLflow database at /"):
        collect(RunQuery(experiment="CartPole-v1"), store.replace("mlflow.db", "missing.db"))
    with pytest.raises(CollectionError, match=r"1 with another status"):
        collect(RunQuery(experiment="CartPole-v1", run_ids=[filled["failed"]], statuses=("FINISHED",)), store)


def test_saves_csvs_and_lists_param_differences(filled, store, tmp_path):
    c = collect(RunQuery(experiment="CartPole-v1", groups=["g1"]), store)
    runs_csv, episodes_csv = c.save(tmp_path / "out")
    assert (
        runs_csv.read_text().startswith("run_id,")
        and len(episodes_csv.read_text().splitlines()) == 1 + 3 * 6 + 3 * 5
    )
    diffs = param_differences(c.runs)
    assert diffs.loc["optimizer.lr", "dqn"] == "0.0003" and diffs.loc["optimizer.lr", "ppo"] == "0.001"
    assert "algo.name" in diffs.index and "seed" not in diffs.index and "algo.gamma" not in diffs.index


def test_a_stale_run_is_named_with_how_to_close_it(empty_db, tmp_path, monkeypatch):
    """A RUNNING run whose process is gone (killed with -9) is listed as stale in the collection
    and the report's verdicts, with the command that closes it."""
    import os
    import socket

    from analysis.collect import RunQuery, collect
    from rlexp.tracking import HOST_TAG, PID_TAG

    uri = new_store(empty_db, tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("CartPole-v1")
    for seed in range(2):
        log_contract_run(client, exp, algo="ppo", env="CartPole-v1", seed=seed, returns=FAST, **SOLVE)
    dead = client.create_run(exp, tags={"algo": "ppo", "env": "CartPole-v1", "seed": "9",
                                        HOST_TAG: socket.gethostname(), PID_TAG: "999999999"})
    alive = client.create_run(exp, tags={"algo": "ppo", "env": "CartPole-v1", "seed": "8",
                                         HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})
    c = collect(RunQuery(experiment="CartPole-v1"), uri)
    assert set(c.stale) == {dead.info.run_id}  # the live one is not
    assert alive.info.run_id not in c.stale and "999999999" in c.stale[dead.info.run_id]
