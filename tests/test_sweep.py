"""Optuna sweeps: definitions and validation, the objective's censoring rule, pruning, failures,
resume after a SIGKILL, and the preset round trip. Tiny budgets; tests write presets to tmp_path."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState, create_trial

from rlexp import compose as rlexp_compose
from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.loops import DivergenceError, EpisodeInfo
from rlexp.metrics import episodes_to_solve
from rlexp.sweep import load, preset, run_sweep
from rlexp.sweep import study as st
from rlexp.sweep.__main__ import main
from rlexp.sweep.config import ParamSpec, format_value
from rlexp.sweep.load import SWEEPS_DIR, default_params, param_override, start_points, sweep_names
from rlexp.sweep.objective import (
    Objective,
    Pruned,
    Reporter,
    aggregate,
    best_value,
    earliest_solve,
    grid,
    report_step,
    seed_bound,
    seed_value,
    shortfall,
)
from rlexp.sweep.runner import pick, validation_table
from rlexp.tracking import store_lock
from rlexp.train import RunInterrupted, TrainResult, config_dict

from .conftest import PYTHON, children_once_training, cli_env, sigint_default

TINY = ["algo.hidden=[16]", "algo.learning_starts=50", "train.max_episodes=12"]


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides shrinking dqn_cartpole to seconds, storage and preset in tmp_path; no validation
    stage unless ``extra`` asks for one."""
    return [*TINY, f"storage=sqlite:///{tmp_path / 'optuna.db'}", f"preset_dir={tmp_path / 'presets'}",
            "seeds=[0]", "eval_seeds=0", "pruner.report_every=4", "validation.top=0", *extra]


def trials_of(tmp_path: Path, name: str = "dqn_cartpole") -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


# --------------------------------------------------------------------------- definitions
@pytest.mark.parametrize("name", sweep_names())
def test_shipped_sweeps_validate_against_the_real_config(name):
    base = (SWEEPS_DIR / f"{name}.yaml").read_text()
    algo = next(line.split("=", 1)[1].strip() for line in base.splitlines() if "- algo=" in line)
    if not (rlexp_compose.CONF_DIR / "algo" / f"{algo}.yaml").is_file():
        pytest.skip(f"algo={algo} is not in conf/algo yet")
    sweep = load(name)
    assert sweep.study_name == name and sweep.cfg.n_trials >= 1 and sweep.params


def test_required_sweeps_are_shipped():
    assert {"dqn_cartpole", "dueling_dqn_cartpole", "ppo_cartpole"} <= set(sweep_names())


def test_command_line_keys_go_to_the_definition_or_to_base():
    s = load("dqn_cartpole", ["n_trials=7", "workers=2", "seeds=[1,2,3]", "storage=postgresql://u:pw@h/db",
                              "space.algo.lr.high=1e-2", "~space.algo.batch_size", "train.max_episodes=30",
                              "algo.hidden=[16]", "study_name=mine"])
    assert (s.cfg.n_trials, s.cfg.workers, s.cfg.seeds, s.study_name) == (7, 2, [1, 2, 3], "mine")
    assert s.cfg.base[-2:] == ["train.max_episodes=30", "algo.hidden=[16]"]
    keys = {p.key: p for p in s.params}
    assert "algo.batch_size" not in keys and keys["algo.lr"].high == 1e-2
    assert s.cfg.seed_stride == 0 and s.cfg.trial_seeds(4) == [1, 2, 3]  # dqn_cartpole: common seeds
    assert load("dqn_cartpole", ["seeds=[1,2,3]", "seed_stride=1000"]).cfg.trial_seeds(4) == [4001, 4002, 4003]
    assert st.redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


@pytest.mark.parametrize("override, message", [
    ("n_trial=3", "'n_trial' is neither a key of the sweep definition"),
    ("n_trials=0", "n_trials=0 must be >= 1"),
    ("pruner.bound_rank=0", "pruner.bound_rank=0 must be >= 1"),
    ("sampler.pruned_value=best", "sampler.pruned_value='best' must be one of last, seeds_run"),
    ("workers=abc", "workers=abc"),
    ("space.algo.lr.low=0", "space.algo.lr.low=0 must be > 0 with log: true"),
    ("space.algo.lr.low=0.5", "space.algo.lr.low=0.5 must be < space.algo.lr.high (0.001)"),
    ("space.algo.lr.type=flot", "space.algo.lr.type='flot' must be one of float, int, categorical"),
    ("+space.algo.lrr={type:float,low:1,high:2}", "space.algo.lrr: algo.lrr is not a key of the rlexp config"),
    ("+space.algo.exploration.rate={type:float,low:1,high:2,step:0}", "space.algo.exploration.rate.step=0"),
    ("+space.algo.nope={type:int,low:1,high:2}", "algo.nope is not a key"),
    ("+space.seed={type:int,low:1,high:2}", "space.seed cannot be searched"),
    ("space.algo.batch_size.choices=[32,0]", "algo.batch_size=0 must be >= 1"),
    ("space.algo.exploration.end.high=2.0", "algo.exploration.end=2.0 must be in [0, 1]"),
    ("pruner.name=fast", "pruner.name='fast' must be one of median"),
    ("seeds=[1,1]", "seeds=[1, 1] must be distinct"),
    ("storage=optuna.db", "storage='optuna.db' must be a database URL"),
    ("algo.bogus=1", "base: algo.bogus=1"),
    ("env=nope", "env='nope' is not an option of env/"),
    ('eval_overrides=["algo.gamma=2"]', "eval_overrides: algo.gamma=2.0 must be in (0, 1]"),
    ('eval_overrides=["seed=3"]', "eval_overrides: 'seed=3': the fresh seeds are the sweep's"),
    ("eval_overrides=[nokey]", "eval_overrides='nokey' entries must be key=value overrides"),
    ('eval_overrides=["algo.lr=1e-3"]', "algo.lr is searched (space.algo.lr)"),
    ("+groups.agent=[dqn]", "groups.agent: 'agent' is not a config group; choose among: algo, env"),
    ("groups.algo=[double_dqn,dqn_tagret]", "groups.algo: 'dqn_tagret' is not an option of algo/"),
    ("groups.algo=[]", "groups.algo=[] must list at least one option"),
    ("groups.algo=[dqn,dqn]", "groups.algo=['dqn', 'dqn'] must not repeat an option"),
    # every choice is composed with the space's bounds: DDPG has no epsilon-greedy exploration
    ("groups.algo=[double_dqn,ddpg]", "Key 'exploration' not in 'DDPGConfig'"),
])
def test_bad_definitions_are_refused_with_key_and_value(override, message):
    with pytest.raises(ConfigError) as e:
        load("dqn_cartpole", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_bound_alone_is_a_pruner_setting():
    with pytest.raises(ConfigError, match="pruner.bound=False must be true with pruner.name=bound"):
        load("dqn_cartpole", ["pruner.name=bound", "pruner.bound=false"])
    with pytest.raises(ConfigError, match=r"pruner.name=bound takes only n_startup_trials .*not \['n_warmup_steps'\]"):
        st.make_pruner(load("dqn_cartpole", ["pruner.name=bound", "pruner.args={n_startup_trials:6,n_warmup_steps:150}"]).cfg,
                       300)
    s = load("dqn_cartpole", ["pruner.name=bound", "pruner.args={n_startup_trials:4}"])
    assert isinstance(st.make_pruner(s.cfg, 300), optuna.pruners.NopPruner)


def test_a_sweep_file_elsewhere_with_a_bad_range(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("defaults: [base_sweep, _self_]\nbase: [algo=dqn]\n"
                 "space: {algo: {lr: {type: float, low: 1.0e-2, high: 1.0e-3}}}\n")
    with pytest.raises(ConfigError, match=r"space.algo.lr.low=0.01 must be < space.algo.lr.high \(0.001\)"):
        load(str(f))


def test_cli_error_is_one_line_and_exit_2_before_any_trial(tmp_path, capsys):
    assert main(["sweep=dqn_cartpole", f"storage=sqlite:///{tmp_path / 'o.db'}", "space.algo.lr.low=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rlexp.sweep: error: space.algo.lr.low=-1 must be > 0 with log: true"
    assert not (tmp_path / "o.db").exists()
    assert main(["sweep=nope"]) == 2
    assert "sweep='nope' is not a file of sweeps/" in capsys.readouterr().err


def test_param_specs_and_overrides():
    with pytest.raises(ConfigError, match=r"space.a.b.step=2.5 must be an integer for type: int"):
        ParamSpec("a.b", "int", 1, 4, step=2.5)
    with pytest.raises(ConfigError, match=r"space.x.choices=\[\] must list at least one value"):
        ParamSpec("x", "categorical")
    with pytest.raises(ConfigError, match=r"space.x.step=0.1 cannot be combined with log"):
        ParamSpec("x", "float", 0.1, 1.0, log=True, step=0.1)
    hidden = ParamSpec("algo.hidden", "categorical", choices=([64, 64], [16]))
    assert hidden.optuna_choices() == ["[64,64]", "[16]"]
    assert param_override(hidden, "[16]") == "algo.hidden=[16]"
    assert param_override(ParamSpec("algo.activation", "categorical", choices=("relu",)), "relu") == \
        "algo.activation='relu'"
    assert param_override(ParamSpec("algo.lr", "float", 1e-5, 1e-3, log=True), 1.2345678901234567e-4) == \
        "algo.lr=0.00012345678901234567"
    assert [format_value(v) for v in (None, True, 3, 1e-5)] == ["null", "true", "3", "1e-05"]
    cfg = compose_config(["algo=dqn", "algo.hidden=[16]", "algo.activation='tanh'", "algo.lr=1e-05"])
    assert (cfg.algo.hidden, cfg.algo.activation, cfg.algo.lr) == ([16], "tanh", 1e-5)


def test_group_choices_are_searched_before_the_space():
    s = load("dqn_cartpole")
    algo = s.params[0]
    assert (algo.key, algo.type, algo.choices) == ("algo", "categorical",
                                                   ("double_dqn", "clipped_double_dqn", "dueling_dqn"))
    assert param_override(algo, "dueling_dqn") == "algo=dueling_dqn"  # an option, unquoted
    assert default_params(s)["algo"] == "double_dqn"  # the base's choice starts the study
    # a trial's group choice wins over base's (later override), and the space's keys apply to it
    cfg = compose_config([*s.cfg.base, "algo=dueling_dqn", "algo.tau=0.01"])
    assert cfg.algo.name == "dueling_dqn" and cfg.algo.dueling and cfg.algo.tau == 0.01
    # with no algo= in base, the default is the config's own choice
    s2 = load("dqn_cartpole", ['base=["env=cartpole"]'])
    assert default_params(s2)["algo"] == "double_dqn"
    assert preset.build([*s.cfg.base, "algo=clipped_double_dqn", "algo.lr=0.001"])["defaults"][0] == \
        {"override /algo": "clipped_double_dqn"}


def test_a_group_choice_runs_labels_and_reaches_the_preset(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "groups.algo=[clipped_double_dqn]",
                                  "train.max_episodes=4", "pruner.name=none", "eval_seeds=1"))
    result = run_sweep(s)
    (t,) = trials_of(tmp_path)
    assert t.params["algo"] == "clipped_double_dqn" and t.user_attrs["overrides"][0] == "algo=clipped_double_dqn"
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("CartPole-v1").experiment_id],
                              filter_string="tags.sweep_role != 'study'")
    # the trial's seed run and the re-evaluation are named and tagged by the algorithm they ran
    named = sorted((r.data.tags["sweep_role"], r.info.run_name, r.data.tags["algo"]) for r in runs
                   if r.data.tags["sweep_role"] != "trial")
    assert named == [("eval", "clipped_double_dqn-CartPole-v1-1000000", "clipped_double_dqn"),
                     ("seed", "clipped_double_dqn-CartPole-v1-0", "clipped_double_dqn")]
    assert all(r.data.params["algo.clipped"] == "True" for r in runs if "algo.clipped" in r.data.params)
    assert result.preset is not None and "override /algo: clipped_double_dqn" in result.preset.read_text()


# --------------------------------------------------------------------------- objective
def test_censoring_rule_by_hand():
    # B = 500 episodes, penalty P = 500, CartPole threshold 475
    assert seed_value(120, 500, 500.0) == 120.0
    assert shortfall(237.5, 475.0) == 0.5  # (475 - 237.5) / 475
    assert seed_value(None, 500, 500.0, shortfall(237.5, 475.0)) == 500 + 500 * 1.5 == 1250.0
    assert seed_value(None, 500, 500.0, shortfall(475.0, 475.0)) == 1000.0  # the best an unsolved seed gets
    assert seed_value(None, 500, 500.0, shortfall(9.0, 475.0)) == pytest.approx(500 + 500 * (1 + 466 / 475))
    assert shortfall(600.0, 475.0) == 0.0 and shortfall(-1e9, 475.0) == 1.0
    assert shortfall(-150.0, -100.0) == 0.5  # negative thresholds (Acrobot): / max(|thr|, 1)
    assert aggregate([120.0, 1250.0, 200.0], "mean") == pytest.approx(1570 / 3)
    assert aggregate([120.0, 1250.0, 200.0], "median") == 200.0
    # a configuration solving no seed never beats one solving every seed, even at the budget
    assert aggregate([seed_value(None, 500, 500.0, 0.0)] * 3, "mean") > aggregate([500.0] * 3, "mean")


def test_steps_lay_seed_slots_end_to_end():
    assert report_step(0, 25, 500) == 25 and report_step(2, 10, 500) == 1010
    assert grid(25, 60) == [25, 50, 60] and grid(25, 60, after=50) == [60] and grid(25, 50, after=50) == []
    assert grid(4, 12, after=5) == [8, 12]


def _info(ep: int, mean: float, solved: int | None = None) -> EpisodeInfo:
    return EpisodeInfo(ep, mean, 10, ep * 10, mean, solved)


def test_reporter_reports_the_censored_estimate_and_prunes():
    reports: list[tuple[float, int]] = []
    prune = {"now": False}
    rep = Reporter(lambda v, s: reports.append((v, s)), lambda: prune["now"], index=1, budget=100, every=25,
                   threshold=500.0, penalty=100.0, how="mean", finished=[40.0])
    for ep in range(1, 50):
        rep(_info(ep, 250.0))
    # at episode 25 of seed 1: mean(40, 100 + 100 * (1 + 0.5)) = 145, step 100 + 25
    assert reports == [(145.0, 125)]
    rep(_info(50, 250.0, solved=50))
    assert reports[-1] == (45.0, 150)  # solved at 50: mean(40, 50)
    assert rep.fill(50.0) == 200 and reports[-2:] == [(45.0, 175), (45.0, 200)]
    prune["now"] = True
    rep2 = Reporter(lambda v, s: None, lambda: prune["now"], 0, 100, 25, 500.0, 100.0, "mean")
    with pytest.raises(Pruned, match="pruned at step 25") as e:
        for ep in range(1, 30):
            rep2(_info(ep, 10.0))
    assert isinstance(e.value, RunInterrupted) and rep2.env_steps == 250


def test_a_seed_is_not_stopped_at_the_report_where_its_run_ends():
    # the pruner and the bound both say stop; the report where the run ends anyway stops nothing
    def reporter(**kw) -> Reporter:
        return Reporter(lambda v, s: None, lambda: True, 2, 100, 25, 500.0, 100.0, "mean", [40.0, 60.0], seeds=3,
                        best=lambda: 0.0, **kw)

    reporter()(_info(100, 250.0))  # the budget is spent
    reporter()(_info(75, 500.0, solved=75))  # solved, and the run stops at the solve
    with pytest.raises(Pruned, match="step 275"):  # it would go on after the solve: stopping saves episodes
        reporter(stop_on_solve=False)(_info(75, 500.0, solved=75))
    with pytest.raises(Pruned, match="step 250"):
        reporter()(_info(50, 250.0))


def test_a_trial_whose_last_seed_ran_to_its_end_completes_even_if_the_pruner_says_stop(tmp_path, monkeypatch):
    """The threshold pruner says stop at every step from ``n_warmup_steps`` on (every value here is
    above 12): from step 12, the end of seed 0, a 2-seed trial is pruned there, at the seed's end;
    from step 24, the end of its last seed, it completes."""
    monkeypatch.chdir(tmp_path)

    def trial(warmup: int) -> optuna.trial.FrozenTrial:
        run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "seeds=[0,1]", "tracking.enabled=false",
                                            "pruner.name=threshold", f"pruner.args={{upper:12.0,n_warmup_steps:{warmup}}}",
                                            f"study_name=w{warmup}")))
        (t,) = trials_of(tmp_path, f"w{warmup}")
        return t

    t = trial(12)
    assert t.state == TrialState.PRUNED and t.user_attrs["pruned_at"] == 12
    assert len(t.user_attrs["seed_values_run"]) == 1  # seed 0, recorded; seed 1 not started
    t = trial(24)
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(sum(t.user_attrs["seed_values"]) / 2)
    assert max(t.intermediate_values) == 24


def test_unstarted_seeds_count_as_the_worst_so_values_only_fall_as_a_trial_goes_on():
    # Optuna's pruners judge a trial by its best value so far: a new seed must not look better
    reports: list[tuple[float, int]] = []
    worst = 100 + 100 * 2.0
    r0 = Reporter(lambda v, s: reports.append((v, s)), lambda: False, index=0, budget=100, every=50,
                  threshold=500.0, penalty=100.0, how="mean", seeds=3, window=10)
    r0(_info(50, 250.0))
    assert reports[-1] == (pytest.approx((250.0 + 2 * worst) / 3), 50)  # 100 + 100 * 1.5 = 250
    r0(_info(80, 500.0, solved=80))
    assert r0.fill(80.0) == 100 and reports[-1] == (pytest.approx((80 + 2 * worst) / 3), 100)
    r1 = Reporter(lambda v, s: reports.append((v, s)), lambda: False, 1, 100, 50, 500.0, 100.0, "mean",
                  [80.0], seeds=3, window=10)
    r1(_info(50, 0.0))  # the second seed has learned nothing yet: its budget-end value is the worst
    assert reports[-1] == (pytest.approx((80 + 2 * worst) / 3), 150)
    assert [v for v, _ in reports] == sorted((v for v, _ in reports), reverse=True)


def test_earliest_solve_and_the_seed_bound_by_hand():
    # window 4, threshold 10, every later episode at most 10: the oldest returns leave first
    assert earliest_solve([0, 0, 0, 0], 4, 20, 4, 10.0, 10.0) == 8
    assert earliest_solve([0, 10, 10, 10], 4, 20, 4, 10.0, 10.0) == 5  # the 0 leaves next episode
    assert earliest_solve([10, 10, 10, 0], 4, 20, 4, 10.0, 10.0) == 8  # the 0 is the newest
    assert earliest_solve([10, 10], 2, 20, 4, 10.0, 10.0) == 4  # a full window first
    assert earliest_solve([9, 9], 2, 20, 4, 10.0, 10.0) == 6  # both 9s must leave
    assert earliest_solve([0, 0, 0, 0], 4, 6, 4, 10.0, 10.0) is None
    # too late to solve by the budget (6): censored, with the best mean the last 2 episodes allow
    assert seed_bound([0, 0, 0, 0], 4, 6, 4, 10.0, 6.0, 10.0) == 6 + 6 * (1 + (10 - 5) / 10)
    assert seed_bound([0, 10, 10, 10], 4, 20, 4, 10.0, 20.0, 10.0) == 5.0
    # without max_return: at the next episode, never before a full window, censored past the budget
    assert seed_bound([0, 0], 2, 20, 4, 10.0, 20.0, None) == 4.0
    assert seed_bound([0] * 5, 5, 20, 4, 10.0, 20.0, None) == 6.0
    assert seed_bound([0, 0], 2, 3, 4, 10.0, 3.0, None) == 3 + 3 * 1.0
    assert seed_bound([0, 0, 5, 5], 4, 4, 4, 10.0, 4.0, 10.0) == 4 + 4 * 1.75  # budget spent: exact


def test_the_seed_bound_never_exceeds_the_value_the_seed_ends_with():
    rng = np.random.default_rng(0)
    budget, window, thr, pen = 60, 10, 8.0, 60.0
    for _ in range(200):
        # climbing noisy returns in [0, 10]: some seeds solve, some nearly, some never
        rets = list(np.clip(rng.normal(rng.uniform(0.02, 0.3) * np.arange(budget), 2.0), 0, 10))
        final = episodes_to_solve(rets, window, thr)
        value = (float(final) if final is not None
                 else seed_value(None, budget, pen, shortfall(float(np.mean(rets[-window:])), thr)))
        end = final or budget
        for t in range(1, end):
            for mx in (10.0, None):
                assert seed_bound(rets[:t], t, budget, window, thr, pen, mx) <= value + 1e-9


def test_the_bound_compares_with_the_rank_th_best_complete_trial():
    study = optuna.create_study()
    for v in (5.0, 3.0, 9.0):
        study.add_trial(create_trial(value=v))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 1.0}))
    assert [best_value(study, 0, k) for k in (1, 2, 3, 4)] == [3.0, 5.0, 9.0, None]
    assert best_value(study, 4) is None and best_value(study, 3) == 3.0  # waits for the pruner's start-up
    rep = Reporter(lambda v, s: None, lambda: False, 1, 300, 10, 475.0, 300.0, "mean", [40.0], seeds=3,
                   window=100, best=lambda: 88.0, rank=3, max_return=500.0)
    for ep in range(1, 30):
        rep(EpisodeInfo(ep, 0.0, 10, ep * 10, 0.0, None))
    with pytest.raises(Pruned, match=r"can no longer enter the top 3 complete trials \(pruner.bound_rank=3; "
                                     r"the last of them has 88.0, lower bound 88.3\)"):
        rep(EpisodeInfo(30, 0.0, 10, 300, 0.0, None))


def test_a_trial_that_can_no_longer_beat_the_best_is_pruned():
    reports: list[tuple[float, int]] = []
    # seed 0 solved at 40; seed 1 has its window at 0 after 30 episodes: with returns <= 500 it
    # solves at 30 + 95 = 125 at best, and the last seed at 100: mean >= (40 + 125 + 100) / 3
    rep = Reporter(lambda v, s: reports.append((v, s)), lambda: False, 1, 300, 10, 475.0, 300.0, "mean",
                   [40.0], seeds=3, window=100, best=lambda: 88.0, max_return=500.0)
    for ep in range(1, 30):
        rep(EpisodeInfo(ep, 0.0, 10, ep * 10, 0.0, None))
    with pytest.raises(Pruned, match=r"can no longer beat the best trial's 88.0 \(lower bound 88.3\)"):
        rep(EpisodeInfo(30, 0.0, 10, 300, 0.0, None))
    assert reports[-1][1] == 330  # reported, then stopped
    # the same trial against a best it could still beat goes on; with no complete trial, too
    for best in (lambda: 88.4, lambda: None):
        ok = Reporter(lambda v, s: None, lambda: False, 1, 300, 10, 475.0, 300.0, "mean", [40.0], seeds=3,
                      window=100, best=best, max_return=500.0)
        for ep in range(1, 31):
            ok(EpisodeInfo(ep, 0.0, 10, ep * 10, 0.0, None))


def test_seed_result_censors_on_the_last_window():
    r = TrainResult(False, None, 4, 40, 1.0, [0.0, 0.0, 200.0, 300.0])
    assert Objective.seed_result(r, 2, 500.0, 4, 4.0) == 4 + 4 * (1 + 0.5)
    r = TrainResult(True, 3, 3, 30, 1.0, [500.0, 500.0, 500.0])
    assert Objective.seed_result(r, 2, 500.0, 4, 4.0) == 3.0


def test_budget_counts_and_progress_line():
    def t(state, number, **attrs):
        ft = create_trial(state=state, value=attrs.pop("value", None), user_attrs=attrs)
        ft.number = number
        return ft

    trials = [t(TrialState.COMPLETE, 0, value=300.0), t(TrialState.PRUNED, 1, value=900.0),
              t(TrialState.FAIL, 2, fail_reason="DivergenceError: loss became nan"), t(TrialState.FAIL, 3),
              t(TrialState.COMPLETE, 4, value=250.0), t(TrialState.RUNNING, 5)]
    assert [st.counts(x) for x in trials] == [True, True, True, False, True, False]
    assert st.is_lost(trials[3]) and not st.is_lost(trials[2])
    assert st.done(trials) == 4 and st.ahead_of(trials, 6) == 5 and st.ahead_of(trials, 3) == 3
    line = st.progress_line("s", trials[4], trials, n_trials=6, workers=2)
    assert "[s] trial 4 COMPLETE value 250.0 | 4/6 done (2 complete, 1 pruned, 1 failed, 1 lost)" in line
    assert "best 250.0 (trial 4)" in line and "left" in line
    assert "FAILED: DivergenceError" in st.progress_line("s", trials[2], trials, 6, 1)
    surplus = t(TrialState.FAIL, 6, surplus=True)
    assert not st.counts(surplus) and not st.is_lost(surplus) and st.tally([surplus])["lost"] == 0


def test_a_trial_beyond_n_trials_runs_nothing(tmp_path):
    # another worker started the last needed trial in the same instant: this one is surplus
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "tracking.enabled=false"))
    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0))
    study.optimize(Objective(s, None, None), n_trials=3, catch=(Exception,))
    assert len(study.trials) == 2  # stopped at once
    t = study.trials[1]
    assert t.state == TrialState.FAIL and t.user_attrs == {"surplus": True} and not t.params


# --------------------------------------------------------------------------- whole sweeps (in-process)
def test_a_new_study_starts_from_the_default_config_and_each_group_options(tmp_path):
    """Trial 0 runs the base's values of the searched keys that lie in the space, trial 1 the next
    algo option's own defaults (as many as n_trials allows); the rest is sampled."""
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "tracking.enabled=false", "eval_seeds=0",
                                  "train.max_episodes=4"))
    assert s.cfg.start_from_default
    run_sweep(s)
    t0, t1 = trials_of(tmp_path)
    assert t0.user_attrs["start"] == "default" and t1.user_attrs["start"] == "default algo=clipped_double_dqn"
    assert t0.params["algo"] == "double_dqn" and t0.params["algo.lr"] == 3e-4 and t0.params["algo.tau"] == 0.005
    assert t0.params["algo.batch_size"] == 128
    assert t1.params["algo"] == "clipped_double_dqn" and t1.params["algo.lr"] == 2.5e-4
    assert t1.params["algo.tau"] == 0.012 and t1.params["algo.batch_size"] == 256
    # tiny() sets learning_starts=50, outside the space's [200, 2000]: sampled, not forced
    assert 200 <= t0.params["algo.learning_starts"] <= 2000
    run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=3", "tracking.enabled=false", "eval_seeds=0",
                                        "train.max_episodes=4")))  # adding trials enqueues nothing
    starts = [t.user_attrs.get("start") for t in trials_of(tmp_path)]
    assert starts == ["default", "default algo=clipped_double_dqn", None]


def test_start_points_are_the_default_then_each_other_group_option_without_repeats():
    s = load("dqn_cartpole")
    points = start_points(s)
    assert [label for label, _ in points] == ["default", "default algo=clipped_double_dqn",
                                              "default algo=dueling_dqn"]
    assert points[0][1] == default_params(s) and points[2][1]["algo"] == "dueling_dqn"
    assert all(k == "algo" or s.params[[p.key for p in s.params].index(k)].contains(v)
               for _, params in points for k, v in params.items())
    # one option: only the default; no groups: only the default
    assert [label for label, _ in start_points(load("dqn_cartpole", ["groups.algo=[double_dqn]"]))] == ["default"]
    assert [label for label, _ in start_points(load("ppo_cartpole"))] == ["default"]
    # the base's own option is the default point, not repeated
    assert [label for label, _ in start_points(load("dqn_cartpole", ["algo=dueling_dqn"]))
            ] == ["default", "default algo=double_dqn", "default algo=clipped_double_dqn"]


def test_the_bound_prunes_a_real_trial_that_can_no_longer_beat_the_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def sweep(n: int, *extra: str) -> None:  # the median pruner waits for 3 complete trials, the bound too
        run_sweep(load("dqn_cartpole", tiny(tmp_path, f"n_trials={n}", "tracking.enabled=false",
                                            "pruner.args.n_startup_trials=3", "pruner.bound_rank=1", *extra)))

    sweep(1)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="dqn_cartpole", storage=storage)
    # a complete trial at 20: with 12 episodes and a window of 100 no seed can solve, so every
    # trial here ends >= 12 + 12 (censored, shortfall >= 0) and cannot beat it
    study.add_trial(create_trial(value=20.0))
    sweep(3)  # 2 complete trials: too early to prune, even a trial that cannot win
    assert trials_of(tmp_path)[2].state == TrialState.COMPLETE and trials_of(tmp_path)[2].value > 24
    sweep(4)
    t = trials_of(tmp_path)[3]
    assert t.state == TrialState.PRUNED and t.user_attrs["pruned_at"] == 4
    # bound_rank 4 compares with the 4th best complete value, a trial at 1e6 (the bound alone: the
    # threshold pruner never prunes): the next trial can still enter the top 4 and completes
    study.add_trial(create_trial(value=1.0e6))
    bound_only = ("pruner.name=threshold", "pruner.args={upper:1.0e9}")
    sweep(6, "pruner.bound_rank=4", *bound_only)
    assert trials_of(tmp_path)[5].state == TrialState.COMPLETE

    def pruned_before_its_end_or_complete(number: int) -> None:
        """A trial is pruned before its end (12 episodes, one seed: the report where a seed's run ends
        stops nothing) or completes. One completing outside the top k could still enter it at its
        last check (episode 8); this cannot see that from outside (the rank itself: the unit test
        of best_value and the Reporter above)."""
        t = trials_of(tmp_path)[number]
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["pruned_at"] < 12
        else:
            assert t.state == TrialState.COMPLETE and max(t.intermediate_values) == 12

    sweep(7, "pruner.bound_rank=3", *bound_only)  # the 3rd best is a real trial's (~35)
    pruned_before_its_end_or_complete(6)
    sweep(8, "pruner.bound_rank=2", *bound_only)
    pruned_before_its_end_or_complete(7)
    sweep(9, "pruner.name=none")  # no pruner, no bound
    assert trials_of(tmp_path)[8].state == TrialState.COMPLETE


def test_the_commands_wall_time_includes_its_validation_and_re_evaluation(tmp_path, monkeypatch):
    """result.wall_time_s (bench_sweep_seeds' "command" time) spans the whole command, not only
    its trials."""
    from rlexp.sweep import runner

    monkeypatch.chdir(tmp_path)
    real, started = runner.finalize, []
    monkeypatch.setattr(runner, "finalize", lambda *a: (started.append(time.perf_counter()), time.sleep(1.5), real(*a)))
    sweep = load("dqn_cartpole", tiny(tmp_path, "n_trials=1"))
    t0 = time.perf_counter()
    result = run_sweep(sweep)
    assert started[0] - t0 + 1.5 - 0.1 < result.wall_time_s <= time.perf_counter() - t0


def test_hopeless_trials_are_pruned_and_runs_end_killed(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    # every unsolved estimate is > B = 12, so a ThresholdPruner at 12 must prune at the first report
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "seeds=[0,1]", "pruner.name=threshold",
                                  "pruner.args={upper:12.0}"))
    result = run_sweep(s)
    assert result.tally == {"complete": 0, "pruned": 2, "failed": 0, "lost": 0, "running": 0}
    trials = trials_of(tmp_path)
    for t in trials:
        assert t.state == TrialState.PRUNED and t.user_attrs["pruned_at"] == 4 and t.last_step == 4
        assert t.intermediate_values[4] > 12 and "seed_values" not in t.user_attrs
        # the seed in flight as if its budget had ended at the stop: reported (it + worst) / 2, worst = 12 + 2 * 12
        (in_flight,) = t.user_attrs["seed_values_run"]
        assert in_flight == pytest.approx(2 * t.intermediate_values[4] - 36) and in_flight > 12
        assert 0 < t.user_attrs["env_steps"] < 12 * 500
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("CartPole-v1")
    runs = client.search_runs([exp.experiment_id])
    by_role = {role: [r for r in runs if r.data.tags.get("sweep_role") == role] for role in ("study", "trial", "seed")}
    assert len(by_role["study"]) == 1 and len(by_role["trial"]) == 2 and len(by_role["seed"]) == 2
    parent = by_role["study"][0].info.run_id
    for r in by_role["trial"]:
        assert r.info.status == "KILLED" and r.data.tags["state"] == "pruned"
        assert r.data.tags["mlflow.parentRunId"] == parent and "algo.lr" in r.data.params
    for r in by_role["seed"]:  # the pruned seed run ends KILLED, under its trial's run
        assert r.info.status == "KILLED" and r.data.tags["stop_reason"].startswith("pruned at step 4")
        assert r.data.tags["mlflow.parentRunId"] in {x.info.run_id for x in by_role["trial"]}
    assert result.preset is None  # no complete trial: nothing to write


def test_failed_trial_is_recorded_and_the_preset_reproduces_the_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from rlexp.sweep import objective

    real_run = objective.run

    def diverge_trial_0(cfg, **kw):
        if kw["tags"]["trial"] == 0:
            raise DivergenceError("train/loss became nan at env step 7; the run diverged")
        return real_run(cfg, **kw)

    monkeypatch.setattr(objective, "run", diverge_trial_0)
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=3", "pruner.name=none", "tracking.enabled=false"))
    result = run_sweep(s)
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"].startswith("DivergenceError: train/loss became nan")
    assert result.finished and result.tally["failed"] == 1 and result.tally["complete"] == 2
    # the seeds of trial k are fixed and recorded
    assert [t.user_attrs["seeds"] for t in trials] == [[0], [0], [0]]  # seed_stride: 0
    best = min(trials[1:], key=lambda t: t.value)
    assert result.best_number == best.number and result.preset is not None
    text = result.preset.read_text()
    assert text.startswith("# @package _global_\n") and f"trial {best.number}" in text
    assert "Optuna study 'dqn_cartpole'" in text and "optuna.db" in text
    # the preset, dropped into conf/experiment/, composes to exactly the best trial's config
    conf = tmp_path / "conf"
    shutil.copytree(rlexp_compose.CONF_DIR, conf)
    shutil.copy(result.preset, conf / "experiment" / "dqn_cartpole.yaml")
    # the preset is the trial's config plus the definition's eval_overrides, except the keys set on
    # the command line (tiny() sets train.max_episodes: it holds for the preset too)
    assert s.cfg.eval_overrides == []
    assert load("dqn_cartpole").cfg.eval_overrides == ["train.max_episodes=1000"]
    trial_cfg = compose_config([*s.cfg.base, *best.user_attrs["overrides"], *s.cfg.eval_overrides, "seed=3"])
    monkeypatch.setattr(rlexp_compose, "CONF_DIR", conf)
    preset_cfg = compose_config(["+experiment=dqn_cartpole", "seed=3"])
    assert config_dict(preset_cfg) == config_dict(trial_cfg)
    assert preset_cfg.algo.lr == best.params["algo.lr"] and preset_cfg.train.max_episodes == 12


def test_a_resumed_study_refuses_a_changed_objective(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "pruner.name=none", "tracking.enabled=false",
                                  "finalize=false"))
    run_sweep(s)
    with pytest.raises(ConfigError, match=r"seeds=\[5\] differs from \[0\], with which study 'dqn_cartpole'"):
        run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "tracking.enabled=false", "seeds=[5]")))
    assert len(trials_of(tmp_path)) == 1


# --------------------------------------------------------------------------- resume after SIGKILL
def test_resume_after_sigkill_keeps_finished_trials_and_loses_only_the_running_one(tmp_path):
    args = [PYTHON, "-m", "rlexp.sweep", "sweep=dqn_cartpole",
            *tiny(tmp_path, "n_trials=3", "train.max_episodes=40", "pruner.name=none", "heartbeat_interval=1",
                  "finalize=false")]
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    victim = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
            try:
                trials = trials_of(tmp_path)
            except Exception:  # the study is not created yet
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if any(t.state == TrialState.COMPLETE for t in trials) and running:
                victim = running[0].number
                os.killpg(first.pid, signal.SIGKILL)  # mid-trial, no chance to clean up
                break
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert victim is not None, "the sweep never had a running trial after a complete one"
    before = {t.number: t.value for t in trials_of(tmp_path) if t.state == TrialState.COMPLETE}
    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"trial {victim} LOST" in second.stderr
    trials = trials_of(tmp_path)
    after = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
    assert all(after[k] == v for k, v in before.items())  # finished trials are kept as they were
    lost = trials[victim]
    assert lost.state == TrialState.FAIL and st.is_lost(lost)  # failed by the heartbeat, not counted
    assert st.done(trials) == 3 and len(trials) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(lost.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["state"] == "lost"
    parents = client.search_runs([run.info.experiment_id], "tags.sweep_role = 'study'")
    assert len(parents) == 1  # reused on resume


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to see child processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_re_evaluation_stops_its_workers_and_their_runs_end_killed(tmp_path, sig):
    # the re-evaluation (the end of a sweep, and bench_sweep's default config) trains seeds in a
    # pool of processes: a signal must not leave them training as orphans, nor wait for queued seeds
    script = ("from rlexp.sweep.runner import evaluate\n"
              "evaluate(['algo=dqn_target', 'algo.hidden=[16]', 'algo.learning_starts=50', 'train.max_episodes=100000',"
              " 'train.save_model=false'], [1, 2, 3], workers=2, tags={'sweep': 'x', 'sweep_role': 'eval'})\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with store_lock(uri):  # the store made before this test polls it: a poll must not race the workers'
        MlflowClient(uri).search_experiments()  # first use, which creates and migrates the schema
    p = subprocess.Popen([PYTHON, "-c", script], cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=uri),
                         stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=sigint_default)
    try:
        workers = children_once_training(p, uri, 2)  # both seeds training
        alive: list[int] = []
        if workers:
            p.send_signal(sig)  # to this process alone, as `kill` does
            p.wait(timeout=60)
            time.sleep(0.5)
            alive = [w for w in workers if Path(f"/proc/{w}").exists()
                     and "zombie" not in Path(f"/proc/{w}/status").read_text()]
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of its group, orphans included
            os.killpg(p.pid, signal.SIGKILL)
        err = p.communicate()[1]
    assert workers, f"the two seeds never started training: {err[-3000:]}"
    assert p.returncode != 0, err[-2000:]
    assert not alive, f"worker processes {alive} outlived the interrupted re-evaluation"
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"], err[-3000:]  # seed 3 never started
    assert {r.info.status for r in runs} == {"KILLED"}, err[-3000:]


# --------------------------------------------------------------------------- validation before the pick
def _complete(number: int, seed_values: list[float], solved: list[int | None]) -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.COMPLETE, value=float(np.mean(seed_values)),
                     user_attrs={"seed_values": seed_values, "episodes_to_solve": solved})
    t.number = number
    return t


def test_the_pick_prefers_the_trial_that_holds_on_the_validation_seeds():
    fast_but_fragile = _complete(3, [140.0, 150.0, 160.0], [140, 150, 160])
    steady = _complete(7, [190.0, 200.0, 210.0], [190, 200, 210])
    unfinished = _complete(9, [100.0, 100.0, 100.0], [100, 100, 100])
    records = {"3": {"5": {"value": 150.0, "solved_at": 150}, "6": {"value": 700.0, "solved_at": None}},
               "7": {"5": {"value": 210.0, "solved_at": 210}, "6": {"value": 190.0, "solved_at": 190}},
               "9": {"5": {"value": 100.0, "solved_at": 100}}}  # seed 6 not recorded: left out
    ranked = pick([fast_but_fragile, steady, unfinished], records, [5, 6], "mean")
    assert [v.number for v in ranked] == [7, 3]
    assert ranked[0].value == 200.0 and ranked[0].solved == 5 and ranked[0].seeds == 5
    assert ranked[1].value == pytest.approx((140 + 150 + 160 + 150 + 700) / 5) and ranked[1].solved == 4
    assert ranked[1].trial_value == 150.0 and ranked[1].validation == {5: 150.0, 6: 700.0}
    assert [v.number for v in pick([fast_but_fragile, steady], records, [5, 6], "median")] == [3, 7]  # 150 < 200
    tie = pick([_complete(2, [10.0], [10]), _complete(1, [10.0], [10])],
               {"1": {"5": {"value": 10.0, "solved_at": 10}}, "2": {"5": {"value": 10.0, "solved_at": 10}}}, [5], "mean")
    assert [v.number for v in tie] == [1, 2]
    assert "| 1 | 7 | 200.0 | 5/5 | 200.0 | 190, 200, 210 | 5: 210, 6: 190 |" in validation_table(ranked)


@pytest.mark.parametrize(("override", "message"), [
    ("validation.seed_base=1000003", r"validation.seed_base=1000003 gives seeds \[1000003, 1000004\] that the "
                                     r"re-evaluation uses"),
    ("validation.seed_base=1", r"validation.seed_base=1 gives seeds \[1, 2\] that trials run \(seeds=\[0, 1, 2\], "
                               r"seed_stride=0, n_trials=30\)"),
    ("eval_seed_base=2", r"eval_seed_base=2 gives seeds \[2\] that trials run"),
    ("validation.top=-1", r"validation.top=-1 must be >= 0"),
    ("validation.seeds=-2", r"validation.seeds=-2 must be >= 0"),
])
def test_held_out_seeds_that_trials_or_the_re_evaluation_use_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load("dqn_cartpole", [override])


def test_the_top_trials_are_validated_and_a_stopped_validation_resumes_with_what_is_left(
        tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    args = tiny(tmp_path, "n_trials=3", "pruner.name=none", "train.max_episodes=8", "validation.top=2",
                "validation.seeds=2", "eval_seeds=1")
    result = run_sweep(load("dqn_cartpole", args))
    trials = trials_of(tmp_path)
    top2 = [t.number for t in sorted(trials, key=lambda t: (t.value, t.number))[:2]]
    study = optuna.load_study(study_name="dqn_cartpole", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    records = study.user_attrs["validation"]
    assert sorted(records) == sorted(str(n) for n in top2)
    for rec in records.values():  # 8 episodes never solve CartPole: censored by the trials' rule
        assert sorted(rec) == ["500000", "500001"]
        assert all(r["solved_at"] is None and 8 + 8 < r["value"] <= 8 + 2 * 8 for r in rec.values())
    assert sorted(v.number for v in result.validated) == sorted(top2) and result.picked == result.validated[0]
    assert result.picked.value == pytest.approx(np.mean(
        [*trials[result.picked.number].user_attrs["seed_values"], *(r["value"] for r in records[str(result.picked.number)].values())]))
    # the pick, not the best trial, is re-evaluated and written
    assert result.evaluation is not None and result.preset is not None
    text = result.preset.read_text()
    assert f"trial {result.picked.number} of 3" in text and "validation on held-out seeds [500000, 500001]" in text
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("CartPole-v1").experiment_id

    def runs(role: str) -> list:
        return client.search_runs([exp], filter_string=f"tags.sweep_role = '{role}'")

    (parent,) = runs("study")
    validation_runs = runs("validate")
    assert sorted((int(r.data.tags["trial"]), int(r.data.params["seed"])) for r in validation_runs) == \
        sorted((n, s) for n in top2 for s in (500000, 500001))
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in validation_runs)
    assert int(runs("eval")[0].data.tags["trial"]) == result.picked.number
    assert parent.data.metrics["picked_trial"] == result.picked.number
    assert "validation.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # a validation stopped after 3 of its 4 runs: the same command runs the one left, nothing else
    records[str(top2[1])].pop("500001")
    study.set_user_attr("validation", records)
    again = run_sweep(load("dqn_cartpole", args))
    assert len(runs("validate")) == 5 and again.picked is not None
    assert sorted(study.user_attrs["validation"][str(top2[1])]) == ["500000", "500001"]
