"""Checkpoints and resume (issue 27): a resumed run equals the run never interrupted, bit for bit,
its metric history holds each episode once; SIGTERM writes a checkpoint; refusals; atomic writes."""

from __future__ import annotations

import dataclasses
import signal
import subprocess

import pytest
import torch
from mlflow import MlflowClient

from rlexp import checkpoint
from rlexp.compose import compose_config
from rlexp.resume import main as resume_main
from rlexp.resume import resume
from rlexp.train import RunInterrupted, experiment_name, run

from .conftest import PYTHON, ROOT, children_once_training, cli_env, sigint_default

TINY = {
    "dqn_target": ["env=cartpole", "algo.hidden=[16]", "algo.learning_starts=50", "algo.batch_size=16",
                   "train.max_episodes=12"],
    "ppo": ["env=cartpole", "algo.hidden=[8]", "algo.num_envs=2", "algo.n_steps=50", "train.max_episodes=12"],
    "reinforce_baseline": ["env=cartpole", "algo.hidden=[8]", "algo.num_envs=2", "train.max_episodes=12"],
    "ddpg": ["env=pendulum", "algo.hidden=[8]", "algo.critic_state_hidden=[4]", "algo.critic_action_hidden=[4]",
             "algo.critic_hidden=[8]", "algo.batch_size=16", "algo.learning_starts=50", "train.max_episodes=6"],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module's runs (creating a store's tables takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        MlflowClient(uri).search_experiments()
        yield uri


def _cfg(algo: str, *extra: str):
    return compose_config([f"algo={algo}", *TINY[algo], "train.checkpoint_every=2", "eval.episodes=0",
                           "train.save_model=false", "train.log_interval=50", *extra])


def _killed_at(cfg, episode: int) -> str:
    """Run ``cfg`` and crash it (RunInterrupted, not a signal: no checkpoint at the end) at ``episode``."""
    def crash(info):
        if info.episode == episode:
            raise RunInterrupted("crash")

    with pytest.raises(RunInterrupted):
        run(cfg, callback=crash, tags={"test_kill": "yes"})
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.test_kill = 'yes'", order_by=["start_time DESC"], max_results=1)
    assert runs[0].info.status == "KILLED"
    return runs[0].info.run_id


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize("algo", sorted(TINY))
def test_resume_equals_the_run_never_interrupted(algo, store):
    """Crash after the last checkpoint, resume: the same returns as the uninterrupted run, and the
    episodes logged between the checkpoint and the crash are in the history once."""
    cfg = _cfg(algo)
    whole = run(cfg)
    n = cfg.train.max_episodes
    run_id = _killed_at(cfg, n - 1)  # the last checkpoint was at an even episode before it
    client = MlflowClient(store)
    [saved] = [a.path for a in client.list_artifacts(run_id, checkpoint.ARTIFACT_DIR)]  # the last one only
    assert 2 <= int(saved.split("-")[1].removesuffix(".pt")) < n - 1  # on-policy: at a rollout's end
    resumed = resume(run_id)
    assert resumed.status == "FINISHED" and resumed.run_id == run_id
    assert resumed.returns == whole.returns and resumed.env_steps == whole.env_steps
    for key in ("episode_return", "episode_length", "train/loss", "train/value_loss"):
        assert _history(client, run_id, key) == _history(client, whole.run_id, key), key
    assert [s for s, _ in _history(client, run_id, "episode_return")] == [
        s for s, _ in _history(client, whole.run_id, "episode_return")]  # each episode once
    assert client.get_run(run_id).info.status == "FINISHED"


def test_refusals(store, capsys, tmp_path):
    cfg = _cfg("dqn_target")
    finished = run(cfg).run_id
    killed = _killed_at(cfg, 5)
    client = MlflowClient(store)
    # a checkpoint whose config no longer validates, newer than the good one
    state = checkpoint.load_latest(client, killed)
    assert state is not None
    state["config"]["algo"]["gamma"] = 2.0
    bad = tmp_path / checkpoint.file_name(99)
    torch.save(state, bad)
    client.log_artifact(killed, str(bad), checkpoint.ARTIFACT_DIR)
    for argv, says in ((["resume=" + finished], "the run is FINISHED"),
                       (["resume=0123456789abcdef0123456789abcdef"], "no such run"),
                       (["resume=" + killed], "its config no longer validates: algo.gamma=2.0 must be in (0, 1]"),
                       (["resume=" + killed, "seed=3"], "resume= takes one run id and nothing else")):
        assert resume_main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("rlexp: error: resume") and says in err[0], err


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch, store):
    """A crash inside the write leaves the previous file; a truncated upload is skipped for the previous."""
    path = tmp_path / "ckpt.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "n": 1}, path)
    real_save = torch.save

    def dies_halfway(obj, f):
        real_save(obj, f)
        f.truncate(10)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "n": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["n"] == 1 and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]

    killed = _killed_at(_cfg("dqn_target"), 9)
    client = MlflowClient(store)
    good = checkpoint.load_latest(client, killed)
    partial = tmp_path / checkpoint.file_name(50)
    partial.write_bytes(b"PK\x03\x04 truncated")
    client.log_artifact(killed, str(partial), checkpoint.ARTIFACT_DIR)
    again = checkpoint.load_latest(client, killed)
    assert again is not None and good is not None
    assert again["members"]["recorder"]["returns"] == good["members"]["recorder"]["returns"]


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path, store):
    """SIGTERM mid-run: exit 143, the run KILLED with a checkpoint at its last episode; resumed, it
    ends with the returns of the run never interrupted."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    budget = 1500  # ~8 s of short episodes on a quiet machine: the signal lands mid-run (300 took 1.8 s)
    args = ["algo=dqn_target", "env=cartpole", "algo.hidden=[16]", "algo.learning_starts=50",
            "algo.batch_size=16", f"train.max_episodes={budget}", "train.checkpoint_every=1000", "eval.episodes=0",
            "train.save_model=false", "seed=4", "optimizer.lr=1e-7"]  # short episodes throughout
    p = subprocess.Popen([PYTHON, "-m", "rlexp", *args, f"hydra.run.dir={tmp_path / 'out'}"], cwd=ROOT,
                         env=cli_env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=sigint_default)
    children_once_training(p, uri, 1, timeout=120)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    client = MlflowClient(uri)
    [r] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert r.info.status == "KILLED" and r.data.tags["stop_reason"] == "terminated by SIGTERM"
    episodes = int(r.data.metrics["episodes"])
    assert 0 < episodes < budget
    assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")] == [
        f"checkpoint/{checkpoint.file_name(episodes)}"]
    subprocess.run([PYTHON, "-m", "rlexp", f"resume={r.info.run_id}"], cwd=ROOT, env=cli_env(MLFLOW_TRACKING_URI=uri),
                   check=True, capture_output=True, timeout=300)
    whole = run(compose_config(args))  # the same command, never interrupted (in the module's store)
    assert [v for _, v in _history(client, r.info.run_id, "episode_return")] == whole.returns
    assert client.get_run(r.info.run_id).info.status == "FINISHED"


def test_a_multirun_resumes_as_a_whole_through_its_parent(store, capsys):
    """resume=PARENT: the parent's unfinished children resume (the finished one is left alone), each
    ends with the returns of its run never interrupted, and the parent ends FINISHED with the aggregate."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from rlexp.tracking import ROLE_TAG

    client = MlflowClient()
    cfg = _cfg("dqn_target")
    exp = client.get_experiment_by_name(experiment_name(cfg)) or client.get_experiment(
        client.create_experiment(experiment_name(cfg)))
    parent = client.create_run(exp.experiment_id, tags={ROLE_TAG: "multirun"}).info.run_id
    client.set_terminated(parent, "KILLED")
    done = run(dataclasses.replace(cfg, seed=1), parent_run_id=parent)
    for seed in (2, 3):
        def crash(info):
            if info.episode == 7:
                raise RunInterrupted("crash")

        with pytest.raises(RunInterrupted):
            run(dataclasses.replace(cfg, seed=seed), callback=crash, parent_run_id=parent)
    killed = [r.info.run_id for r in client.search_runs([exp.experiment_id],
                                                        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}' and "
                                                        "attributes.status = 'KILLED'")]
    assert len(killed) == 2
    assert resume_main([f"resume={parent}"]) == 0
    assert capsys.readouterr().err.count("resumed:") == 2
    for run_id in killed:
        r = client.get_run(run_id)
        whole = run(dataclasses.replace(cfg, seed=int(r.data.params["seed"])))
        assert r.info.status == "FINISHED"
        assert [v for _, v in _history(client, run_id, "episode_return")] == whole.returns
    assert client.get_run(done.run_id).data.tags.get("resumed_from_episode") is None  # left alone
    p = client.get_run(parent)
    assert p.info.status == "FINISHED" and any(k.endswith("seeds") and v == 3 for k, v in p.data.metrics.items())
    assert resume_main([f"resume={parent}"]) == 2
    assert "every run of this multirun is FINISHED" in capsys.readouterr().err
