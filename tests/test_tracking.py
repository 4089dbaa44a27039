"""The MLflow contract: runs, tags, params, metrics, artifacts and end states; multirun; a real server."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rlexp.compose import compose_config
from rlexp.loops import DivergenceError
from rlexp.parent import ARM_TAG
from rlexp.tracking import ROLE_TAG
from rlexp.train import RunInterrupted, run

from .conftest import PYTHON, cli_env, mlflow_server, sigint_default

SMALL = ["algo.hidden=[16]", "algo.learning_starts=50", "train.log_interval=100"]


def only_run(uri: str, experiment: str = "CartPole-v1"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, runs


def test_run_records_the_contract(mlflow_uri, tmp_path):
    cfg = compose_config(["algo=dqn_target", "seed=5", "train.max_episodes=12", *SMALL])
    result = run(cfg, label="dqn_target", group="g1", workdir=tmp_path / "job")
    client, runs = only_run(mlflow_uri)
    assert len(runs) == 1
    r = runs[0]
    assert r.info.run_id == result.run_id and r.info.status == "FINISHED"
    assert r.info.run_name == "dqn_target-CartPole-v1-s5"
    assert {k: r.data.tags[k] for k in ("algo", "env", "seed", "group")} == {
        "algo": "dqn_target", "env": "CartPole-v1", "seed": "5", "group": "g1"}
    # what the floats depend on besides config and seed: the same seed reproduces only where these match
    assert r.data.tags["runtime.cpu"] == torch.backends.cpu.get_cpu_capability()
    assert r.data.tags["runtime.torch"] == torch.__version__
    assert {"runtime.python", "runtime.numpy", "runtime.gymnasium", "runtime.machine"} <= set(r.data.tags)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    if head.returncode == 0:  # run from a checkout (CI's clean clone is one): the code's commit
        assert r.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert r.data.params["optimizer.lr"] == str(cfg.optimizer.lr)
    assert r.data.params["solve.threshold"] == "475.0"  # the registered threshold in force
    assert r.data.params["algo.target_update_interval"] == str(cfg.algo.target_update_interval)
    m = r.data.metrics
    assert m["solved"] == 0 and m["episodes"] == 12 and m["env_steps"] == result.env_steps
    assert m["sps"] > 0 and m["wall_time_s"] > 0 and "episodes_to_solve" not in m
    hist = sorted(client.get_metric_history(r.info.run_id, "episode_return"), key=lambda h: h.step)
    assert [h.value for h in hist] == result.returns
    # one step axis for every curve, env steps; the episode index is a metric of its own
    episode = sorted(client.get_metric_history(r.info.run_id, "episode"), key=lambda h: h.step)
    assert [h.value for h in episode] == list(range(1, 13)) and [h.step for h in episode] == [h.step for h in hist]
    assert hist[-1].step == result.env_steps
    assert all(h.step > 0 for h in client.get_metric_history(r.info.run_id, "train/loss"))
    assert len(client.get_metric_history(r.info.run_id, "episode_return_mean")) == 12
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"episodes.csv", "config.yaml", "model"} <= arts
    model = {a.path for a in client.list_artifacts(r.info.run_id, "model")}  # an MLflow pyfunc model
    assert {"model/MLmodel", "model/data"} <= model
    assert {a.path for a in client.list_artifacts(r.info.run_id, "model/data/policy")} == {
        "model/data/policy/model.pt", "model/data/policy/config.yaml"}
    csv = Path(client.download_artifacts(r.info.run_id, "episodes.csv", str(tmp_path))).read_text()
    assert csv.splitlines()[0] == "episode,return,length,env_step,wall_time_s" and len(csv.splitlines()) == 13


def test_solved_run_logs_episodes_to_solve(mlflow_uri):
    cfg = compose_config(["solve.threshold=5", "solve.window=4", *SMALL])
    result = run(cfg)
    _, runs = only_run(mlflow_uri)
    assert runs[0].data.metrics["episodes_to_solve"] == result.episodes_to_solve == 4
    assert runs[0].data.metrics["solved"] == 1


def test_experiment_defaults_to_env_and_can_be_named(mlflow_uri):
    run(compose_config(["env=acrobot", "train.max_episodes=1", *SMALL]))
    run(compose_config(["tracking.experiment=mine", "train.max_episodes=1", *SMALL]))
    client = MlflowClient(mlflow_uri)
    assert client.get_experiment_by_name("Acrobot-v1") and client.get_experiment_by_name("mine")


def _stop_after(n: int, exc: BaseException):
    def cb(info):
        if info.episode == n:
            raise exc
    return cb


@pytest.mark.parametrize(("exc", "status"), [(KeyboardInterrupt(), "KILLED"), (RunInterrupted("pruned"), "KILLED"),
                                             (RuntimeError("boom"), "FAILED")])
def test_interrupted_or_crashed_run_keeps_what_it_logged(mlflow_uri, exc, status):
    cfg = compose_config(["train.max_episodes=50", *SMALL])
    with pytest.raises(type(exc)):
        run(cfg, callback=_stop_after(6, exc))
    client, runs = only_run(mlflow_uri)
    r = runs[0]
    assert r.info.status == status
    assert len(client.get_metric_history(r.info.run_id, "episode_return")) == 6
    assert r.data.metrics["episodes"] == 6
    assert "episodes.csv" in {a.path for a in client.list_artifacts(r.info.run_id)}
    if status == "FAILED":
        assert r.data.tags["error"] == "RuntimeError: boom"


def test_nan_loss_ends_failed(mlflow_uri, monkeypatch):
    from rlexp.algos import dqn

    monkeypatch.setattr(dqn.DQNAgent, "update_batches", lambda self, b, c: {"train/loss": float("nan")})
    with pytest.raises(DivergenceError):
        run(compose_config(["train.max_steps=2000", *SMALL]))
    _, runs = only_run(mlflow_uri)
    assert runs[0].info.status == "FAILED" and "diverged" in runs[0].data.tags["error"]


def _runs_in(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("CartPole-v1")
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("launcher", ["batch", "basic"])  # joblib: tests/test_cli_exit.py
def test_cli_multirun_one_run_per_seed(tmp_path, launcher):
    args = [PYTHON, "-m", "rlexp", "algo=dueling_dqn", "seed=1,2,3", "train.max_episodes=4", *SMALL]
    if launcher != "batch":
        args.append(f"hydra/launcher={launcher}")
    args.append("-m")
    p = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "locked" not in p.stderr
    runs = [r for r in _runs_in(tmp_path / "mlflow.db") if ROLE_TAG not in r.data.tags]
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2", "3"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["group"] for r in runs}) == 1
    assert {r.info.run_name for r in runs} == {f"dueling_dqn-CartPole-v1-s{s}" for s in (1, 2, 3)}


@pytest.mark.parametrize("launcher", ["batch", "basic"])
def test_cli_multirun_is_one_parent_run_with_the_aggregate(tmp_path, launcher):
    """Two arms (two batches with the batch launcher) under one parent run: children tagged with it,
    the parent holding each arm's seeds solved and median episodes-to-solve, a summary table and the
    children's learning curves."""
    args = [PYTHON, "-m", "rlexp", "algo=dqn,dueling_dqn", "seed=1,2", "train.max_episodes=8", "solve.window=2",
            "solve.threshold=12", *SMALL, f"hydra/launcher={launcher}", "-m"]
    p = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = _runs_in(tmp_path / "mlflow.db")
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "multirun"]
    assert len(parents) == 1
    parent, kids = parents[0], [r for r in runs if r is not parents[0]]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "dqn+dueling_dqn-CartPole-v1-multirun"
    assert len(kids) == 4 and {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in kids} == {parent.info.run_id}
    assert {r.data.tags["group"] for r in kids} == {parent.data.tags["group"]}
    assert {r.info.run_name for r in kids} == {f"{a}-CartPole-v1-s{s}" for a in ("dqn", "dueling_dqn") for s in (1, 2)}
    m = parent.data.metrics
    for algo in ("dqn", "dueling_dqn"):
        arm = [r for r in kids if r.data.tags["algo"] == algo]
        assert len({r.data.tags[ARM_TAG] for r in arm}) == 1 and f"algo={algo} " in arm[0].data.tags[ARM_TAG]
        solved = sorted(r.data.metrics["episodes_to_solve"] for r in arm if "episodes_to_solve" in r.data.metrics)
        assert m[f"algo:{algo}/seeds"] == 2 and m[f"algo:{algo}/seeds_solved"] == len(solved)
        if len(solved) == 2:  # the median of two solve times, no interval from two runs
            assert m[f"algo:{algo}/median_episodes_to_solve"] == (solved[0] + solved[1]) / 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {"summary.md", "learning_curves.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_ctrl_c_on_the_cli_marks_the_run_killed(tmp_path):
    p = subprocess.Popen([PYTHON, "-m", "rlexp", "algo=dqn_target", "train.max_episodes=100000", *SMALL],
                         cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until episodes are being recorded
        csvs = list((tmp_path / "outputs").rglob("episodes.csv")) if (tmp_path / "outputs").exists() else []
        if csvs and len(csvs[0].read_text().splitlines()) > 20:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "KILLED" in err
    runs = _runs_in(tmp_path / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "KILLED"
    assert runs[0].data.metrics["episodes"] >= 20


@pytest.mark.mlflow_server
def test_logs_to_a_real_mlflow_server(tmp_path, monkeypatch):
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts") as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        result = run(compose_config(["train.max_episodes=5", "seed=2", *SMALL]))
        client = MlflowClient(uri)
        r = client.get_run(result.run_id)
        assert r.info.status == "FINISHED" and r.data.metrics["episodes"] == 5
        assert {"episodes.csv", "config.yaml", "model"} <= {a.path for a in client.list_artifacts(result.run_id)}
        assert len(list((tmp_path / "artifacts").rglob("episodes.csv"))) == 1  # stored by the server


def test_parallel_processes_share_one_sqlite_store(tmp_path):
    """Four processes, every metric written at once: no run lost, no 'database is locked'."""
    code = ("import sys; from rlexp.compose import compose_config; from rlexp.train import run; "
            "run(compose_config(['train.max_episodes=25', 'algo.hidden=[16]', 'algo.learning_starts=50', "
            "'seed=' + sys.argv[1]]))")
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", RLEXP_TRACKING_FLUSH_S="0")
    procs = [subprocess.Popen([PYTHON, "-c", code, str(s)], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                              text=True) for s in range(4)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errs
    runs = _runs_in(tmp_path / "mlflow.db")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "episode_return")) == 25


def test_retry_locked_waits_out_what_will_pass_and_raises_the_rest(monkeypatch):
    from rlexp import tracking

    naps: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", naps.append)

    def failing(errors: list[Exception]):
        def fn() -> str:
            if errors:
                raise errors.pop(0)
            return "done"
        return fn

    assert tracking.retry_locked(failing([RuntimeError("database is locked")] * 3)) == "done" and len(naps) == 3
    assert naps[0] < 0.1 <= naps[1] < 0.2 <= naps[2] < 0.4  # from 0.05, doubling, jittered up to 2x
    with pytest.raises(ValueError, match="no such table"):  # not a lock: raised at once
        tracking.retry_locked(failing([ValueError("no such table"), ValueError("locked")]))
    with pytest.raises(RuntimeError, match="locked"):  # the last attempt's error is raised
        tracking.retry_locked(failing([RuntimeError("locked")] * 3), attempts=3)
    naps.clear()
    race = failing([KeyError("duplicate"), KeyError("duplicate")])
    assert tracking.retry_locked(race, attempts=5, when=lambda e: isinstance(e, KeyError), delay=0.5) == "done"
    assert len(naps) == 2 and naps[0] >= 0.5
