"""benchmarks/replay_pruning: a no-pruner study's trials are rebuilt from their reported values and
replayed through the sweep's real objective; with no pruner the replay gives every trial back."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from benchmarks import replay_pruning as rp
from rlexp.loops import EpisodeInfo
from rlexp.metrics import episodes_to_solve, rolling_mean
from rlexp.sweep import load
from rlexp.sweep.objective import Objective, Reporter, aggregate
from rlexp.train import TrainResult

B, EVERY, W, TH = 60, 10, 20, 475.0
OVERRIDES = [f"train.max_episodes={B}", "seeds=[0,1]", f"pruner.report_every={EVERY}", f"solve.window={W}"]


def curve(start: float, slope: float, n: int = B) -> list[float]:
    """CartPole-like returns: integer lengths from ``start`` climbing by ``slope``, at most 500."""
    return [float(min(500, int(start + slope * e))) for e in range(n)]


def recorded(number: int, seeds: list[list[float]], unstarted_as_worst: bool = True) -> optuna.trial.FrozenTrial:
    """A complete trial as a no-pruner sweep records it: values reported by the real Reporter."""
    values: dict[int, float] = {}
    finished: list[float] = []
    solved_at: list[int | None] = []
    steps = 0
    for i, returns in enumerate(seeds):
        s = episodes_to_solve(returns, W, TH)
        run = returns[:s] if s else returns
        rep = Reporter(lambda v, step: values.__setitem__(step, v), lambda: False, i, B, EVERY, TH, float(B), "mean",
                       list(finished), seeds=len(seeds) if unstarted_as_worst else 0, window=W)
        means = rolling_mean(run, W)
        for e, ret in enumerate(run, 1):
            steps += int(ret)
            rep(EpisodeInfo(e, ret, int(ret), steps, float(means[e - 1]), s if s and e >= s else None))
        v = Objective.seed_result(TrainResult(s is not None, s, len(run), 0, 0.0, run), W, TH, B, float(B))
        finished.append(v)
        solved_at.append(s)
        rep.fill(v)
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=aggregate(finished, "mean"), params={"algo.lr": 1e-4 * (number + 1)},
        distributions={"algo.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
        intermediate_values=values,
        user_attrs={"seed_values": finished, "episodes_to_solve": solved_at, "env_steps": steps})


def study(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    s = optuna.create_study()
    for t in trials:
        s.add_trial(t)
    return s.get_trials()


TRIALS = [[curve(20, 3), curve(30, 4)],  # never solves
          [curve(100, 15), curve(150, 20)],  # solves both seeds
          [curve(100, 12), curve(10, 1)]]  # solves one seed, flops on the other


def test_the_censoring_rule_inverted_gives_the_block_means_back():
    returns = curve(20, 5)
    (t,) = [recorded(0, [returns, returns])]
    worst = B + 2.0 * B
    own = rp.current_values(t.intermediate_values, t.user_attrs["seed_values"], 0, 2, B, worst, True)
    trace = rp.seed_trace(own, None, B, TH, float(B), W)
    blocks = np.asarray(returns).reshape(-1, EVERY).mean(axis=1)
    assert np.allclose(np.asarray(trace.returns).reshape(-1, EVERY).mean(axis=1), blocks)
    assert rp.unstarted_as_worst(t, B, worst, 2)
    assert not rp.unstarted_as_worst(recorded(0, [returns, returns], unstarted_as_worst=False), B, worst, 2)


@pytest.mark.parametrize("unstarted_as_worst", [True, False])
@pytest.mark.parametrize("lockstep", [False, True])
def test_with_no_pruner_the_replay_gives_every_value_and_env_step_back(unstarted_as_worst, lockstep):
    trials = study([recorded(n, seeds, unstarted_as_worst) for n, seeds in enumerate(TRIALS)])
    by_number = {t.number: rp.traces(t, B, TH, float(B), W, 2) for t in trials}
    assert [s.solved_at for s in by_number[1]] == trials[1].user_attrs["episodes_to_solve"]
    r = rp.replay(load("dqn_cartpole", [*OVERRIDES, "pruner.name=none", f"pruner.lockstep={lockstep}"]), trials,
                  by_number)
    assert r.pruned == [] and r.values == pytest.approx({t.number: t.value for t in trials})
    assert r.env_steps == pytest.approx(sum(t.user_attrs["env_steps"] for t in trials), abs=len(trials) * 2)


@pytest.mark.parametrize("lockstep", [False, True])
def test_a_pruner_stops_the_flop_and_counts_only_the_steps_it_ran(lockstep):
    trials = study([recorded(n, seeds) for n, seeds in enumerate(TRIALS)])
    trials = [trials[1], trials[0], trials[2]]  # the solver first: the bound then stops the others
    by_number = {t.number: rp.traces(t, B, TH, float(B), W, 2) for t in trials}
    sweep = load("dqn_cartpole", [*OVERRIDES, "pruner.name=median", "pruner.args={n_startup_trials:1}",
                                  f"pruner.lockstep={lockstep}"])
    r = rp.replay(sweep, trials, by_number)
    assert r.best == pytest.approx(trials[0].value)
    assert r.pruned == [0, 2]
    full = sum(t.user_attrs["env_steps"] for t in trials)
    assert trials[0].user_attrs["env_steps"] < r.env_steps < full
    if lockstep:  # both seeds of a stopped trial ran to the same episode, before the budget
        (t2,) = [t for t in r.study.get_trials() if t.user_attrs["replays"] == 2]
        assert t2.user_attrs["pruned_at"] < B and len(t2.user_attrs["seed_values_run"]) == 2


def test_the_command_replays_a_stored_study_and_refuses_what_it_cannot_replay(tmp_path, monkeypatch, capsys):
    from rlexp.sweep.runner import definition

    monkeypatch.setattr(rp, "RESULTS", tmp_path / "results")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    base = optuna.create_study(study_name="base", storage=storage)
    for n, seeds in enumerate(TRIALS):
        base.add_trial(recorded(n, seeds))
    recorded_def = definition(load("dqn_cartpole", OVERRIDES))
    del recorded_def["lockstep"]  # a study from before it was recorded ran its seeds one after the other
    base.set_user_attr("definition", recorded_def)
    spec = f"{tmp_path / 'optuna.db'}:base"
    # n_trials=2 < the baseline's 3 trials: every one is still replayed
    assert rp.main(["sweep=dqn_cartpole", f"baseline={spec}", *OVERRIDES, "n_trials=2",
                    "--setting", "none: pruner.name=none", "--setting", "bound: pruner.name=threshold pruner.args={upper:1.0e9}",
                    "--setting", "lockstep-none: pruner.name=none pruner.lockstep=true"]) == 0
    (out,) = (tmp_path / "results").glob("replay-*.md")
    rows = {line.split("|")[1].strip(): line for line in out.read_text().splitlines() if line.startswith("| ")}
    assert "| 0% | 0 | yes | none |" in rows["none"] and "| 1 | yes | 2 |" in rows["bound"]  # the bound stops trial 2
    assert "| 0% | 0 | yes | none | none |" in rows["lockstep-none"]
    # TPE's good group held trial 0 (alone at n = 1), then trial 1: the bound's stop of trial 2 leaves it as it was
    assert "| 1 | yes | 2 | none |" in rows["bound"]
    trials = study([recorded(n, seeds) for n, seeds in enumerate(TRIALS)])
    assert rp.good_group_members(trials) == {0, 1}
    assert rp.good_group_members([trials[2], trials[0], trials[1]]) == {2, 1}
    # a setting on another report grid, an unknown study, a bad --orders
    assert rp.main(["sweep=dqn_cartpole", f"baseline={spec}", *OVERRIDES, "--setting", "e: pruner.report_every=20"]) == 2
    assert "setting e: report_every=20, but the baseline's is 10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rp.main(["sweep=dqn_cartpole", f"baseline={tmp_path / 'optuna.db'}:nope", *OVERRIDES])
    assert "no study 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rp.main(["sweep=dqn_cartpole", f"baseline={spec}", "--orders", "1"])
    assert "--orders 1" in capsys.readouterr().err
