"""The sweep's sampler: trial k's draw depends on the seed and k, not on which worker asked for
it; and it learns from pruned trials, by their last reported value or by the seeds they ran."""

from __future__ import annotations

import optuna
import pytest

from rlexp.config import ConfigError
from rlexp.sweep import load
from rlexp.sweep.study import PrunedAsComplete, SweepSampler, last_value, make_sampler, seeds_run_value

SPACE = {"x": optuna.distributions.FloatDistribution(0.0, 1.0), "n": optuna.distributions.IntDistribution(1, 64)}


def draws(sampler_for_worker, schedule: list[int]) -> dict[int, dict]:
    """Trials asked by workers in ``schedule`` order (worker index per trial), each with its own
    sampler on one shared storage, as spawned workers are; returns trial number -> params."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s")
    workers = {w: optuna.load_study(study_name="s", storage=storage, sampler=sampler_for_worker(w))
               for w in set(schedule)}
    out = {}
    for w in schedule:
        t = workers[w].ask(SPACE)
        out[t.number] = t.params
        workers[w].tell(t, t.params["x"] + t.params["n"] / 64)
    return out


def tpe_sweep(*extra: str):
    return load("dqn_cartpole", ["sampler.name=tpe", "sampler.seed=3", "sampler.args={n_startup_trials:4}", *extra]).cfg


def test_a_trial_draws_the_same_whichever_worker_asks_for_it():
    cfg = tpe_sweep()
    one = draws(lambda w: make_sampler(cfg), [0] * 8)
    two = draws(lambda w: make_sampler(cfg), [0, 1, 1, 0, 1, 0, 0, 1])
    assert one == two  # the 4 random start-up trials and the 4 TPE ones after them
    assert len({tuple(p.values()) for p in one.values()}) == 8
    # one seed per worker repeats the other worker's draws; a seed offset per worker (what rlexp did
    # until session 6) makes the draws depend on which worker asks
    plain = draws(lambda w: optuna.samplers.TPESampler(seed=3, n_startup_trials=4), [0, 1])
    assert plain[0] == plain[1]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_seed_changes_the_draws_and_qmc_keeps_one_seed():
    assert draws(lambda w: make_sampler(tpe_sweep()), [0] * 3) != draws(
        lambda w: make_sampler(tpe_sweep("sampler.seed=4")), [0] * 3)
    # sweeps with seeds 3 and 4 do not share draws one trial apart (seed + trial number would)
    three, four = draws(lambda w: make_sampler(tpe_sweep()), [0] * 3), draws(
        lambda w: make_sampler(tpe_sweep("sampler.seed=4")), [0] * 3)
    assert three[1] != four[0] and three[2] != four[1]
    unseeded = make_sampler(tpe_sweep("sampler.seed=null"))
    assert isinstance(unseeded, SweepSampler) and unseeded._seed is None
    qmc = load("dqn_cartpole", ["sampler.name=qmc", "sampler.seed=1", "sampler.args={}"]).cfg
    one = draws(lambda w: make_sampler(qmc), [0] * 4)
    assert one == draws(lambda w: optuna.samplers.QMCSampler(seed=1), [0] * 4)  # the study's one sequence


def pruned_study() -> optuna.Study:
    """Complete trials near x=0.9 that scored badly; pruned ones near x=0.1 whose last value was better."""
    study = optuna.create_study()
    dist = {"x": SPACE["x"]}
    for i in range(10):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.9 + i / 200}, distributions=dist, value=100.0 + i))
        study.add_trial(optuna.trial.create_trial(params={"x": 0.1 + i / 200}, distributions=dist,
                                                  state=optuna.trial.TrialState.PRUNED,
                                                  intermediate_values={1: 90.0, 2: 10.0 + i}))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist,
                                              state=optuna.trial.TrialState.PRUNED))  # never reported
    return study


def test_the_view_shows_pruned_trials_as_complete_with_their_last_value():
    view = PrunedAsComplete(pruned_study())
    complete = view._get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 20 and sorted(t.value for t in complete)[:2] == [10.0, 11.0]
    (silent,) = view.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert silent.params == {"x": 0.5}
    assert view.direction == optuna.study.StudyDirection.MINIMIZE  # the rest is the study's


@pytest.mark.parametrize("consider_pruned, near", [(True, 0.1), (False, 0.9)])
def test_tpe_proposes_near_the_pruned_trials_that_got_further_only_if_it_considers_them(consider_pruned, near):
    cfg = tpe_sweep(f"sampler.consider_pruned={str(consider_pruned).lower()}")
    study = pruned_study()
    study.sampler = make_sampler(cfg)
    xs = []
    for _ in range(12):
        t = study.ask({"x": SPACE["x"]})
        xs.append(t.params["x"])
        study.tell(t, state=optuna.trial.TrialState.FAIL)  # not seen by TPE: every draw from the same data
    assert abs(sorted(xs)[6] - near) < 0.2, xs


def unsolved_and_stopped_study() -> optuna.Study:
    """What a pruned dqn_cartpole sweep looks like to its sampler: complete trials near x=0.9 that
    solved no seed (values 610-700), pruned trials near x=0.1 that solved two seeds (~200) before the
    third was stopped, whose last reported values count that third seed as the worst (~840)."""
    study = optuna.create_study()
    dist = {"x": SPACE["x"]}
    for i in range(10):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.9 + i / 200}, distributions=dist, value=610.0 + 10 * i,
                                                  user_attrs={"episodes_to_solve": [None, None, None]}))
        run = [190.0 + i, 200.0, 850.0]  # two solved seeds and the one in flight at the stop
        study.add_trial(optuna.trial.create_trial(params={"x": 0.1 + i / 200}, distributions=dist,
                                                  state=optuna.trial.TrialState.PRUNED,
                                                  intermediate_values={700: (sum(run[:2]) + 900.0) / 3 + 280},
                                                  user_attrs={"seed_values_run": run}))
    return study


def test_seeds_run_values_a_pruned_trial_over_the_seeds_it_ran():
    (t, *_) = unsolved_and_stopped_study().get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert seeds_run_value("mean")(t) == pytest.approx((190 + 200 + 850) / 3)
    assert seeds_run_value("median")(t) == 200.0
    assert last_value(t) > 700  # pessimistic: worse than every complete trial there
    old = optuna.trial.create_trial(params={}, distributions={}, state=optuna.trial.TrialState.PRUNED,
                                    intermediate_values={3: 800.0, 5: 750.0})  # a study from before the record
    assert seeds_run_value("mean")(old) == last_value(old) == 750.0
    view = PrunedAsComplete(unsolved_and_stopped_study(), seeds_run_value("mean"))
    best = min(view.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    assert best.params["x"] == pytest.approx(0.1) and best.value == pytest.approx(1240 / 3)


@pytest.mark.parametrize("overrides, near", [
    (["sampler.consider_pruned=true", "sampler.pruned_value=seeds_run"], 0.1),
    (["sampler.consider_pruned=true", "sampler.pruned_value=last"], 0.9),
    (["sampler.consider_pruned=false", "sampler.pruned_value=seeds_run"], 0.9),  # pruned_value needs consider_pruned
])
def test_tpe_proposes_near_trials_stopped_after_solving_seeds_only_if_it_values_them_by_the_seeds_run(overrides, near):
    study = unsolved_and_stopped_study()
    study.sampler = make_sampler(tpe_sweep(*overrides))
    xs = []
    for _ in range(12):
        t = study.ask({"x": SPACE["x"]})
        xs.append(t.params["x"])
        study.tell(t, state=optuna.trial.TrialState.FAIL)  # not seen by TPE: every draw from the same data
    assert abs(sorted(xs)[6] - near) < 0.3, xs  # the median draw: on the side of the good group


def test_bad_sampler_args_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"sampler.args=\{'bogus': 1\} rejected by TPESampler"):
        make_sampler(tpe_sweep("sampler.args={bogus:1}"))
