"""The sweep's sampler: trial k's draw depends on the seed and k, not on which worker asked for it."""

from __future__ import annotations

import optuna
import pytest

from rlexp.config import ConfigError
from rlexp.sweep import load
from rlexp.sweep.study import SweepSampler, make_sampler

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


def test_bad_sampler_args_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"sampler.args=\{'bogus': 1\} rejected by TPESampler"):
        make_sampler(tpe_sweep("sampler.args={bogus:1}"))
