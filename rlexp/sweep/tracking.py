"""MLflow records of a sweep: one parent run per study, a child run per trial, the seed runs below it.

Tags: every run of a sweep has ``sweep`` (the study name) and ``sweep_role`` (``study``, ``trial``,
``seed`` or ``eval``); trial and seed runs have ``trial`` (the number); child runs have
``mlflow.parentRunId``. A resumed sweep finds its parent run by tag and reuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlexp.tracking import MlflowTracker, flatten, open_experiment, retry_locked, tracking_uri

ROLE = "sweep_role"


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri())


def open_parent(study_name: str, experiment: str, storage: str, definition: Mapping[str, Any],
                known_run_id: str | None = None) -> str:
    """The study's parent run (reused on a resume, found by id or by tag), marked RUNNING."""
    client, exp_id = open_experiment(experiment)
    run_id = None
    if known_run_id:
        try:
            run = retry_locked(lambda: client.get_run(known_run_id))
            if run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active":
                run_id = known_run_id
        except Exception:  # another tracking store than last time
            run_id = None
    if run_id is None:
        run_id = _earliest_parent(client, exp_id, study_name, storage)
    if run_id is None:
        run = retry_locked(lambda: client.create_run(exp_id, run_name=f"sweep-{study_name}", tags={
            "sweep": study_name, ROLE: "study", "optuna_storage": storage}))
        MlflowTracker(client, run.info.run_id).log_params(flatten(dict(definition)))
        # two machines starting at once may both create one: all keep the earliest, drop the others
        run_id = _earliest_parent(client, exp_id, study_name, storage)
        if run_id != run.info.run_id:
            retry_locked(lambda: client.delete_run(run.info.run_id))
    else:
        retry_locked(lambda: client.update_run(run_id, status="RUNNING"))
    return str(run_id)


def _earliest_parent(client: Any, exp_id: str, study_name: str, storage: str) -> str | None:
    def q(s: str) -> str:
        return s.replace("'", "\\'")

    found = retry_locked(lambda: client.search_runs(
        [exp_id], filter_string=f"tags.sweep = '{q(study_name)}' and tags.{ROLE} = 'study' "
                                f"and tags.optuna_storage = '{q(storage)}'", max_results=100))
    if not found:
        return None
    return str(min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id)


def finish_parent(run_id: str, status: str, metrics: Mapping[str, float] | None = None) -> None:
    tracker = MlflowTracker(_client(), run_id)
    if metrics:
        tracker.log_metrics(metrics, step=0)
    tracker.terminate(status)


def log_artifacts(run_id: str, paths: list[Path]) -> None:
    tracker = MlflowTracker(_client(), run_id)
    for path in paths:
        tracker.log_artifact(path)


class TrialRun:
    """The MLflow run of one trial, a child of the study's run."""

    def __init__(self, experiment: str, parent_run_id: str, study_name: str, number: int,
                 params: Mapping[str, Any], seeds: list[int]) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        client, exp_id = open_experiment(experiment)
        run = retry_locked(lambda: client.create_run(exp_id, run_name=f"{study_name}-trial-{number}", tags={
            MLFLOW_PARENT_RUN_ID: parent_run_id, "sweep": study_name, ROLE: "trial", "trial": str(number)}))
        self.run_id: str = run.info.run_id
        self.tracker = MlflowTracker(client, self.run_id)
        self.tracker.log_params({**params, "seeds": seeds})

    def seed_done(self, index: int, value: float, solved_at: int | None, env_steps: int) -> None:
        m = {"seed_value": value, "seed_env_steps": float(env_steps)}
        if solved_at is not None:
            m["seed_episodes_to_solve"] = float(solved_at)
        self.tracker.log_metrics(m, step=index)

    def end(self, state: str, value: float | None, env_steps: int, reason: str | None = None) -> None:
        """``state``: complete | pruned | failed | interrupted."""
        tags = {"state": state, **({"fail_reason": reason[:5000]} if reason else {})}
        self.tracker.set_tags(tags)
        m = {"env_steps": float(env_steps)}
        if value is not None:
            m["objective"] = value
        self.tracker.log_metrics(m, step=0)
        status = {"complete": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED"}.get(state, "FAILED")
        self.tracker.terminate(status)


def close_lost_runs(trial_run_id: str) -> None:
    """A lost trial's run and its still-RUNNING seed runs end FAILED with ``state=lost``."""
    client = _client()
    run = retry_locked(lambda: client.get_run(trial_run_id))
    children = retry_locked(lambda: client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{trial_run_id}'"))
    for r in [run, *children]:
        if r.info.status == "RUNNING":
            tracker = MlflowTracker(client, r.info.run_id)
            tracker.set_tags({"state": "lost", "stop_reason": "worker lost (heartbeat stopped)"})
            tracker.terminate("FAILED")
