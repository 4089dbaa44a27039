"""Several workers, on "two machines", run one study through a shared PostgreSQL: no trial lost or
run twice, and the MLflow child runs match the trials. Start a server with ``eval "$(.ci/postgres.sh)"``.
The same check on one SQLite file (several processes of one machine) runs with ``-m slow``."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections import Counter

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from rlexp.sweep import study as st

from .conftest import PYTHON, cli_env

URL = os.environ.get("RLEXP_TEST_POSTGRES_URL")

STORAGES = [
    pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.skipif(
        not URL, reason='RLEXP_TEST_POSTGRES_URL is unset: run eval "$(.ci/postgres.sh)" first')]),
    pytest.param("sqlite", marks=pytest.mark.slow),
]

STATES = {TrialState.COMPLETE: ("complete", "FINISHED"), TrialState.PRUNED: ("pruned", "KILLED"),
          TrialState.FAIL: ("failed", "FAILED")}


@pytest.mark.parametrize("kind", STORAGES)
def test_two_machines_three_workers_share_one_study(tmp_path, kind):
    url = URL if kind == "postgres" else f"sqlite:///{tmp_path / 'optuna.db'}"
    assert url is not None
    study_name = f"pg-{uuid.uuid4().hex[:8]}"
    n = 6
    common = [PYTHON, "-m", "rlexp.sweep", "sweep=dqn_cartpole", f"storage={url}", f"study_name={study_name}",
              f"n_trials={n}", "seeds=[0]", "seed_stride=1000", "train.max_episodes=16", "algo.hidden=[16]", "algo.learning_starts=50",
              "pruner.report_every=4", "pruner.args={n_startup_trials:2,n_warmup_steps:4}", "validation.eval_seeds=1",
              f"preset_dir={tmp_path / 'presets'}", "heartbeat_interval=2"]
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    main = subprocess.Popen([*common, "workers=2"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    helper = subprocess.Popen([*common, "workers=1", "finalize=false"], cwd=tmp_path, env=env,
                              stderr=subprocess.PIPE, text=True)
    _, err_main = main.communicate(timeout=600)
    _, err_helper = helper.communicate(timeout=600)
    assert main.returncode == 0, err_main[-3000:]
    assert helper.returncode == 0, err_helper[-3000:]

    trials = optuna.load_study(study_name=study_name, storage=st.make_storage(url, 2)).get_trials()
    counted = [t for t in trials if st.counts(t)]
    # every trial number 0..n-1 exactly once, each finished; nothing lost, nothing extra but a
    # "surplus" trial a worker may have asked for in the same instant the last one started
    assert sorted(t.number for t in counted) == list(range(n))
    assert all(t.state in STATES for t in counted)
    assert not [t for t in trials if t.state == TrialState.RUNNING or st.outcome(t) == "lost"]
    assert all(t.user_attrs.get("surplus") for t in trials if not st.counts(t))
    assert len({tuple(t.user_attrs["seeds"]) for t in counted}) == n  # no trial ran twice

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("CartPole-v1")
    runs = client.search_runs([exp.experiment_id], f"tags.sweep = '{study_name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags["sweep_role"] == "study"]
    assert len(parents) == 1, "both machines must share one parent run"
    children = [r for r in runs if r.data.tags["sweep_role"] == "trial"]
    assert Counter(int(r.data.tags["trial"]) for r in children) == Counter(range(n))
    by_number = {int(r.data.tags["trial"]): r for r in children}
    for t in counted:
        r = by_number[t.number]
        assert (r.data.tags["state"], r.info.status) == STATES[t.state]
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.info.run_id == t.user_attrs["mlflow_run_id"]
    seeds = [r for r in runs if r.data.tags["sweep_role"] == "seed"]
    assert Counter(r.data.tags["mlflow.parentRunId"] for r in seeds) == Counter(r.info.run_id for r in children)
    assert "preset written" in err_main and "preset written" not in err_helper


def test_a_storage_whose_tables_another_process_is_creating_is_retried_not_refused(monkeypatch):
    """Two workers starting on a new database both create Optuna's tables; the loser's duplicate
    key is waited out, while any other storage error is refused at once with the storage named."""
    import sqlalchemy.exc

    from rlexp.config import ConfigError

    calls = []
    real = optuna.storages.RDBStorage

    def racing(url, **kw):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TABLE studies", {}, Exception(
                'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))
        return real(url, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    assert isinstance(st.make_storage("sqlite:///:memory:", 2), real) and len(calls) == 2

    def broken(url, **kw):
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(ConfigError, match=r"storage='sqlite:///:memory:': OperationalError"):
        st.make_storage("sqlite:///:memory:", 2)
    assert len(calls) == 1  # not a race: no retry


RACE = """
import sys
from rlexp.sweep import study as st
st.make_storage(sys.argv[1], 2)
print("ok")
"""


@pytest.mark.postgres
@pytest.mark.skipif(not URL, reason='RLEXP_TEST_POSTGRES_URL is unset: run eval "$(.ci/postgres.sh)" first')
def test_workers_starting_together_on_a_new_postgres_schema_all_get_the_storage():
    import sqlalchemy

    schema = f"race_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(st.with_driver(URL))
    with engine.begin() as c:
        c.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        url = f"{URL}?options=-csearch_path%3D{schema}"
        procs = [subprocess.Popen([PYTHON, "-c", RACE, url], env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
        with engine.connect() as c:  # the tables went into the new schema, once
            n = c.execute(sqlalchemy.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s "
                                          "AND table_name = 'studies'"), {"s": schema}).scalar()
        assert n == 1
    finally:
        with engine.begin() as c:
            c.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
