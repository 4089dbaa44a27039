"""The benchmark commands run end to end (tiny budgets) and write their tables."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from benchmarks import bench_algos, versions
from rlexp.cli import worker_processes

from .conftest import PYTHON, ROOT, cli_env, sigint_default


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
    assert ", python " in text and "stable-baselines3 " in text and "command: `python -m benchmarks.bench_algos --algos" in text


def test_bench_algos_refuses_an_unknown_algorithm(tmp_path):
    with pytest.raises(SystemExit, match="unknown --algos nope"):
        bench_algos.main(["--algos", "nope", "--out", str(tmp_path)])


def test_bench_sweep_writes_its_table_after_each_stage(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench_sweep, "RESULTS", tmp_path / "results")
    assert bench_sweep.main(["sweep=dqn_cartpole", "n_trials=4", "seeds=[1]", "validation.eval_seeds=1",
                             "train.max_episodes=3", "algo.hidden=[8]", "algo.learning_starts=10"]) == 0
    (out,) = (tmp_path / "results").glob("sweep-*.md")
    text = out.read_text()
    assert "| pruner | median |" in text and "| no pruner | none |" in text
    assert "| default config |" in text and "Env steps saved by pruning:" in text
    # the no-pruner half taken from that run's study: the same figures, nothing run again
    (work,) = (tmp_path / "outputs" / "bench_sweep").iterdir()
    unpruned = f"{work / 'optuna.db'}:bench-dqn_cartpole-unpruned-{work.name}"
    out.unlink()
    tiny = ["sweep=dqn_cartpole", "n_trials=4", "seeds=[1]", "validation.eval_seeds=0", "train.max_episodes=3",
            "algo.hidden=[8]", "algo.learning_starts=10"]
    assert bench_sweep.main([*tiny, f"baseline={unpruned}"]) == 0
    (out2,) = (tmp_path / "results").glob("sweep-*.md")
    row = next(line for line in text.splitlines() if line.startswith("| no pruner |"))
    assert row.split("|")[3:7] == next(line for line in out2.read_text().splitlines()
                                       if line.startswith("| no pruner |")).split("|")[3:7]
    # a baseline from another definition is refused
    before = set((tmp_path / "outputs" / "bench_sweep").iterdir())
    assert bench_sweep.main([*tiny, "train.max_episodes=4", f"baseline={unpruned}"]) == 2
    assert "its base" in capsys.readouterr().err
    assert not any((d / "optuna.db").exists()  # refused before any sweep ran
                   for d in set((tmp_path / "outputs" / "bench_sweep").iterdir()) - before)
    assert bench_sweep.main([*tiny, f"baseline={work / 'optuna.db'}:nope"]) == 2
    assert "baseline=" in (err := capsys.readouterr().err) and "no study 'nope'" in err
    # both halves from studies: the table alone, the same figures
    for f in (tmp_path / "results").glob("sweep-*.md"):
        f.unlink()
    pruned = f"{work / 'optuna.db'}:bench-dqn_cartpole-pruned-{work.name}"
    assert bench_sweep.main([*tiny, f"pruned={pruned}", f"baseline={unpruned}"]) == 0
    (out3,) = (tmp_path / "results").glob("sweep-*.md")
    assert "| pruner | median |" in out3.read_text()  # as the study recorded it
    rows3 = [line.split("|")[3:7] for line in out3.read_text().splitlines() if line.startswith(("| pruner", "| no pruner"))]
    assert rows3 == [line.split("|")[3:7] for line in text.splitlines() if line.startswith(("| pruner", "| no pruner"))]
    assert "workers as each study was run" in out3.read_text() and "not recorded" not in out3.read_text()
    # the same search: a study drawn from another sampler seed is refused, for either half
    assert bench_sweep.main([*tiny, "sampler.seed=1", f"pruned={pruned}", f"baseline={unpruned}"]) == 2
    assert "baseline=" in (err := capsys.readouterr().err) and "its sampler.seed 0 is not this sweep's 1" in err
    # a study short of n_trials is refused
    assert bench_sweep.main([*tiny, "n_trials=5", f"pruned={pruned}", f"baseline={unpruned}"]) == 2
    assert "finished trials of n_trials=5: resume it first" in capsys.readouterr().err
    # a study that recorded no sampler is not known to be the same search
    import optuna

    db, name = unpruned.rsplit(":", 1)
    optuna.load_study(study_name=name, storage=f"sqlite:///{db}").set_user_attr("sampler", None)
    assert bench_sweep.main([*tiny, f"baseline={unpruned}"]) == 2
    assert "it recorded no sampler" in capsys.readouterr().err


def test_bench_sweep_header_names_lost_trials():
    from benchmarks.bench_sweep import _as_run
    from rlexp.sweep.runner import SweepResult

    r = SweepResult("s", "sqlite:///x.db", 30, {"complete": 30, "pruned": 0, "failed": 0, "lost": 2, "running": 0},
                    100, 1.0)
    assert _as_run(r) == " (2 lost trial(s), not counted, env steps unrecorded)"
    assert _as_run(dataclasses.replace(r, tally={**r.tally, "lost": 0})) == ""


def test_bench_variants_runs_each_variant_on_each_seed(tmp_path):
    from benchmarks import bench_variants

    spec = tmp_path / "v.txt"
    spec.write_text("# a comment\nsmall: algo=dqn_target algo.hidden=[8]\n\nln: algo=dqn algo.hidden=[8] "
                    "algo.layer_norm=true  # trailing comment\n")
    assert bench_variants.main(["--file", str(spec), "--seeds", "0", "1", "--jobs", "1",
                                "--override", "train.max_episodes=60", "--out", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("variants-v-*.md")
    text = out.read_text()
    assert "| small | `algo=dqn_target algo.hidden=[8]` | 0/2 |" in text
    assert "| ln | `algo=dqn algo.hidden=[8] algo.layer_norm=true` | 0/2 |" in text
    assert text.count("| small | ") == 3 and "| small | 1 | – | 60 |" in text  # summary + a row per seed
    assert bench_variants.rolling_every([1.0] * 50 + [3.0] * 50 + [5.0] * 100) == [1.0, 2.0, 4.0, 5.0]


def test_bench_variants_refuses_bad_specs_before_running(tmp_path):
    from benchmarks import bench_variants

    with pytest.raises(SystemExit, match="label: overrides"):
        bench_variants.main(["--variant", "no colon here", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="duplicate labels"):
        bench_variants.main(["--variant", "a: algo=dqn", "--variant", "a: algo=ppo", "--out", str(tmp_path)])
    from rlexp.config import ConfigError

    with pytest.raises(ConfigError, match="algo.lr"):
        bench_variants.main(["--variant", "a: algo=dqn algo.lr=-1", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.md"))


def _summary(solved_at):
    from rlexp.sweep.preset import EvalSummary
    from rlexp.train import TrainResult

    return EvalSummary(list(range(len(solved_at))), [TrainResult(s is not None, s, 0, 0, 0.0, []) for s in solved_at])


def test_a_pick_holds_when_it_solves_every_fresh_seed_25_percent_faster_than_the_default():
    from benchmarks.bench_sweep_seeds import holds

    default = _summary([None, 318, 259, None, None])  # censored median: any 5/5 holds
    assert holds(_summary([481, 240, 301, 193, 226]), default)
    assert not holds(_summary([264, None, 251, 244, 204]), default)  # 4/5
    solved_default = _summary([300, 300, 300, 300, 300])
    assert holds(_summary([225, 225, 225, 300, 100]), solved_default)  # 225 <= 0.75 * 300
    assert not holds(_summary([226, 226, 226, 300, 100]), solved_default)
    assert not holds(None, default) and not holds(_summary([1, 1]), None)


def test_bench_sweep_seeds_runs_each_sampler_seed_and_reads_the_finished_sweeps_back(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_sweep_seeds

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench_sweep_seeds, "RESULTS", tmp_path / "results")
    tiny = ["sweep=dqn_cartpole", "n_trials=4", "seeds=[1]", "validation.eval_seeds=1", "train.max_episodes=3",
            "algo.hidden=[8]", "algo.learning_starts=10", "validation.top=2", "validation.seeds=1", "preset_unsolved=true"]
    assert bench_sweep_seeds.main([*tiny, "sampler_seeds=[0,1]"]) == 0
    (out,) = (tmp_path / "results").glob("sweep-seeds-*.md")
    text = out.read_text()

    def rows(t: str) -> list[list[str]]:  # every cell but the wall times
        return [[c.strip() for i, c in enumerate(line.split("|")) if i != 4]
                for line in t.splitlines() if line.startswith(("| 0 |", "| 1 |", "| default config |"))]

    ran = rows(text)
    assert [r[1] for r in ran] == ["0", "1", "default config"]
    # 3 episodes never solve: the picks were validated (1 own + 1 validation seed) and do not hold
    assert all("over 2 seeds, 0 solved" in r[5] and r[6:10] == ["unsolved", "0/1", "censored", "no"] for r in ran[:2])
    assert "The pick holds on fresh seeds in **0 of 2** sweeps." in text
    # the same sweeps taken back from their studies and MLflow: the same rows, nothing run again
    (work,) = (tmp_path / "outputs" / "bench_sweep_seeds").iterdir()
    takes = [f"take={work / 'optuna.db'}:bench-dqn_cartpole-s{k}-{work.name}" for k in (0, 1)]
    default = f"default=bench-dqn_cartpole-default-{work.name}"
    out.unlink()
    assert bench_sweep_seeds.main([*tiny, *takes, default]) == 0
    (out2,) = (tmp_path / "results").glob("sweep-seeds-*.md")
    assert rows(out2.read_text()) == ran
    assert not list((tmp_path / "outputs" / "bench_sweep_seeds").glob("*/optuna.db"))[1:]  # no new study
    # refused before any work, naming what: another definition, a default with no runs
    assert bench_sweep_seeds.main([*tiny, "train.max_episodes=4", takes[0]]) == 2
    assert f"error: {takes[0]}: its base" in capsys.readouterr().err
    assert bench_sweep_seeds.main([*tiny, takes[0], "default=nope"]) == 2
    assert "error: default=nope: no finished re-evaluation run tagged sweep=nope for seeds [1000000]" in \
        capsys.readouterr().err
    assert bench_sweep_seeds.main([*tiny]) == 2 and "sampler_seeds=[...]" in capsys.readouterr().err


def _timed_study(path):
    """An SQLite study of hand-made finished trials: (algo, batch, state, env steps, seconds), and
    one lost and one running trial that no row may count."""
    from datetime import datetime, timedelta

    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import FrozenTrial, TrialState

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{path}", direction="minimize")
    dists = {"algo": CategoricalDistribution(["double_dqn", "clipped_double_dqn"]),
             "algo.batch_size": CategoricalDistribution([64, 256])}
    t0 = datetime(2026, 12, 1, 3, 0, 0)
    rows = [("double_dqn", 64, TrialState.COMPLETE, 60_000, 120), ("double_dqn", 64, TrialState.PRUNED, 30_000, 60),
            ("clipped_double_dqn", 256, TrialState.COMPLETE, 40_000, 240),
            ("clipped_double_dqn", 64, TrialState.FAIL, 1_000, 30)]
    for i, (algo, batch, state, steps, secs) in enumerate(rows):
        attrs = {"env_steps": steps, **({"fail_reason": "diverged"} if state == TrialState.FAIL else {}),
                 "episodes_to_solve": [[120, None, 200], [150], [None, None, None], []][i]}
        study.add_trial(FrozenTrial(
            number=i, trial_id=i, state=state, value=100.0 + i if state == TrialState.COMPLETE else None,
            datetime_start=t0 + timedelta(seconds=60 * i), datetime_complete=t0 + timedelta(seconds=60 * i + secs),
            params={"algo": algo, "algo.batch_size": batch}, distributions=dists, user_attrs=attrs,
            system_attrs={}, intermediate_values={}))
    study.add_trial(FrozenTrial(  # lost: failed with no reason (its worker died)
        number=4, trial_id=4, state=TrialState.FAIL, value=None, datetime_start=t0, datetime_complete=t0 + timedelta(
            seconds=999), params={"algo": "double_dqn", "algo.batch_size": 64}, distributions=dists, user_attrs={},
        system_attrs={}, intermediate_values={}))
    study.set_user_attr("validation", {"2": {"500000": {"solved_at": 200, "env_steps": 9_000, "wall_time_s": 90.0},
                                             "500001": {"solved_at": None, "env_steps": 6_000, "wall_time_s": 30.0}}})
    return study


def test_sweep_cost_splits_the_trials_worker_time_by_what_they_ran(tmp_path, capsys):
    from benchmarks import sweep_cost

    study = _timed_study(tmp_path / "o.db")
    trials = study.get_trials(deepcopy=False)
    assert sweep_cost.default_by(trials) == ["algo"]
    by_algo = {c.label: c for c in sweep_cost.trial_costs(trials, ["algo"])}
    dd, cd = by_algo["algo=double_dqn"], by_algo["algo=clipped_double_dqn"]
    assert (dd.runs, dd.complete, dd.pruned, dd.env_steps, dd.worker_s) == (2, 1, 1, 90_000, 180.0)  # lost one left out
    assert (dd.solving, dd.seeds_solved, by_algo["algo=clipped_double_dqn"].solving) == (2, 3, 0)
    assert dd.steps_per_min == 90_000 / 3
    assert (cd.runs, cd.complete, cd.failed, cd.env_steps, cd.worker_s) == (2, 1, 1, 41_000, 270.0)
    assert [c.label for c in sweep_cost.trial_costs(trials, ["algo"])] == ["algo=clipped_double_dqn", "algo=double_dqn"]
    val = sweep_cost.validation_cost(study.user_attrs["validation"])
    assert (val.runs, val.complete, val.env_steps, val.worker_s) == (2, 1, 15_000, 120.0)

    assert sweep_cost.main([f"{tmp_path / 'o.db'}:s", "--by", "algo", "algo.batch_size", "--out", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("sweep-cost-*.md")
    text = out.read_text()
    assert "trials: 2 complete, 1 pruned, 1 failed, 1 lost, 0 running" in text
    # phase: 03:00:00 to trial 3's end (03:03:30); worker time 450 s of trials; 570 s with the validation
    assert "trials phase 16.6 min" in text  # the lost trial's 999 s span counts in the phase
    assert "trial worker time 7.5 min" in text and "validation: 2 runs, 15,000 env steps, 2.0 worker min" in text
    assert "| algo=clipped_double_dqn algo.batch_size=256 | 1 | 1 / 0 / 0 | 0 (0) | 40,000 | 4.0 | 42% | 10,000 |" in text
    assert "| algo=double_dqn algo.batch_size=64 | 2 | 1 / 1 / 0 | 2 (3) | 90,000 | 3.0 | 32% | 30,000 |" in text
    assert "| validation runs | 2 | 1 solved | – | 15,000 | 2.0 | 21% | 7,500 |" in text
    assert "command: `python -m benchmarks.sweep_cost" in text and "optuna " in text and ", mlflow " in text


def test_sweep_cost_refuses_an_unknown_study_before_any_output(tmp_path, capsys):
    from benchmarks import sweep_cost

    _timed_study(tmp_path / "o.db")
    assert sweep_cost.main([f"{tmp_path / 'o.db'}:s", f"{tmp_path / 'o.db'}:nope", "--out", str(tmp_path)]) == 2
    assert "sweep_cost: error: " in capsys.readouterr().err and not list(tmp_path.glob("sweep-cost-*.md"))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to see child processes")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_bench_variants_stops_its_runs_and_writes_the_finished_ones(tmp_path, sig):
    """Ctrl-C (SIGINT) or SIGTERM to the command alone: the runs in flight stop at once, no
    queued one waits for its turn, and the finished run is written in a table marked interrupted."""
    tiny = "algo=dqn_target algo.hidden=[8] algo.learning_starts=50"
    cmd = [PYTHON, "-m", "benchmarks.bench_variants", "--variant", f"fast: {tiny} train.max_episodes=3",
           "--variant", f"slow: {tiny} train.max_episodes=100000", "--seeds", "0", "1", "--jobs", "2",
           "--name", "interrupt", "--out", str(tmp_path)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=sigint_default)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and p.poll() is None and not any("fast seed 1" in x for x in lines):
            time.sleep(0.2)
        workers = set(worker_processes(p.pid))
        time.sleep(1.0)  # both slow seeds are training now
        p.send_signal(sig)  # to this process alone, as `kill` does
        p.wait(timeout=60)
        time.sleep(0.5)
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and "zombie" not in Path(f"/proc/{w}/status").read_text()]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        reader.join(timeout=10)
    err = "".join(lines)
    assert p.returncode == 130, err[-3000:]
    assert not alive, f"worker processes {alive} outlived the interrupted benchmark"
    (out,) = tmp_path.glob("variants-interrupt-*.md")
    text = out.read_text()
    assert "**Interrupted: 2 of 4 runs finished" in text
    assert "| fast | `" in text and "| 0/2 |" in text  # both fast seeds (not solved in 3 episodes)
    assert "| slow | `" in text and "| 0/0 |" in text


def test_result_files_name_the_commit_versions_and_cpu_that_runs_record():
    import torch

    from rlexp.tracking import runtime_tags

    line = versions("optuna", "no-such-package")
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the commit first, as runs record it
        assert line.startswith(f"rlexp {head.stdout.strip()}, ")
    tags = runtime_tags()
    assert f"python {tags['runtime.python']}, optuna " in line and ", no-such-package not installed, " in line
    assert line.endswith(f"torch {torch.__version__}, gymnasium {tags['runtime.gymnasium']}, "
                         f"cpu {torch.backends.cpu.get_cpu_capability()} ({tags['runtime.machine']})")


def test_bench_learner_times_the_update_of_one_and_of_k_members(tmp_path, capsys):
    from benchmarks import bench_learner

    bench_learner.main(["--algos", "dqn", "--members", "3", "--threads", "2", "--calls", "1", "--rounds",
                        "1", "--steps", "20", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("learner-*.md")
    text = out.read_text()
    assert "| algo | update K=1 (ms) | update K=3 (ms) |" in text and "update K=3, 2 threads (ms)" in text
    rows = [r for r in text.splitlines() if r.startswith("| dqn |")]
    assert len(rows) == 1 and all(len(r.split("|")) == 9 for r in rows)
    assert all(float(c.strip(" *")) > 0 for r in rows for c in r.split("|")[2:-1])
