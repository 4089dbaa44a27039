"""A multirun's parent MLflow run: one per command (and experiment), the jobs' runs its children.

At the start of ``python -m rlexp ... -m`` the CLI opens one parent run in each experiment its jobs
write to (tag ``rlexp.role=multirun``, the launch's ``group``, the command line) and records their
ids in ``rlexp-parents.json`` in the sweep folder, where every job finds them, whichever launcher
runs it and in whatever process (joblib, submitit). Each job's run gets ``mlflow.parentRunId`` and
``rlexp.arm``: the job's overrides without its seed, so jobs that differ only in their seed are
one arm. At the end the parent gets the aggregate of its children per arm (seeds, seeds solved,
the Kaplan-Meier median episodes-to-solve with its interval, :mod:`rlexp.survival`), the table
``summary.md`` and ``learning_curves.png`` (every child's rolling mean return against env steps).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rlexp.tracking import ROLE_TAG, MlflowTracker, open_experiment, process_tags, retry_locked

PARENTS_FILE = "rlexp-parents.json"  # in the sweep folder: experiment name -> parent run id
ARM_TAG = "rlexp.arm"
# Okabe-Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

_open: dict[str, str] = {}  # this process's parents not yet ended: run id -> sweep folder


def arm(overrides: Iterable[str]) -> str:
    """A job's overrides without ``seed=``: what its run shares with the other seeds of its arm."""
    return " ".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed")


def open_parents(sweep_dir: Path, experiments: Mapping[str, Sequence[str]], command: Sequence[str]) -> dict[str, str]:
    """Open one parent run per experiment (``experiments``: name -> the algorithms of its jobs) and
    record their ids in the sweep folder; returns experiment name -> run id."""
    ids: dict[str, str] = {}
    for name, algos in sorted(experiments.items()):
        client, exp_id = open_experiment(name)
        tags = {ROLE_TAG: "multirun", "group": str(sweep_dir), "rlexp.command": shlex.join(command)[:5000],
                **process_tags()}
        run = retry_locked(partial(client.create_run, exp_id, run_name=f"{'+'.join(sorted(set(algos)))}-{name}-multirun",
                                   tags=tags))
        ids[name] = run.info.run_id
        _open[run.info.run_id] = str(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PARENTS_FILE).write_text(json.dumps(ids))
    return ids


def parent_of(sweep_dir: Path, experiment: str) -> str | None:
    """The parent run id the launch opened for ``experiment``, or None (no parent: tracking off,
    or a launch without the CLI's callback)."""
    try:
        return json.loads((sweep_dir / PARENTS_FILE).read_text()).get(experiment)
    except (OSError, ValueError):
        return None


def end_parents(status: str, summarize: bool = True) -> None:
    """End this process's open parents with ``status``, each with its children's aggregate first
    (``summarize``); a parent that cannot be summarized still ends, with one line saying why."""
    from mlflow import MlflowClient

    from rlexp.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    for run_id, sweep_dir in list(_open.items()):
        tracker = MlflowTracker(client, run_id)
        if summarize:
            try:
                summarize_parent(client, tracker, Path(sweep_dir))
            except Exception as e:  # the children's record stays; only the summary is missing
                print(f"rlexp: warning: multirun summary of parent run {run_id} failed: {type(e).__name__}: {e}",
                      file=sys.stderr)
        tracker.terminate(status)
        del _open[run_id]


def wait_for_children(timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) until no child run of this process's open parents is RUNNING:
    jobs in other processes, signalled, end their runs themselves."""
    import time

    from mlflow import MlflowClient

    from rlexp.tracking import tracking_uri

    if not _open:
        return
    client, deadline = MlflowClient(tracking_uri()), time.monotonic() + timeout
    parents = [client.get_run(run_id) for run_id in _open]
    while any(r.info.status == "RUNNING" for p in parents for r in children(client, p)) and time.monotonic() < deadline:
        time.sleep(0.5)


def children(client: Any, parent: Any) -> list[Any]:
    """The runs whose ``mlflow.parentRunId`` is ``parent``'s, oldest first."""
    out, token = [], None
    while True:
        page = retry_locked(partial(client.search_runs, [parent.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                    max_results=1000, page_token=token))
        out.extend(page)
        token = page.token
        if not token:
            return sorted(out, key=lambda r: (r.info.start_time, r.info.run_id))


def aggregate(runs: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per arm (tag ``rlexp.arm``, else ``algo``; named by the overrides that set it apart, or by its
    ``algo`` when it is the only one): runs, seeds solved, failed (FAILED or KILLED) and the Kaplan-Meier median episodes-to-solve (unsolved runs censored at their episodes) with its
    interval, as :func:`rlexp.survival.km_median` gives it."""
    import numpy as np

    from rlexp.survival import km_median

    arms: dict[str, list[Any]] = {}
    for r in runs:
        arms.setdefault(r.data.tags.get(ARM_TAG) or r.data.tags.get("algo", "?"), []).append(r)
    out = {}
    for key, rs in arms.items():
        name = arm_names(list(arms))[key] if len(arms) > 1 else rs[0].data.tags.get("algo", "?")
        m = [r.data.metrics for r in rs]
        solved = np.array(["episodes_to_solve" in x for x in m])
        t = np.array([x.get("episodes_to_solve", x.get("episodes", 0.0)) for x in m], dtype=float)
        med = km_median(t, solved)
        out[name] = {"runs": len(rs), "solved": int(solved.sum()),
                     "failed": sum(r.info.status in ("FAILED", "KILLED") for r in rs), **med}
    return out


def arm_names(keys: Sequence[str]) -> dict[str, str]:
    """Each arm by the overrides that set it apart: those not shared by every arm."""
    common = set.intersection(*(set(k.split(" ")) for k in keys))
    return {k: " ".join(o for o in k.split(" ") if o not in common) or k for k in keys}


def median_text(a: Mapping[str, Any]) -> str:
    """``212 [180, 260] (95%)``, ``> 300`` (fewer than half solved by then), ``≥ 150``."""
    if a["kind"] == "not reached":
        return f"> {a['median']:g}" if math.isfinite(a["median"]) else "-"
    text = f"{'≥ ' if a['kind'] == 'lower bound' else ''}{a['median']:g}"
    lo, hi = a["lo"], a["hi"]
    if math.isfinite(lo) or math.isfinite(hi):
        text += (f" [{lo:g}, {hi:g}]" if math.isfinite(hi) else f" [{lo:g}, >]") + f" ({a['level']:.2%})"
    return text


def metric_key(arm_name: str) -> str:
    """An arm as an MLflow metric prefix (letters, digits and ``_-. /:`` are what MLflow takes)."""
    return re.sub(r"[^\w.\- /:]", ":", arm_name).strip() or "arm"


def summary_metrics(arms: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The parent's metrics: ``seeds``, ``seeds_solved``, ``median_episodes_to_solve`` (when it is
    reached) and its ``_lo``/``_hi`` (where the runs bound them); prefixed ``<arm>/`` when the
    command ran several arms."""
    out = {}
    for name, a in arms.items():
        prefix = f"{metric_key(name)}/" if len(arms) > 1 else ""
        out[f"{prefix}seeds"] = float(a["runs"])
        out[f"{prefix}seeds_solved"] = float(a["solved"])
        if a["kind"] == "exact":
            out[f"{prefix}median_episodes_to_solve"] = float(a["median"])
        for end in ("lo", "hi"):
            if math.isfinite(a[end]):
                out[f"{prefix}median_episodes_to_solve_{end}"] = float(a[end])
    return out


def summary_table(arms: Mapping[str, Mapping[str, Any]]) -> str:
    rows = ["| arm | seeds | solved | failed | median episodes-to-solve [interval] |", "|---|---|---|---|---|"]
    rows += [f"| {name} | {a['runs']} | {a['solved']}/{a['runs']} | {a['failed']} | {median_text(a)} |"
             for name, a in arms.items()]
    return "\n".join(rows)


def learning_curves(client: Any, runs: Sequence[Any], path: Path) -> Path | None:
    """Every child's ``episode_return_mean`` against env steps, one colour per arm, the solve
    threshold dotted; None when no child recorded an episode."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colours: dict[str, str] = {}
    keys = sorted({r.data.tags.get(ARM_TAG) or r.data.tags.get("algo", "?") for r in runs})
    names = arm_names(keys) if len(keys) > 1 else {keys[0]: runs[0].data.tags.get("algo", "?")}
    drawn = False
    for r in runs:
        hist = sorted(retry_locked(partial(client.get_metric_history, r.info.run_id, "episode_return_mean")),
                      key=lambda m: (m.step, m.timestamp))
        if not hist:
            continue
        name = names[r.data.tags.get(ARM_TAG) or r.data.tags.get("algo", "?")]
        first = name not in colours
        colours.setdefault(name, PALETTE[len(colours) % len(PALETTE)])
        ax.plot([m.step for m in hist], [m.value for m in hist], color=colours[name], linewidth=1, alpha=0.8,
                label=name if first else None)
        drawn = True
    if not drawn:
        return None
    thresholds = {r.data.params.get("solve.threshold") for r in runs} - {None, "None"}
    if len(thresholds) == 1:
        ax.axhline(float(thresholds.pop()), color="0.4", linestyle=":", linewidth=1, label="solve threshold")
    ax.set(xlabel="env steps", ylabel="return (rolling mean over solve.window)",
           title="Learning curves of this multirun's runs")
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def summarize_parent(client: Any, tracker: MlflowTracker, folder: Path) -> None:
    """Log the children's aggregate on the parent: metrics, ``summary.md``, ``learning_curves.png``."""
    parent = retry_locked(partial(client.get_run, tracker.run_id))
    runs = children(client, parent)
    if not runs:
        return
    arms = aggregate(runs)
    tracker.log_metrics(summary_metrics(arms), step=0)
    out = folder / f"parent-{tracker.run_id}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary_table(arms) + "\n")
    tracker.log_artifact(out / "summary.md")
    png = learning_curves(client, runs, out / "learning_curves.png")
    if png is not None:
        tracker.log_artifact(png)
