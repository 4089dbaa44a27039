"""Read training runs from any MLflow tracking URI into two tidy tables.

``runs``: one row per run (:data:`RUN_COLUMNS` plus one ``param.<dotted key>`` column per
logged param). ``episodes``: one row per finished episode (:data:`EPISODE_COLUMNS`), read from
each run's ``episodes.csv`` artifact (falling back to the ``episode_return``/``episode_length``
metric histories when the artifact is missing). Runs tagged ``report`` and runs that hold other runs
(a multirun's parent, a sweep's study and trial runs) are always skipped.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rlexp.runs import stale_reason
from rlexp.tracking import ROLE_TAG
from rlexp.tracking import tracking_uri as default_tracking_uri

RUN_COLUMNS = [
    "run_id",
    "run_name",
    "experiment_id",
    "status",
    "algo",
    "env",
    "seed",
    "group",
    "sweep",
    "trial",
    "solved",
    "episodes_to_solve",
    "episodes",
    "env_steps",
    "wall_time_s",
    "sps",
    "start_time",
    "git_commit",
    "cpu",
    "budget",
]
EPISODE_COLUMNS = ["run_id", "algo", "env", "seed", "episode", "return", "length", "env_step", "wall_time_s"]
_FINAL_METRICS = ("episodes_to_solve", "episodes", "env_steps", "wall_time_s", "sps")


class CollectionError(ValueError):
    """Nothing to analyse: unknown experiment or no matching runs. The message is one line."""


@dataclass(frozen=True)
class RunQuery:
    """Which runs to read; empty sequences mean "any". Values within one field are OR-ed."""

    experiment: str | None = None  # experiment name; None: the experiments of ``run_ids``
    algos: Sequence[str] = ()
    envs: Sequence[str] = ()
    groups: Sequence[str] = ()  # multirun group tag
    sweeps: Sequence[str] = ()  # Optuna study name tag
    tags: Mapping[str, str] = field(default_factory=dict)  # extra tag equalities, AND-ed
    run_ids: Sequence[str] = ()
    statuses: Sequence[str] = ("FINISHED", "FAILED", "KILLED")  # FAILED/KILLED: censored where they stopped
    exclude_run_ids: Sequence[str] = ()

    def describe(self) -> str:
        """Human-readable summary of the filter, for messages and the report."""
        parts = [f"experiment={self.experiment!r}"] if self.experiment else []
        for name in ("algos", "envs", "groups", "sweeps", "run_ids"):
            if vals := getattr(self, name):
                parts.append(f"{name}={','.join(vals)}")
        parts += [f"tag {k}={v}" for k, v in self.tags.items()]
        if self.exclude_run_ids:
            parts.append(f"not runs {','.join(self.exclude_run_ids)}")
        parts.append(f"status in {','.join(self.statuses)}")
        return "; ".join(parts)


@dataclass
class Collection:
    """The tidy tables plus what was left out and where the data came from."""

    runs: pd.DataFrame
    episodes: pd.DataFrame
    tracking_uri: str
    experiment_ids: list[str]
    excluded: dict[str, int]  # status -> number of matching runs left out
    stale: dict[str, str] = field(default_factory=dict)  # run id -> why it is stale (RUNNING, process gone)

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``runs.csv`` and ``episodes.csv`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = out / "runs.csv", out / "episodes.csv"
        self.runs.to_csv(paths[0], index=False)
        self.episodes.to_csv(paths[1], index=False)
        return paths


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def filter_string(query: RunQuery) -> str:
    """Server-side MLflow filter for the single-valued parts of ``query`` (the rest is filtered locally).

    MLflow's search syntax has no OR and no ``IN`` on tags, so multi-valued tag filters are
    applied in :func:`matches`; ``IN`` works for run ids.
    """
    clauses = []
    for tag, vals in (
        ("algo", query.algos),
        ("env", query.envs),
        ("group", query.groups),
        ("sweep", query.sweeps),
    ):
        if len(vals) == 1:
            clauses.append(f"tags.{tag} = {_quote(vals[0])}")
    clauses += [f"tags.`{k}` = {_quote(v)}" for k, v in query.tags.items()]
    if query.run_ids:
        clauses.append(f"attributes.run_id IN ({', '.join(_quote(r) for r in query.run_ids)})")
    return " AND ".join(clauses)


def matches(run: Run, query: RunQuery) -> bool:
    """Whether ``run`` passes every filter of ``query`` except the status filter."""
    tags = run.data.tags
    if "report" in tags or ROLE_TAG in tags or tags.get("sweep_role") in ("study", "trial"):
        return False  # a report, or a run that holds other runs (a multirun's or a sweep's parent, a trial)
    for tag, vals in (
        ("algo", query.algos),
        ("env", query.envs),
        ("group", query.groups),
        ("sweep", query.sweeps),
    ):
        if vals and tags.get(tag) not in vals:
            return False
    if any(tags.get(k) != v for k, v in query.tags.items()):
        return False
    if run.info.run_id in query.exclude_run_ids:
        return False
    return not query.run_ids or run.info.run_id in query.run_ids


def _metric(metrics: Mapping[str, float], key: str) -> float:
    v = metrics.get(key)
    return float(v) if v is not None else math.nan


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _float_or_nan(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def run_row(run: Run) -> dict[str, object]:
    """One tidy row from an MLflow run (tags first, params as fallback, ``param.*`` columns).

    ``solved`` is derived from ``episodes_to_solve`` being logged (the contract logs it only
    when solved); a disagreeing ``solved`` metric raises a warning.
    """
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    e2s = _metric(metrics, "episodes_to_solve")
    solved = not math.isnan(e2s)
    if "solved" in metrics and bool(metrics["solved"]) != solved:
        warnings.warn(
            f"run {run.info.run_id}: solved={metrics['solved']} but episodes_to_solve "
            f"{'missing' if not solved else e2s}; using episodes_to_solve",
            stacklevel=2,
        )
    row: dict[str, object] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "algo": tags.get("algo", params.get("algo.name")),
        "env": tags.get("env", params.get("env.id")),
        "seed": _int_or_none(tags.get("seed", params.get("seed"))),
        "group": tags.get("group"),
        "sweep": tags.get("sweep"),
        "trial": _int_or_none(tags.get("trial")),
        "solved": solved,
        **{k: _metric(metrics, k) for k in _FINAL_METRICS},
        "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
        "git_commit": tags.get("mlflow.source.git.commit"),
        "cpu": tags.get("runtime.cpu"),  # seeded runs reproduce only on the same CPU type
        "budget": _float_or_nan(params.get("train.max_episodes")),  # planned episodes
    }
    row.update({f"param.{k}": v for k, v in sorted(params.items())})
    return row


def runs_table(runs: Iterable[Run]) -> pd.DataFrame:
    """Tidy run table (see module docstring) from MLflow run objects."""
    table = pd.DataFrame([run_row(r) for r in runs])
    if table.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    table[["algo", "env"]] = table[["algo", "env"]].fillna("(unknown)")  # groupby would drop None
    table["seed"] = table["seed"].astype("Int64")
    table["trial"] = table["trial"].astype("Int64")
    return table.sort_values(["env", "algo", "seed", "run_id"], ignore_index=True)


def _episodes_from_metrics(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """Episodes from the metric histories: at step = env step with the ``episode`` metric naming
    each episode (episodes that end at the same env step pair up in logging order), or, for runs
    recorded before the env-step axis, at step = episode."""
    hist = {
        key: sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        for key in ("episode_return", "episode_length", "episode")
    }
    if hist["episode"]:
        numbered = pd.DataFrame(
            {"episode": [int(m.value) for m in hist["episode"]], "env_step": [m.step for m in hist["episode"]]}
        )
        at = numbered.assign(k=numbered.groupby("env_step").cumcount())
        for key, col in (("episode_return", "return"), ("episode_length", "length")):
            values = pd.DataFrame({"env_step": [m.step for m in hist[key]], col: [m.value for m in hist[key]]})
            at = at.merge(values.assign(k=values.groupby("env_step").cumcount()), on=["env_step", "k"], how="left")
        at = at.sort_values("episode", ignore_index=True)
        return at.assign(wall_time_s=np.nan)[["episode", "return", "length", "env_step", "wall_time_s"]]
    returns = {m.step: m.value for m in hist["episode_return"]}
    lengths = {m.step: m.value for m in hist["episode_length"]}
    eps = sorted(returns)
    return pd.DataFrame(
        {
            "episode": eps,
            "return": [returns[e] for e in eps],
            "length": [lengths.get(e, np.nan) for e in eps],
            "env_step": np.nan,
            "wall_time_s": np.nan,
        }
    )


def read_episodes(client: MlflowClient, run_id: str, tmp: Path) -> pd.DataFrame:
    """One run's ``episodes.csv`` artifact, or its metric histories when the artifact is absent."""
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path="episodes.csv",
            dst_path=str(tmp / run_id),
            tracking_uri=client.tracking_uri,
        )
        table = pd.read_csv(path)
    except (MlflowException, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return _episodes_from_metrics(client, run_id)
    if not {"episode", "return"} <= set(table.columns):  # not the contract's file
        return _episodes_from_metrics(client, run_id)
    return table


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    key = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def episodes_table(client: MlflowClient, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-episode table for every run in ``runs``."""
    frames = []
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        for row in runs.itertuples(index=False):
            ep = read_episodes(client, row.run_id, Path(tmp))
            frames.append(ep.assign(run_id=row.run_id, algo=row.algo, env=row.env, seed=row.seed))
    if not frames:
        return pd.DataFrame(columns=EPISODE_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    return table[EPISODE_COLUMNS + [c for c in table.columns if c not in EPISODE_COLUMNS]]


def _experiment_ids(client: MlflowClient, query: RunQuery) -> list[str]:
    if query.experiment is not None:
        exp = client.get_experiment_by_name(query.experiment)
        if exp is None:
            raise CollectionError(
                f"experiment {query.experiment!r} not found at tracking URI {client.tracking_uri}"
            )
        return [exp.experiment_id]
    if not query.run_ids:
        raise CollectionError("give an experiment name or a list of run ids")
    ids = []
    for rid in query.run_ids:
        try:
            ids.append(client.get_run(rid).info.experiment_id)
        except MlflowException as e:
            raise CollectionError(f"run {rid!r} not found at tracking URI {client.tracking_uri}") from e
    return sorted(set(ids))


def search(client: MlflowClient, experiment_ids: list[str], filter_str: str) -> list[Run]:
    """All active runs of the experiments matching ``filter_str``, page by page."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_str,
            ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += page
        token = page.token
        if not token:
            return runs


def _store_error(uri: str, e: Exception) -> CollectionError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return CollectionError(
        f"cannot read the MLflow store at {uri} ({type(e).__name__}: {first}); "
        "check the tracking URI, or restore the database from a backup"
    )


def check_arms(runs: pd.DataFrame, query: RunQuery) -> None:
    """Every value asked for by name (``--algo a b``, ...) must have runs: an empty arm is an error."""
    for column, asked in (
        ("algo", query.algos),
        ("env", query.envs),
        ("group", query.groups),
        ("sweep", query.sweeps),
    ):
        present = set(runs[column].dropna().astype(str))
        missing = [v for v in asked if v not in present]
        if missing:
            raise CollectionError(
                f"no runs of {column} {', '.join(map(repr, missing))} match {query.describe()} "
                f"(found: {', '.join(sorted(present)) or 'none'}); check the name or drop it"
            )


def check_episodes(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED runs must have episodes (else one-line error); a run that died early counts 0."""
    bad = runs[(runs["status"] == "FINISHED") & ~(runs["episodes"] > 0)]
    if len(bad):
        r = bad.iloc[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CollectionError(
            f"run {r['run_id']} ({r['algo']}, seed {r['seed']}) is FINISHED but recorded no episodes"
            f"{more}: it cannot be placed; delete it in MLflow or leave it out with "
            f"--exclude-run-ids {' '.join(bad['run_id'])}"
        )
    return runs.assign(episodes=runs["episodes"].fillna(0.0))


def collect(query: RunQuery, tracking_uri: str | None = None, *, with_episodes: bool = True) -> Collection:
    """Read the runs matching ``query``; raises :class:`CollectionError` (one line) on any problem.

    ``tracking_uri`` defaults to the core's (``MLFLOW_TRACKING_URI``, else ``./mlflow.db``). Unknown
    experiment, no matching run, an empty arm, a FINISHED run without episodes, a missing, empty
    or unreadable store: each is a :class:`CollectionError` naming the cause and the fix.
    """
    uri = tracking_uri or default_tracking_uri()
    db = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and db != ":memory:":
        if not Path(db).exists():
            raise CollectionError(f"no MLflow database at {db} (tracking URI {uri})")  # don't create one
        if Path(db).stat().st_size == 0:
            raise CollectionError(
                f"the MLflow database at {db} is empty (0 bytes): no runs were ever recorded there"
            )
    try:
        client = MlflowClient(uri)
        exp_ids = _experiment_ids(client, query)
        found = [r for r in search(client, exp_ids, filter_string(query)) if matches(r, query)]
    except CollectionError:
        raise
    except Exception as e:  # a corrupt or foreign file: sqlalchemy, MLflow or OS errors
        raise _store_error(uri, e) from e
    kept = [r for r in found if r.info.status in query.statuses]
    excluded = dict(Counter(r.info.status for r in found if r.info.status not in query.statuses))
    if not kept:
        other = f" ({sum(excluded.values())} with another status)" if excluded else ""
        raise CollectionError(f"no runs match {query.describe()}{other} at {uri}")
    runs = runs_table(kept)
    check_arms(runs, query)
    try:
        episodes = episodes_table(client, runs) if with_episodes else pd.DataFrame(columns=EPISODE_COLUMNS)
    except Exception as e:
        raise _store_error(uri, e) from e
    if with_episodes:  # a run that died before logging ``episodes``: count its episodes.csv rows
        last = episodes.groupby("run_id")["episode"].max()
        runs["episodes"] = runs["episodes"].fillna(runs["run_id"].map(last))
    runs = check_episodes(runs)
    now = time.time()
    stale = {r.info.run_id: why for r in found if (why := stale_reason(r.info, r.data.tags, now))}
    return Collection(runs, episodes, uri, exp_ids, excluded, stale)


def param_differences(
    runs: pd.DataFrame, by: str = "algo", ignore: Sequence[str] = ("param.seed",)
) -> pd.DataFrame:
    """Params whose values differ between arms (or within one): a row per param, a column per arm.

    Cells list the distinct values of the param among that arm's runs ("-" where not logged).
    """
    cols = [c for c in runs.columns if c.startswith("param.") and c not in ignore]
    rows = {}
    for col in cols:
        per_arm = runs.groupby(by, sort=True)[col].agg(
            lambda s: ", ".join(sorted({str(v) for v in s.dropna()})) or "-"
        )
        values = runs[col].fillna("-").astype(str)
        if values.nunique() > 1:
            rows[col.removeprefix("param.")] = per_arm
    if not rows:
        return pd.DataFrame(columns=sorted(runs[by].astype(str).unique()))
    return pd.DataFrame(rows).T.rename_axis("param")
