"""Multirun commands that fail loudly (issue 29), through the real command line: the exit status,
one line per failed job, SIGTERM and Ctrl-C stopping the whole command, and other launchers."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import PYTHON, ROOT, children_once_training, cli_env, sigint_default

FAST = ["train.max_episodes=8", "algo.hidden=[8]", "algo.learning_starts=30", "train.log_interval=30",
        "train.save_model=false"]


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _popen(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = cli_env(MLFLOW_TRACKING_URI=_uri(tmp_path))
    return subprocess.Popen([PYTHON, "-m", "rlexp", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)


def _all_runs(tmp_path: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(_uri(tmp_path))
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _runs(tmp_path: Path) -> list:
    """The jobs' runs, each checked to be a child of the command's one parent run."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from rlexp.tracking import ROLE_TAG

    runs = _all_runs(tmp_path)
    parents = [r.info.run_id for r in runs if ROLE_TAG in r.data.tags]
    jobs = [r for r in runs if ROLE_TAG not in r.data.tags]
    assert len(parents) <= 1 and {r.data.tags.get(MLFLOW_PARENT_RUN_ID) for r in jobs} <= {*parents[:1]} | {None}
    assert all(r.data.tags.get(MLFLOW_PARENT_RUN_ID) for r in jobs) == bool(parents)  # all children or a single run
    return jobs


def _parent_status(tmp_path: Path) -> str:
    from rlexp.tracking import ROLE_TAG

    (parent,) = [r for r in _all_runs(tmp_path) if ROLE_TAG in r.data.tags]
    return parent.info.status


def _outcomes(tmp_path: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"]
            for p in (tmp_path / "sweep").glob("*/rlexp-job.json")}


def test_a_failed_job_makes_the_multirun_exit_1_after_every_job_ran(tmp_path):
    """The lr=1e38 jobs diverge; the others still run; the command ends with one line per failed
    job (its overrides, the reason, its run) and exit status 1."""
    p = _popen(tmp_path, "algo=dqn_target", "optimizer.lr=1e38,1e-3", "seed=1,2", *FAST, "-m")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    summary = [ln for ln in err.splitlines() if ln.startswith("rlexp: FAILED [")]
    outcomes = _outcomes(tmp_path)
    failed = sorted(k for k, v in outcomes.items() if v == "FAILED")
    assert len(outcomes) == 4 and failed and len(summary) == len(failed)
    assert all("optimizer.lr=1e+38" in ln and "the run diverged" in ln and "(run " in ln for ln in summary)
    assert f"{len(failed)} job(s) did not finish" in err
    assert all(v == "FINISHED" for k, v in outcomes.items() if k.startswith(("2-", "3-")))  # lr=1e-3
    assert sorted(r.info.status for r in _runs(tmp_path)) == sorted(outcomes.values())
    assert _parent_status(tmp_path) == "FAILED"  # the multirun's parent: a job failed


def test_fail_fast_starts_no_further_batch(tmp_path):
    p = _popen(tmp_path, "algo=dqn_target", "optimizer.lr=1e38,1e-3", *FAST, "hydra.launcher.fail_fast=true", "-m")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err[-3000:]
    assert _outcomes(tmp_path) == {"0-dqn_target-0": "FAILED"}  # the lr=1e-3 job never started
    assert _parent_status(tmp_path) == "FAILED" and len(_runs(tmp_path)) == 1


def test_a_single_run_that_fails_exits_1_with_one_line(tmp_path):
    p = _popen(tmp_path, "algo=dqn_target", "optimizer.lr=1e38", *FAST)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "Traceback" not in err
    assert "FAILED" in err and "became nan" in err


@pytest.mark.parametrize(("sig", "code", "launcher"), [(signal.SIGTERM, 143, []), (signal.SIGINT, 130, []),
                                                      (signal.SIGTERM, 143, ["hydra/launcher=joblib"])])
def test_a_signal_stops_the_whole_multirun(tmp_path, sig, code, launcher):
    """SIGTERM (what SLURM sends, here to the command alone, as `kill` does) or Ctrl-C while the first
    batch trains (under joblib: the first two jobs, each in a worker process, which the command
    passes the signal on to): its runs end KILLED with what they logged, the second batch never
    starts, no traceback."""
    algos = "algo=dqn" if launcher else "algo=dqn,dqn_target"  # joblib: as many workers as jobs, all at once
    p = _popen(tmp_path, algos, "seed=1,2", "train.max_episodes=100000", "algo.hidden=[8]",
               "train.save_model=false", "train.stop_on_solve=false", *launcher, "-m")
    children_once_training(p, _uri(tmp_path), 2, timeout=120)  # both runs of the first batch train
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-3000:]
    assert "Traceback" not in err
    runs = _runs(tmp_path)
    assert len(runs) == 2 and {r.data.tags["algo"] for r in runs} == {"dqn"}  # the second batch never started
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all(r.data.metrics.get("episodes", 0) > 0 for r in runs)
    assert _parent_status(tmp_path) == "KILLED"


def test_another_launcher_runs_one_seed_per_job(tmp_path):
    """With hydra/launcher=joblib each job trains alone in a worker; the summary and the exit
    status still hold."""
    p = _popen(tmp_path, "algo=dqn_target", "optimizer.lr=1e38,1e-3", *FAST, "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", "-m")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err[-3000:]
    assert "did not finish" in err
    runs = _runs(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert len({r.data.tags["group"] for r in runs}) == 1  # the workers share the launch's folder
    assert _parent_status(tmp_path) == "FAILED"  # and the launch's parent run (_runs checks they are its children)
    assert sorted(_outcomes(tmp_path).values()) == ["FAILED", "FINISHED"]


def test_sigterm_ends_a_single_run_killed_with_143(tmp_path):
    """What a scheduler's SIGTERM does to one run: KILLED with its episodes kept, exit 143, one line."""
    p = _popen(tmp_path, "algo=dqn_target", "train.max_episodes=100000", "algo.hidden=[8]", "train.save_model=false")
    children_once_training(p, _uri(tmp_path), 1, timeout=120)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "terminated (SIGTERM)" in err
    (run,) = _runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "terminated by SIGTERM"
    assert run.data.metrics["episodes"] > 0


# --------------------------------------------------------------------------- sweeps: the same contract
def _sweep(tmp_path: Path, *args: str, lr: str = "{type: float, low: 1.0e-4, high: 1.0e-3, log: true}",
           max_episodes: int = 40) -> subprocess.Popen[str]:
    """``python -m rlexp.sweep`` on a two-trial definition written to tmp_path (storage and outputs there)."""
    (tmp_path / "mine.yaml").write_text(
        "defaults: [base_sweep, _self_]\n"
        f"base: [algo=dqn_target, 'algo.hidden=[8]', algo.learning_starts=50, train.max_episodes={max_episodes},"
        " train.save_model=false]\n"
        f"space: {{algo: {{lr: {lr}}}}}\n"
        "n_trials: 2\nseeds: [0, 1]\nstart_from_default: false\npruner: {name: none}\n"
        "validation: {top: 0, eval_seeds: 0}\n")
    return subprocess.Popen([PYTHON, "-m", "rlexp.sweep", f"sweep={tmp_path / 'mine.yaml'}",
                             f"storage=sqlite:///{tmp_path / 'optuna.db'}", f"preset_dir={tmp_path / 'presets'}", *args],
                            cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=_uri(tmp_path)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)


def test_a_sweep_whose_trials_fail_exits_1_with_one_line_per_failed_trial(tmp_path):
    """Every trial diverges (lr >= 1e30): both still run, and the command ends with one line per failed
    trial (its overrides, the reason, its MLflow run) and exit status 1."""
    p = _sweep(tmp_path, lr="{type: float, low: 1.0e+30, high: 1.0e+31, log: true}")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    lines = err.splitlines()
    summary = [ln for ln in lines if ln.startswith("rlexp.sweep: FAILED trial ")]
    assert lines[-3:] == ["rlexp.sweep: 2 trial(s) of study 'mine' failed (they count towards n_trials and are "
                          "not run again):", *summary]  # the last lines a scheduler's log shows
    assert [ln.split()[3] for ln in summary] == ["0", "1"]
    assert all("[algo.lr=" in ln and "the run diverged" in ln for ln in summary)
    from mlflow import MlflowClient

    client = MlflowClient(_uri(tmp_path))
    for ln in summary:  # the named run is the trial's, and it ended FAILED
        run = client.get_run(ln.rsplit("(run ", 1)[1].rstrip(")"))
        assert run.info.status == "FAILED" and run.data.tags["sweep_role"] == "trial"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_a_sweep(tmp_path, sig, code):
    """SIGTERM or Ctrl-C while a trial's seeds train: every run ends KILLED with what it logged, no
    further trial starts, exit 143 or 130 with one line, no traceback."""
    p = _sweep(tmp_path, max_episodes=100000)
    children_once_training(p, _uri(tmp_path), 2, role="seed", timeout=180)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-3000:]
    assert "Traceback" not in err
    assert ("terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted") in err.splitlines()[-1]
    runs = _all_runs(tmp_path)
    roles = sorted(r.data.tags.get("sweep_role") for r in runs)
    assert roles == ["seed", "seed", "study", "trial"], roles  # trial 1 never started
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all(r.data.metrics.get("episodes", 0) > 0 for r in runs if r.data.tags["sweep_role"] == "seed")
