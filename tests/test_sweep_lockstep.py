"""A trial's seeds in lockstep (``pruner.lockstep``): the same runs as one after the other, judged
together at every report, stopped together, a failing seed fails the trial, a signal leaves no
seed process behind. Tiny budgets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.envs import check_compatible, solve_threshold
from rlexp.sweep import load, run_sweep
from rlexp.sweep import lockstep as ls
from rlexp.sweep.objective import Pruned, aggregate, final_value, tail_mean
from rlexp.tracking import store_lock
from rlexp.train import run

from .conftest import PYTHON, children, children_once_training, cli_env, sigint_default
from .test_sweep import tiny, trials_of

LEARNS = ["algo=double_dqn", "env=cartpole", "algo.hidden=[16]", "algo.learning_starts=50", "train.max_episodes=30",
          "train.save_model=false", "tracking.enabled=false"]


def _jobs(overrides: list[list[str]], every: int = 10) -> list[ls.SeedJob]:
    return [ls.SeedJob(i, ov, every, None, 500.0) for i, ov in enumerate(overrides)]


def test_a_seed_runs_the_same_in_lockstep_as_alone():
    """Each seed in its own process, paused at every report: the same episodes, env steps and value
    as the same run in this process; the trial reports the mean of its seeds' values at each report."""
    runs = [[*LEARNS, f"seed={s}"] for s in (0, 1)]
    reports: list[tuple[float, int]] = []
    done: list[int] = []
    seeds = ls.Seeds(2)
    value = ls.run_lockstep(_jobs(runs), "mean", lambda v, step: reports.append((v, step)), lambda: False,
                            lambda low, where: None, lambda i, v, solved, env: done.append(i), seeds)
    alone = []
    for ov in runs:
        cfg = compose_config(ov)
        r = run(cfg)
        alone.append((final_value(r.episodes_to_solve, tail_mean(r.returns, cfg.solve.window),
                                  solve_threshold(cfg, check_compatible(cfg)), 30, 30.0), r.env_steps))
        assert r.env_steps > 50 * 2  # it trained: learning started in every seed
    assert [(v, e) for v, e in zip(seeds.final, seeds.env_steps, strict=True)] == alone
    assert value == aggregate([v for v, _ in alone], "mean") and sorted(done) == [0, 1]
    assert [step for _, step in reports] == [10, 20]  # not at 30: every run ends there
    for v, _ in reports:
        assert v > 30  # nothing solves in 30 episodes: each seed's value if its budget ended there


def test_seeds_in_lockstep_are_pruned_together_and_their_runs_end_killed(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    # every unsolved estimate is > B = 12: a threshold pruner at 12 stops the trial at its first report
    result = run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "seeds=[0,1,2]", "pruner.lockstep=true",
                                                 "pruner.name=threshold", "pruner.args={upper:12.0}")))
    assert result.tally["pruned"] == 1
    (t,) = trials_of(tmp_path)
    assert t.state == TrialState.PRUNED and t.user_attrs["pruned_at"] == 4 and list(t.intermediate_values) == [4]
    run_values = t.user_attrs["seed_values_run"]  # each seed's value as if its budget ended at episode 4
    assert len(run_values) == 3 and t.intermediate_values[4] == pytest.approx(sum(run_values) / 3)
    assert 0 < t.user_attrs["env_steps"] < 3 * 4 * 500
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("CartPole-v1").experiment_id])
    seed_runs = [r for r in runs if r.data.tags.get("sweep_role") == "seed"]
    (trial_run,) = [r for r in runs if r.data.tags.get("sweep_role") == "trial"]
    assert sorted(r.data.tags["seed"] for r in seed_runs) == ["0", "1", "2"]
    for r in seed_runs:  # each seed's run, stopped at the same report, under the trial's run
        assert r.info.status == "KILLED"
        assert r.data.tags["stop_reason"].startswith("pruned at step 4 (episode 4 of every seed)")
        assert r.data.tags["mlflow.parentRunId"] == trial_run.info.run_id
    assert trial_run.info.status == "KILLED" and trial_run.data.tags["state"] == "pruned"


def test_the_bound_sees_the_mean_of_the_seeds_lower_bounds():
    """The bound check gets the aggregate of the seeds' lower bounds at each report; a stop there
    stops every seed, whose runs end before the trial raises."""
    bounds: list[float] = []

    def check(low: float, where: str) -> None:
        bounds.append(low)
        raise Pruned(f"pruned at {where}: bound")

    seeds = ls.Seeds(2)
    with pytest.raises(Pruned, match="pruned at step 10"):
        ls.run_lockstep(_jobs([[*LEARNS, "seed=0"], [*LEARNS, "seed=1"]]), "mean", lambda v, s: None, lambda: False,
                        check, lambda *a: None, seeds)
    assert len(bounds) == 1 and bounds[0] == pytest.approx(sum(seeds.lows()) / 2)
    # a 30-episode budget is shorter than the 100-episode window: each seed is censored at best
    assert all(seeds.ended) and all(lo is not None and lo > 30 for lo in seeds.low)


def test_a_failing_seed_fails_the_trial_and_stops_the_others():
    start = time.monotonic()
    seeds = ls.Seeds(2)
    long_run = [*LEARNS, "train.max_episodes=100000", "seed=0"]  # never ends by itself in this test
    with pytest.raises(ls.SeedFailed, match=r"seed index 1: ConfigError: .*train.max_episodes"):
        ls.run_lockstep(_jobs([long_run, [*LEARNS, "train.max_episodes=-3", "seed=1"]], every=4), "mean",
                        lambda v, s: None, lambda: False, lambda low, where: None, lambda *a: None, seeds)
    assert time.monotonic() - start < 60
    assert not children(os.getpid(), workers_only=True)  # the long seed's process is gone


def test_a_resume_refuses_a_changed_lockstep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "pruner.name=none", "tracking.enabled=false",
                                        "finalize=false")))
    with pytest.raises(ConfigError, match=r"pruner.lockstep=True differs from False, with which study 'dqn_cartpole'"):
        run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "tracking.enabled=false", "pruner.lockstep=true")))
    assert len(trials_of(tmp_path)) == 1


def test_a_sigterm_stops_every_seed_process_and_their_runs_end_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with store_lock(uri):
        MlflowClient(uri).search_experiments()
    cmd = [PYTHON, "-m", "rlexp.sweep", "sweep=dqn_cartpole", *tiny(tmp_path, "n_trials=1", "seeds=[0,1]",
                                                                     "pruner.lockstep=true", "pruner.name=none",
                                                                     "train.max_episodes=100000")]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=uri), stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=sigint_default)
    try:
        kids = children_once_training(p, uri, 2, role="seed")  # both seeds training
        alive: list[int] = []
        if kids:
            p.send_signal(signal.SIGTERM)  # to the command alone, as `kill` does
            p.wait(timeout=90)
            time.sleep(0.5)
            alive = [k for k in kids if Path(f"/proc/{k}").exists()
                     and "zombie" not in Path(f"/proc/{k}/status").read_text()]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        err = p.communicate()[1]
    assert kids, f"the seeds never started training: {err[-3000:]}"
    assert p.returncode != 0 and not alive, err[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    seed_runs = [r for r in runs if r.data.tags.get("sweep_role") == "seed"]
    assert {r.info.status for r in seed_runs} == {"KILLED"}, err[-3000:]
    (t,) = optuna.load_study(study_name="dqn_cartpole", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs  # interrupted: lost, not failed
