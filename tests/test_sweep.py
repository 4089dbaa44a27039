"""Optuna sweeps: definitions and validation, the objective's censoring rule, pruning, failures,
resume after a SIGKILL, and the preset round trip. Tiny budgets; tests write presets to tmp_path."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState, create_trial

from rlexp import compose as rlexp_compose
from rlexp.cli import worker_processes
from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.loops import EpisodeInfo
from rlexp.metrics import episodes_to_solve
from rlexp.sweep import load, preset, run_sweep, runner
from rlexp.sweep import study as st
from rlexp.sweep.__main__ import main
from rlexp.sweep.config import ParamSpec, format_value
from rlexp.sweep.load import SWEEPS_DIR, default_params, param_override, start_points, sweep_names
from rlexp.sweep.objective import Curves, Objective, Pruned, aggregate, seed_value, tail_mean
from rlexp.sweep.preset import pick, validation_table
from rlexp.tracking import store_lock
from rlexp.train import TrainResult, config_dict

from .conftest import PYTHON, cli_env, sigint_default

TINY = ["algo.hidden=[16]", "algo.learning_starts=50", "train.max_episodes=12"]


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides shrinking dqn_cartpole to seconds, storage and preset in tmp_path; no validation
    stage unless ``extra`` asks for one. Such budgets solve nothing: ``preset_unsolved=true`` lets the
    end of a sweep run all the same."""
    return [*TINY, f"storage=sqlite:///{tmp_path / 'optuna.db'}", f"preset_dir={tmp_path / 'presets'}",
            "seeds=[0]", "validation.eval_seeds=0", "pruner.report_every=4", "validation.top=0",
            "preset_unsolved=true", *extra]


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
    ("storage=optuna.db", "storage='optuna.db' must be a URL: sqlite:///optuna.db"),
    ("algo.bogus=1", "base: algo.bogus=1"),
    ("env=nope", "env='nope' is not an option of env/"),
    ('validation.eval_overrides=["algo.gamma=2"]', "validation.eval_overrides: algo.gamma=2.0 must be in (0, 1]"),
    ('validation.eval_overrides=["seed=3"]', "validation.eval_overrides: 'seed=3': the seeds are the sweep's"),
    ("validation.eval_overrides=[nokey]", "validation.eval_overrides='nokey' entries must be key=value overrides"),
    ('validation.eval_overrides=["algo.lr=1e-3"]', "algo.lr is searched (space.algo.lr)"),
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


@pytest.mark.parametrize("name, cls", [
    ("median", optuna.pruners.MedianPruner), ("percentile", optuna.pruners.PercentilePruner),
    ("successive_halving", optuna.pruners.SuccessiveHalvingPruner), ("hyperband", optuna.pruners.HyperbandPruner),
    ("wilcoxon", optuna.pruners.WilcoxonPruner), ("threshold", optuna.pruners.ThresholdPruner),
    ("none", optuna.pruners.NopPruner)])
def test_optunas_pruners_are_chosen_by_name(name, cls):
    args = {"percentile": ["pruner.args={percentile:25.0}"], "threshold": ["pruner.args={upper:1.0}"],
            "none": []}.get(name, ["pruner.args={}"])
    pruner = st.make_pruner(load("dqn_cartpole", [f"pruner.name={name}", *args]).cfg, 300)
    assert type(pruner) is cls
    if name == "hyperband":  # its largest resource is the last step, episode = budget
        assert pruner._max_resource == 300
    bogus = load("dqn_cartpole", [f"pruner.name={name}", "pruner.args={bogus:1}"]).cfg
    if name == "none":  # pruner.name=none switches pruning off whatever the arguments
        assert type(st.make_pruner(bogus, 300)) is cls
    else:
        with pytest.raises(ConfigError, match=rf"pruner.args=\{{'bogus': 1\}} rejected by {cls.__name__}"):
            st.make_pruner(bogus, 300)


def test_a_sweep_file_elsewhere_with_a_bad_range(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("defaults: [base_sweep, _self_]\nbase: [algo=dqn]\n"
                 "space: {algo: {lr: {type: float, low: 1.0e-2, high: 1.0e-3}}}\n")
    with pytest.raises(ConfigError, match=r"space.algo.lr.low=0.01 must be < space.algo.lr.high \(0.001\)"):
        load(str(f))


def test_a_sweep_file_that_is_not_yaml_is_refused_naming_the_file_and_the_place(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("defaults: [base_sweep, _self_]\nbase: [algo=dqn, algo.hidden=[16]]\n")
    with pytest.raises(ConfigError) as e:
        load(str(f))
    assert str(e.value).startswith(f"{f}, line 2, column ")
    assert str(e.value).endswith(": not valid YAML: expected ',' or ']', but got '[' "
                                 "(quote a list item with brackets: - 'algo.hidden=[16]')")


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
                                  "train.max_episodes=4", "pruner.name=none", "validation.eval_seeds=1"))
    result = run_sweep(s)
    (t,) = trials_of(tmp_path)
    assert t.params["algo"] == "clipped_double_dqn" and t.user_attrs["overrides"][0] == "algo=clipped_double_dqn"
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("CartPole-v1").experiment_id],
                              filter_string="tags.sweep_role != 'study'")
    # the trial's seed run and the re-evaluation are named and tagged by the algorithm they ran
    named = sorted((r.data.tags["sweep_role"], r.data.tags["seed"], r.data.tags["algo"]) for r in runs
                   if r.data.tags["sweep_role"] != "trial")
    assert named == [("eval", "1000000", "clipped_double_dqn"), ("seed", "0", "clipped_double_dqn")]
    assert all(r.info.run_name.startswith("clipped_double_dqn-") for r in runs if r.data.tags["sweep_role"] != "trial")
    assert all(r.data.params["algo.clipped"] == "True" for r in runs if "algo.clipped" in r.data.params)
    assert result.preset is not None and "override /algo: clipped_double_dqn" in result.preset.read_text()


# --------------------------------------------------------------------------- objective
def test_censoring_rule_by_hand():
    # B = 500 episodes, penalty P = 500, CartPole threshold 475
    def value(solved_at, last_mean, threshold=475.0):
        return seed_value(solved_at, last_mean, threshold, 500, 500.0)

    assert value(120, 100.0) == 120.0
    assert value(None, 237.5) == 500 + 500 * (1 + 0.5) == 1250.0  # shortfall (475 - 237.5) / 475
    assert value(None, 475.0) == 1000.0 == value(None, 600.0)  # the best an unsolved seed gets
    assert value(None, 9.0) == pytest.approx(500 + 500 * (1 + 466 / 475))
    assert value(None, -1e9) == value(None, None) == 500 + 500 * 2  # the shortfall is at most 1
    assert value(None, -150.0, threshold=-100.0) == 1250.0  # negative thresholds (Acrobot): / max(|thr|, 1)
    assert aggregate([120.0, 1250.0, 200.0], "mean") == pytest.approx(1570 / 3)
    assert aggregate([120.0, 1250.0, 200.0], "median") == 200.0
    # a configuration solving no seed never beats one solving every seed, even at the budget
    assert aggregate([value(None, 475.0)] * 3, "mean") > aggregate([500.0] * 3, "mean")


def _info(ep: int, mean: float, solved: int | None = None) -> EpisodeInfo:
    return EpisodeInfo(ep, mean, 10, ep * 10, mean, solved)


def _trial(reports: list, prune=lambda: False) -> SimpleNamespace:
    """What Curves uses of an Optuna trial: report(value, step) and should_prune()."""
    return SimpleNamespace(report=lambda v, s: reports.append((s, v)), should_prune=prune)


def _curves(n: int, reports: list, prune=lambda: False) -> Curves:
    """B = 100 episodes, reports every 25, CartPole-like threshold 500, penalty 100."""
    return Curves(n, 100, 25, 500.0, 100.0, "mean", _trial(reports, prune))


def test_a_trial_reports_all_its_seeds_at_step_episode_once_every_running_seed_got_there():
    reports: list[tuple[int, float]] = []
    c = _curves(3, reports)
    for ep in range(1, 51):  # seed 0 runs ahead and solves at 50 (its run ends there)
        c(0, _info(ep, 250.0, solved=50 if ep == 50 else None))
    for ep in range(1, 26):
        c(1, _info(ep, 0.0))
    assert reports == []  # seed 2 has not got to episode 25
    for ep in range(1, 26):
        c(2, _info(ep, 475.0))
    # at 25, each seed as if its budget ended there: 100 + 100 * (1 + shortfall) = 250, 300, 205
    assert reports == [(25, pytest.approx((250 + 300 + 205) / 3))]
    for ep in range(26, 51):
        c(1, _info(ep, 0.0))
        c(2, _info(ep, 475.0))
    assert reports[-1] == (50, pytest.approx((50 + 300 + 205) / 3))  # seed 0's run ended: its final value
    done = [TrainResult(True, 50, 50, 500, 1.0, [500.0] * 50), TrainResult(False, None, 100, 1000, 1.0, [0.0] * 100),
            TrainResult(False, None, 100, 1000, 1.0, [475.0] * 100)]
    assert c.finish(done, window=100) == [50.0, 300.0, 205.0]
    # the steps not reported yet get the final values, so the pruner compares the trial at each step
    assert reports[-2:] == [(75, pytest.approx(555 / 3)), (100, pytest.approx(555 / 3))]


def test_the_reports_do_not_depend_on_how_the_batch_is_scheduled():

    rng = np.random.default_rng(0)
    seeds = []
    for _ in range(3):  # climbing noisy returns: some seeds solve (threshold 500, window 10), some not
        rets = list(np.clip(rng.normal(rng.uniform(2, 12) * np.arange(100), 40.0), 0, 700))
        solved = episodes_to_solve(rets, 10, 500.0)
        end = solved or 100
        seeds.append([_info(e, float(np.mean(rets[max(0, e - 10):e])), solved if solved and e >= solved else None)
                      for e in range(1, end + 1)])
    one_after_the_other: list = []
    c = Curves(3, 100, 25, 500.0, 100.0, "mean", _trial(one_after_the_other))
    for i, infos in enumerate(seeds):
        for info in infos:
            c(i, info)
    side_by_side: list = []
    c = Curves(3, 100, 25, 500.0, 100.0, "mean", _trial(side_by_side))
    for e in range(100):
        for i, infos in enumerate(seeds):
            if e < len(infos):
                c(i, infos[e])
    assert one_after_the_other == side_by_side and len(side_by_side) >= 1


def test_the_pruner_is_asked_only_while_a_seed_still_runs():
    asked: list[int] = []

    def prune() -> bool:
        asked.append(1)
        return True

    c = _curves(2, [], prune)
    for ep in range(1, 26):  # seed 0 solves at 25: its run ends at the report
        c(0, _info(ep, 500.0, solved=25 if ep == 25 else None))
    with pytest.raises(Pruned, match="pruned at step 25"):
        for ep in range(1, 26):
            c(1, _info(ep, 0.0))
    assert asked == [1] and c.last_step == 25
    # both runs end at the report: stopping saves nothing, the trial completes whatever the pruner says
    reports: list[tuple[int, float]] = []
    c = _curves(2, reports, prune)
    for i in (0, 1):
        for ep in range(1, 26):
            c(i, _info(ep, 500.0, solved=25 if ep == 25 else None))
    assert asked == [1] and reports == [(e, 25.0) for e in (25, 50, 75, 100)]  # their final values


def test_a_trial_whose_runs_all_ended_completes_even_if_the_pruner_says_stop(tmp_path, monkeypatch):
    """The threshold pruner says stop at every step from ``n_warmup_steps`` on (every value here is
    above 12): from step 4 a 2-seed trial is pruned while its seeds run; from step 12, where both
    runs end, it completes."""
    monkeypatch.chdir(tmp_path)

    def trial(warmup: int) -> optuna.trial.FrozenTrial:
        run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "seeds=[0,1]", "tracking.enabled=false",
                                            "pruner.name=threshold", f"pruner.args={{upper:12.0,n_warmup_steps:{warmup}}}",
                                            f"study_name=w{warmup}")))
        (t,) = trials_of(tmp_path, f"w{warmup}")
        return t

    t = trial(4)
    assert t.state == TrialState.PRUNED and t.last_step == 4 and list(t.intermediate_values) == [4]
    t = trial(12)
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(sum(t.user_attrs["seed_values"]) / 2)
    assert sorted(t.intermediate_values) == [4, 8, 12] and t.intermediate_values[12] == pytest.approx(t.value)


def test_a_finished_seed_is_censored_on_its_last_window():
    assert seed_value(None, tail_mean([0.0, 0.0, 200.0, 300.0], 2), 500.0, 4, 4.0) == 4 + 4 * (1 + 0.5)
    assert seed_value(3, tail_mean([500.0] * 3, 2), 500.0, 4, 4.0) == 3.0
    assert tail_mean([], 2) is None and seed_value(None, None, 500.0, 4, 4.0) == 4 + 4 * 2  # no episode: the worst


def test_budget_counts_and_progress_line():
    def t(state, number, **attrs):
        ft = create_trial(state=state, value=attrs.pop("value", None), user_attrs=attrs)
        ft.number = number
        return ft

    trials = [t(TrialState.COMPLETE, 0, value=300.0), t(TrialState.PRUNED, 1, value=900.0),
              t(TrialState.FAIL, 2, fail_reason="DivergenceError: loss became nan"), t(TrialState.FAIL, 3),
              t(TrialState.COMPLETE, 4, value=250.0), t(TrialState.RUNNING, 5)]
    assert [st.counts(x) for x in trials] == [True, True, True, False, True, False]
    assert [st.outcome(x) for x in trials[2:4]] == ["failed", "lost"]
    assert st.done(trials) == 4 and st.ahead_of(trials, 6) == 5 and st.ahead_of(trials, 3) == 3
    line = st.progress_line("s", trials[4], trials, n_trials=6)
    assert line == "[s] trial 4 COMPLETE value 250.0 | 4/6 done (2 complete, 1 pruned, 1 failed, 1 lost) | best 250.0 (trial 4)"
    assert "FAILED: DivergenceError" in st.progress_line("s", trials[2], trials, 6)
    assert "LOST" in st.progress_line("s", trials[3], trials, 6)
    surplus = t(TrialState.FAIL, 6, surplus=True)
    assert st.outcome(surplus) == "surplus" and not st.counts(surplus) and st.tally([surplus])["lost"] == 0


def test_a_trial_composes_its_config_once_and_its_seeds_differ_by_seed_alone(tmp_path, monkeypatch, mlflow_uri):
    from rlexp import train
    from rlexp.sweep import objective

    composed, batches, checked = [], [], []
    real_check = objective.check_compatible
    for module in (objective, train):  # the algorithm/env check: once per trial, by the objective
        monkeypatch.setattr(module, "check_compatible", lambda cfg: checked.append(cfg) or real_check(cfg))
    real_compose, real_batch = objective.compose_config, objective.run_batch
    monkeypatch.setattr(objective, "compose_config", lambda ovs: composed.append(ovs) or real_compose(ovs))
    monkeypatch.setattr(objective, "run_batch", lambda cfgs, **kw: batches.append(cfgs) or real_batch(cfgs, **kw))
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "seeds=[0,1,2]", "train.max_episodes=4",
                                  "pruner.name=none", "finalize=false"))
    study = optuna.create_study()
    study.optimize(Objective(s, None, None), n_trials=1)  # tracked: the seed runs in MLflow
    s.cfg.base.append("tracking.enabled=false")
    study.optimize(Objective(s, None, None), n_trials=1)  # untracked
    assert len(composed) == 2 == len(checked) and [[c.seed for c in b] for b in batches] == [[0, 1, 2], [0, 1, 2]]
    assert all(dataclasses.replace(c, seed=0) == dataclasses.replace(b[0], seed=0) for b in batches for c in b)


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
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "tracking.enabled=false",
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
    for n in (3, 4):  # added trials run the start point that did not fit first, then sampled ones
        run_sweep(load("dqn_cartpole", tiny(tmp_path, f"n_trials={n}", "tracking.enabled=false",
                                            "train.max_episodes=4")))
    starts = [t.user_attrs.get("start") for t in trials_of(tmp_path)]
    assert starts == ["default", "default algo=clipped_double_dqn", "default algo=dueling_dqn", None]


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


def test_the_commands_wall_time_includes_its_validation_and_re_evaluation(tmp_path, monkeypatch):
    """result.wall_time_s (bench_sweep_seeds' "command" time) spans the whole command, not only
    its trials."""

    monkeypatch.chdir(tmp_path)
    real, started = runner.finalize, []
    monkeypatch.setattr(runner, "finalize", lambda *a: (started.append(time.perf_counter()), time.sleep(1.5), real(*a))[-1])
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
        assert t.state == TrialState.PRUNED and t.last_step == 4
        assert t.intermediate_values[4] > 12 and "seed_values" not in t.user_attrs
        assert 0 < t.user_attrs["env_steps"] < 2 * 12 * 500
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("CartPole-v1")
    runs = client.search_runs([exp.experiment_id])
    by_role = {role: [r for r in runs if r.data.tags.get("sweep_role") == role] for role in ("study", "trial", "seed")}
    assert len(by_role["study"]) == 1 and len(by_role["trial"]) == 2 and len(by_role["seed"]) == 4
    parent = by_role["study"][0].info.run_id
    for r in by_role["trial"]:
        assert r.info.status == "KILLED" and r.data.tags["state"] == "pruned"
        assert r.data.tags["mlflow.parentRunId"] == parent and "algo.lr" in r.data.params
    # the seeds' runs stopped by the pruner end KILLED (a batch run one seed after the other has
    # finished the first by then), under their trial's run
    killed = [r for r in by_role["seed"] if r.info.status == "KILLED"]
    assert len(killed) >= 2 and all(r.data.tags["stop_reason"].startswith("pruned at step 4") for r in killed)
    assert {r.info.status for r in by_role["seed"]} <= {"KILLED", "FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in by_role["seed"]} == {x.info.run_id for x in by_role["trial"]}
    assert result.preset is None  # no complete trial: nothing to write


def test_failed_trial_is_recorded_and_the_preset_reproduces_the_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from rlexp.sweep import objective

    real = objective.run_batch

    def diverge_trial_0(cfgs, **kw):  # a member that fails ends FAILED with its error, the others go on
        if kw["tags"]["trial"] == 0:
            return [TrainResult(False, None, 3, 30, 0.1, [9.0] * 3, status="FAILED",
                                error="DivergenceError: train/loss became nan at env step 7; the run diverged")] * len(cfgs)
        return real(cfgs, **kw)

    monkeypatch.setattr(objective, "run_batch", diverge_trial_0)
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=3", "pruner.name=none", "tracking.enabled=false"))
    result = run_sweep(s)
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"].startswith("seed 0: DivergenceError: train/loss became nan")
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
    assert s.cfg.validation.eval_overrides == []
    assert load("dqn_cartpole").cfg.validation.eval_overrides == ["train.max_episodes=1000"]
    trial_cfg = compose_config([*s.cfg.base, *best.user_attrs["overrides"], *s.cfg.validation.eval_overrides,
                                "seed=3"])
    monkeypatch.setattr(rlexp_compose, "CONF_DIR", conf)
    preset_cfg = compose_config(["+experiment=dqn_cartpole", "seed=3"])
    assert config_dict(preset_cfg) == config_dict(trial_cfg)
    assert preset_cfg.algo.lr == best.params["algo.lr"] and preset_cfg.train.max_episodes == 12


def test_a_sweep_in_which_no_trial_solved_says_so_and_writes_no_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "pruner.name=none", "tracking.enabled=false",
                                  "train.max_episodes=4", "validation.top=2", "preset_unsolved=false"))
    result = run_sweep(s)
    assert result.finished and result.tally["complete"] == 2 and result.best_number is not None
    assert result.preset is None and not (tmp_path / "presets").exists()
    assert result.validated == [] and result.evaluation is None  # no work spent on a pick of unsolved runs
    assert "no trial solved any of its seeds" in capsys.readouterr().err
    assert list(tmp_path.glob("outputs/**/top_trials.md"))  # the ranking is still shown


def test_a_resumed_study_refuses_a_changed_objective(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load("dqn_cartpole", tiny(tmp_path, "n_trials=1", "pruner.name=none", "tracking.enabled=false",
                                  "finalize=false"))
    run_sweep(s)
    with pytest.raises(ConfigError, match=r"seeds=\[5\] differs from \[0\], with which study 'dqn_cartpole'"):
        run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=2", "tracking.enabled=false", "seeds=[5]")))
    assert len(trials_of(tmp_path)) == 1


# --------------------------------------------------------------------------- start points under concurrency
def test_start_points_are_enqueued_once_even_by_two_commands_and_a_lost_one_again(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    points = [("default", {"x": 1}), ("default algo=b", {"x": 2})]
    for _ in range(2):  # two commands that both found the study empty enqueue both points
        for label, params in points:
            study.enqueue_trial(params, user_attrs={"start": label})
    assert st.withdraw(study, n_trials=5) == 2
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING] * 2 + [TrialState.FAIL] * 2
    assert all(t.user_attrs["surplus"] and st.outcome(t) == "surplus" for t in trials[2:])
    assert st.enqueue_start_points(study, points, 5) == []  # both are queued: nothing more
    # a worker that popped a copy before it was withdrawn runs nothing
    study.enqueue_trial({"x": 2}, user_attrs={"start": "default algo=b"})
    assert st.runs_elsewhere(study.get_trials(), 4) and not st.runs_elsewhere(study.get_trials(), 1)
    # trial 0 is popped, then lost to a kill (FAIL with no reason): the next command enqueues it again, once
    storage = study._storage
    assert storage.set_trial_state_values(trials[0]._trial_id, TrialState.RUNNING)
    storage.set_trial_state_values(trials[0]._trial_id, TrialState.FAIL)
    assert st.enqueue_start_points(study, points, 5) == ["default"]
    assert st.enqueue_start_points(study, points, 5) == []
    assert [t.user_attrs.get("start") for t in study.get_trials(states=(TrialState.WAITING,))] == [
        "default algo=b", "default"]  # the copy (trial 4) was withdrawn with the new one's enqueueing
    # once n_trials count, nothing stays queued
    for v in (1.0, 2.0):
        study.add_trial(create_trial(value=v))
    assert st.withdraw(study, n_trials=2) == 2 and not study.get_trials(states=(TrialState.WAITING,))
    assert st.enqueue_start_points(study, points, 2) == []  # no trial left for them


def test_the_same_sweep_started_twice_at_once_runs_each_start_point_once(tmp_path):
    args = [PYTHON, "-m", "rlexp.sweep", "sweep=dqn_cartpole",
            *tiny(tmp_path, "n_trials=3", "train.max_episodes=4", "pruner.name=none", "tracking.enabled=false")]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(e[-3000:] for e in errs)
    trials = trials_of(tmp_path)
    assert st.done(trials) == 3 and sorted(t.user_attrs["start"] for t in trials if st.counts(t)) == [
        "default", "default algo=clipped_double_dqn", "default algo=dueling_dqn"]
    assert all(t.user_attrs.get("surplus") for t in trials if not st.counts(t))
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]


def test_a_worker_goes_on_when_another_worker_finished_the_trial_it_ran(tmp_path, monkeypatch, capsys):
    real = Objective.__call__

    def raced(self, trial):  # as when SQLite hands one queued trial to two workers and the other tells it first
        value = real(self, trial)
        if trial.number == 0:
            trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [value])
        return value

    monkeypatch.setattr(Objective, "__call__", raced)
    result = run_sweep(load("dqn_cartpole", tiny(tmp_path, "n_trials=3", "pruner.name=none", "tracking.enabled=false")))
    assert result.tally["complete"] == 3 and "finished by another worker (Cannot tell a COMPLETE trial" in (
        capsys.readouterr().err)


# --------------------------------------------------------------------------- journal storage
def test_a_journal_file_holds_a_study_resumes_and_fails_a_dead_workers_trial_as_lost(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # journal:///optuna.log is relative to the working folder

    def sweep(n: int):
        ovs = [o for o in tiny(tmp_path, f"n_trials={n}", "pruner.name=none", "tracking.enabled=false",
                               "start_from_default=false") if not o.startswith("storage=")]
        return load("dqn_cartpole", [*ovs, "storage=journal:///optuna.log"])

    assert run_sweep(sweep(2)).tally["complete"] == 2
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.log")))
    study = optuna.load_study(study_name="dqn_cartpole", storage=storage)
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for worker in (f"{st.socket.gethostname()}:{dead.stdout.strip()}", st.worker_id()):  # a dead worker, a live one
        trial = study.ask()
        study._storage.set_trial_user_attr(trial._trial_id, "worker", worker)
    st.fail_lost(study)  # a journal has no heartbeat: the dead process's trial is lost, the live one runs on
    states = [t.state for t in study.get_trials()]
    assert states[2:] == [TrialState.FAIL, TrialState.RUNNING] and "trial 2 LOST" in capsys.readouterr().err
    study.tell(3, state=TrialState.FAIL)  # (this test's own "worker" is done with it)
    result = run_sweep(sweep(3))  # resumes the journal: the lost trial is not counted, one more runs
    assert result.tally == {"complete": 3, "pruned": 0, "failed": 0, "lost": 2, "running": 0}
    assert result.storage == f"journal:///{tmp_path / 'optuna.log'}"


def test_a_journal_in_a_missing_folder_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"storage='journal:///.*/nope/o.log': no folder .*nope for the journal"):
        run_sweep(load("dqn_cartpole", [o for o in tiny(tmp_path, "tracking.enabled=false") if not o.startswith(
            "storage=")] + [f"storage=journal:///{tmp_path / 'nope' / 'o.log'}"]))


# --------------------------------------------------------------------------- resume after SIGKILL
def test_resume_after_sigkill_keeps_finished_trials_and_loses_only_the_running_one(tmp_path):
    args = [PYTHON, "-m", "rlexp.sweep", "sweep=dqn_cartpole",
            *tiny(tmp_path, "n_trials=3", "train.max_episodes=200", "pruner.name=none", "heartbeat_interval=1",
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
            if not any(t.state == TrialState.COMPLETE for t in trials):
                continue
            os.killpg(first.pid, signal.SIGSTOP)  # freeze the study, then look: the trial read is the one killed
            try:
                running = [t for t in trials_of(tmp_path)
                           if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            except Exception:  # frozen mid-write, holding the database's lock
                running = []
            if running:
                victim = running[0].number
                os.killpg(first.pid, signal.SIGKILL)  # mid-trial, no chance to clean up
                break
            os.killpg(first.pid, signal.SIGCONT)  # between trials: let it go on
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
    assert lost.state == TrialState.FAIL and st.outcome(lost) == "lost"  # failed by the heartbeat, not counted
    assert st.done(trials) == 3 and len(trials) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]
    # the three start points (the algo options' defaults) ran once each: the lost one enqueued again
    assert sorted(t.user_attrs["start"] for t in trials if st.counts(t)) == [
        "default", "default algo=clipped_double_dqn", "default algo=dueling_dqn"]
    assert lost.user_attrs["start"] == trials[3].user_attrs["start"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(lost.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["state"] == "lost"
    parents = client.search_runs([run.info.experiment_id], "tags.sweep_role = 'study'")
    assert len(parents) == 1  # reused on resume


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to see child processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_re_evaluation_ends_its_runs_killed_and_leaves_no_process(tmp_path, sig):
    # the re-evaluation (the end of a sweep, and bench_sweep's default config) trains its seeds as
    # one batch: a signal stops every member, whose runs end KILLED, and nothing is left training
    script = ("from rlexp.sweep import evaluate\n"
              "evaluate(['algo=dqn_target', 'algo.hidden=[16]', 'algo.learning_starts=50', 'train.max_episodes=100000',"
              " 'train.save_model=false'], [1, 2, 3], tags={'sweep': 'x', 'sweep_role': 'eval'})\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with store_lock(uri):  # the store made before this test polls it: a poll must not race the run's
        MlflowClient(uri).search_experiments()  # first use, which creates and migrates the schema
    p = subprocess.Popen([PYTHON, "-c", script], cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=uri),
                         stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=sigint_default)
    try:
        training = False
        deadline = time.monotonic() + 180
        while not training and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(Exception):  # the store is not ready yet
                client = MlflowClient(uri)
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
                training = any(r.data.metrics.get("episode_return") is not None for r in runs)
        kids = set(worker_processes(p.pid))
        if training:
            p.send_signal(sig)  # to this process alone, as `kill` does
            p.wait(timeout=180)  # the members' runs end and log what they have
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of its group
            os.killpg(p.pid, signal.SIGKILL)
        err = p.communicate()[1]
    assert training, f"no seed ever started training: {err[-3000:]}"
    assert p.returncode != 0, err[-2000:]
    assert not [k for k in kids if Path(f"/proc/{k}").exists() and "zombie" not in Path(f"/proc/{k}/status").read_text()]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "1" in {r.data.tags["seed"] for r in runs}, err[-3000:]
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
    ("validation.eval_seed_base=2", r"validation.eval_seed_base=2 gives seeds \[2\] that trials run"),
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
                "validation.seeds=2", "validation.eval_seeds=1")
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
