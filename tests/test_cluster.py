"""Beyond one machine: a multirun through hydra-submitit-launcher (submitit's local executor stands in
for SLURM: the same pickled jobs, each in a process of its own), and MLflow as a team server,
``mlflow server`` over PostgreSQL with an artifact root. Start PostgreSQL with
``eval "$(.ci/postgres.sh)"`` (scripts/test.sh and CI do)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rlexp.tracking import PID_TAG, ROLE_TAG

from .conftest import PYTHON, cli_env, mlflow_server

TINY = ["train.max_episodes=3", "algo.hidden=[16]", "algo.learning_starts=50", "train.log_interval=100"]
MLFLOW_PG = os.environ.get("RLEXP_TEST_MLFLOW_POSTGRES_URL")


def runs_of(uri: str, experiment: str) -> tuple[MlflowClient, object, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} at {uri}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "multirun"]
    assert len(parents) == 1
    return client, parents[0], [r for r in runs if r is not parents[0]]


def test_submitit_local_launcher_runs_each_seed_in_its_own_process_under_one_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = subprocess.run([PYTHON, "-m", "rlexp", "algo=dqn", "seed=1,2", *TINY, "hydra/launcher=submitit_local",
                        "hydra.launcher.timeout_min=10", "-m"],
                       cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in p.stdout + p.stderr
    _, parent, kids = runs_of(uri, "CartPole-v1")
    assert sorted(r.data.tags["seed"] for r in kids) == ["1", "2"]
    assert {r.info.status for r in [parent, *kids]} == {"FINISHED"}
    assert {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in kids} == {parent.info.run_id}
    pids = {r.data.tags[PID_TAG] for r in [parent, *kids]}
    assert len(pids) == 3  # the command and two submitit jobs: three processes
    assert parent.data.metrics["seeds"] == 2
    assert len(list(tmp_path.glob("outputs/multirun/*/*/.submitit/*/*_result.pkl"))) == 2


@pytest.mark.mlflow_server
@pytest.mark.postgres
@pytest.mark.skipif(not MLFLOW_PG, reason='RLEXP_TEST_MLFLOW_POSTGRES_URL is unset: run eval "$(.ci/postgres.sh)" first')
def test_multirun_records_to_an_mlflow_server_on_postgresql(tmp_path):
    assert MLFLOW_PG is not None
    experiment = f"cluster-{uuid.uuid4().hex[:8]}"  # the database outlives the test: a fresh experiment
    artifacts = tmp_path / "artifact-root"
    with mlflow_server(MLFLOW_PG, artifacts) as uri:
        p = subprocess.run([PYTHON, "-m", "rlexp", "algo=dqn", "seed=1,2", *TINY, f"tracking.experiment={experiment}",
                            "-m"], cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        client, parent, kids = runs_of(uri, experiment)
        assert len(kids) == 2 and {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in kids} == {parent.info.run_id}
        assert {r.info.status for r in [parent, *kids]} == {"FINISHED"}
        for r in kids:  # the artifacts went through the server into its artifact root
            assert {"episodes.csv", "config.yaml"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
            history = client.get_metric_history(r.info.run_id, "episode")
            assert sorted(m.value for m in history) == [1, 2, 3]
        assert {"summary.md", "learning_curves.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(list(artifacts.rglob("episodes.csv"))) == 2 and len(list(artifacts.rglob("summary.md"))) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # nothing stored locally
