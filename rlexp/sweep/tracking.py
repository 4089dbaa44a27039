"""MLflow records of a sweep: one parent run per study, a child run per trial, the seed runs below it.

Every run of a sweep has the tags ``sweep`` (the study name) and ``sweep_role`` (``study``, ``trial``,
``seed``, ``validate`` or ``eval``); trial and seed runs have ``trial`` (the number); child runs have
``mlflow.parentRunId``. A resumed sweep finds its parent run by tag and reuses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlexp.tracking import MlflowTracker, flatten, open_experiment, retry_locked, tracking_uri

STATUS = {"complete": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED", "failed": "FAILED"}


def open_parent(study_name: str, experiment: str, storage: str, definition: Mapping[str, Any],
                known_run_id: str | None = None) -> str:
    """The study's parent run (reused on a resume, found by id or by tag), marked RUNNING."""
    client, exp_id = open_experiment(experiment)
    run_id = None
    with contextlib.suppress(Exception):  # a known id from another tracking store than this one
        run = retry_locked(lambda: client.get_run(known_run_id)) if known_run_id else None
        if run and run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active":
            run_id = known_run_id
    run_id = run_id or _earliest_parent(client, exp_id, study_name, storage)
    if run_id is not None:
        retry_locked(lambda: client.update_run(run_id, status="RUNNING"))
        return str(run_id)
    run = retry_locked(lambda: client.create_run(exp_id, run_name=f"sweep-{study_name}", tags={
        "sweep": study_name, "sweep_role": "study", "optuna_storage": storage}))
    MlflowTracker(client, run.info.run_id).log_params(flatten(dict(definition)))
    # two machines starting at once may both create one: all keep the earliest, drop the others
    run_id = _earliest_parent(client, exp_id, study_name, storage)
    if run_id != run.info.run_id:
        retry_locked(lambda: client.delete_run(run.info.run_id))
    return str(run_id)


def _earliest_parent(client: Any, exp_id: str, study_name: str, storage: str) -> str | None:
    name, url = (s.replace("'", "\\'") for s in (study_name, storage))  # quoted for the filter
    found = retry_locked(lambda: client.search_runs(
        [exp_id], filter_string=f"tags.sweep = '{name}' and tags.sweep_role = 'study' "
                                f"and tags.optuna_storage = '{url}'", max_results=100))
    return str(min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id) if found else None


def end_run(run_id: str, status: str, metrics: Mapping[str, float] | None = None,
            tags: Mapping[str, str] | None = None, artifacts: tuple[Path, ...] = ()) -> None:
    """End a parent or trial run with its last metrics, tags and artifacts."""
    from mlflow import MlflowClient

    tracker = MlflowTracker(MlflowClient(tracking_uri()), run_id)
    if tags:
        tracker.set_tags(tags)
    if metrics:
        tracker.log_metrics(metrics, step=0)
    for path in artifacts:
        tracker.log_artifact(path)
    tracker.terminate(status)


def start_trial_run(experiment: str, parent_run_id: str, study_name: str, number: int,
                    params: Mapping[str, Any], seeds: list[int]) -> str:
    """The MLflow run of one trial, a child of the study's run; returns its id."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client, exp_id = open_experiment(experiment)
    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, "sweep": study_name, "sweep_role": "trial",
            "trial": str(number)}
    run = retry_locked(lambda: client.create_run(exp_id, run_name=f"{study_name}-trial-{number}", tags=tags))
    MlflowTracker(client, run.info.run_id).log_params({**params, "seeds": seeds})
    return str(run.info.run_id)


def close_lost_runs(trial_run_id: str) -> None:
    """A lost trial's run and its still-RUNNING seed runs end FAILED with ``state=lost``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    run = retry_locked(lambda: client.get_run(trial_run_id))
    children = retry_locked(lambda: client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{trial_run_id}'"))
    tags = {"state": "lost", "stop_reason": "worker lost (heartbeat stopped)"}
    for r in [run, *children]:
        if r.info.status == "RUNNING":
            end_run(r.info.run_id, "FAILED", tags=tags)
