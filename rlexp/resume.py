"""``python -m rlexp resume=RUN_ID``: continue a KILLED, FAILED or stale RUNNING run from its last checkpoint.

The run goes on in the same MLflow run, to the budget it was given, with the episode returns it
would have had uninterrupted (its checkpoint holds every generator and counter). Whatever the run
logged after that checkpoint and before it stopped is not logged twice: the resumed run produces
it again, bit for bit, and a metric whose step the run already holds is skipped.

Refused with one line (exit 2): an unknown run, a FINISHED run, a RUNNING run whose process lives,
a run without a checkpoint, a run whose config no longer validates.

A multirun's parent run (``resume=PARENT_ID``) resumes every child run that did not finish, one
after another, each checked before the first starts; the parent then holds the new aggregate and
ends FINISHED when every child has.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlexp.config import ConfigError


class SkipLogged:
    """A tracker that drops the metrics whose step its run already holds for that key."""

    def __init__(self, inner: Any, last: Mapping[str, int]) -> None:
        self.inner, self.last = inner, dict(last)
        self.client, self.run_id = inner.client, inner.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        new = {k: v for k, v in metrics.items() if step > self.last.get(k, -1)}
        if new:
            self.inner.log_metrics(new, step)

    def __getattr__(self, name: str) -> Any:  # log_artifact, flush, set_tags, terminate
        return getattr(self.inner, name)


def last_steps(client: Any, run_id: str) -> dict[str, int]:
    """Each metric's last logged step in the run."""
    keys = client.get_run(run_id).data.metrics
    return {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def check_resumable(client: Any, run_id: str) -> Any:
    """The run, or ConfigError saying why it cannot be resumed."""
    from mlflow.exceptions import MlflowException

    from rlexp.runs import stale_reason

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"resume={run_id!r}: no such run in the tracking store") from None
    status = run.info.status
    if status == "FINISHED":
        raise ConfigError(f"resume={run_id!r}: the run is FINISHED; nothing to resume")
    if status == "RUNNING" and stale_reason(run.info, run.data.tags, time.time()) is None:
        raise ConfigError(f"resume={run_id!r}: the run is RUNNING and its process is alive")
    return run


def resume(run_id: str, *, workdir: Path | None = None, progress: bool = False) -> Any:
    """Continue the run from its last checkpoint; returns its :class:`~rlexp.train.TrainResult`."""
    from mlflow.tracking import MlflowClient

    from rlexp.algos.registry import check_compatible
    from rlexp.checkpoint import load_latest
    from rlexp.compose import config_from_dict
    from rlexp.tracking import MlflowTracker, process_tags, retry_locked, tracking_uri
    from rlexp.train import _end_run, sigterm_as_interrupt, train_batch

    client = MlflowClient(tracking_uri())
    check_resumable(client, run_id)
    state = load_latest(client, run_id)
    if state is None:
        raise ConfigError(f"resume={run_id!r}: the run has no checkpoint (train.checkpoint_every=0, or it "
                          "stopped before its first)")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as e:
        raise ConfigError(f"resume={run_id!r}: its config no longer validates: {e}") from None
    spec = check_compatible(cfg)
    tracker = SkipLogged(MlflowTracker(client, run_id), last_steps(client, run_id))
    retry_locked(lambda: client.update_run(run_id, status="RUNNING"))
    tracker.set_tags({**process_tags(), "resumed_from_episode": str(state["members"]["recorder"]["solve"].episodes)})
    with tempfile.TemporaryDirectory(prefix="rlexp-resume-") as tmp, sigterm_as_interrupt():
        result = train_batch([cfg], [tracker], workdirs=[workdir or Path(tmp)], progress=progress, spec=spec,
                             resume=state, on_end=lambda k, r: _end_run(tracker, r, run_id))
    return result[0]


def unfinished_children(client: Any, parent: Any) -> list[str]:
    """The parent's child runs that did not finish, each checked resumable (ConfigError otherwise)."""
    from rlexp.parent import children

    todo = [r.info.run_id for r in children(client, parent) if r.info.status != "FINISHED"]
    if not todo:
        raise ConfigError(f"resume={parent.info.run_id!r}: every run of this multirun is FINISHED; nothing to resume")
    for run_id in todo:
        check_resumable(client, run_id)
        if not any(a.path.endswith(".pt") for a in client.list_artifacts(run_id, "checkpoint")):
            raise ConfigError(f"resume={parent.info.run_id!r}: its run {run_id} has no checkpoint")
    return todo


def resume_parent(parent_id: str, *, progress: bool = False) -> list[Any]:
    """Resume the unfinished children of a multirun's parent run; then re-summarize and end the parent."""
    from mlflow.tracking import MlflowClient

    from rlexp.parent import summarize_parent
    from rlexp.tracking import MlflowTracker, retry_locked, tracking_uri

    client = MlflowClient(tracking_uri())
    todo = unfinished_children(client, client.get_run(parent_id))
    tracker = MlflowTracker(client, parent_id)
    retry_locked(lambda: client.update_run(parent_id, status="RUNNING"))
    results = []
    try:
        for run_id in todo:
            results.append(resume(run_id, progress=progress))
    except KeyboardInterrupt:
        tracker.terminate("KILLED")
        raise
    with tempfile.TemporaryDirectory(prefix="rlexp-resume-") as tmp:
        summarize_parent(client, tracker, Path(tmp))
    tracker.terminate("FINISHED" if all(r.status == "FINISHED" for r in results) else "FAILED")
    return results


def main(argv: list[str]) -> int:
    """``resume=RUN_ID`` alone on the command line; exit 0 (finished), 1 (failed), 2 (refused),
    130/143 (Ctrl-C/SIGTERM: the run ends KILLED again, with a new checkpoint)."""
    import sys

    others = [a for a in argv if not a.startswith("resume=")]
    ids = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    try:
        if others or len(ids) != 1:
            raise ConfigError(f"resume= takes one run id and nothing else (got {' '.join(argv)!r})")
        results = _resume_any(ids[0], progress=sys.stderr.isatty())
    except ConfigError as e:
        print(f"rlexp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from rlexp.train import by_sigterm

        print(f"rlexp: run {ids[0]} stopped again ({e or 'interrupted'}); resume it with resume={ids[0]}",
              file=sys.stderr)
        return 143 if by_sigterm(e) else 130
    status = 0
    for r in results:
        if r.status != "FINISHED":
            print(f"rlexp: run {r.run_id} {r.status}: {r.error}", file=sys.stderr)
            status = 1
            continue
        verdict = f"solved at episode {r.episodes_to_solve}" if r.solved else "not solved"
        print(f"rlexp: run {r.run_id} resumed: {verdict} ({r.episodes} episodes, {r.env_steps} env steps)",
              file=sys.stderr)
    return status


def _resume_any(run_id: str, progress: bool) -> list[Any]:
    """A multirun's parent (all its unfinished children) or one run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from rlexp.tracking import ROLE_TAG, tracking_uri

    try:
        role = MlflowClient(tracking_uri()).get_run(run_id).data.tags.get(ROLE_TAG)
    except MlflowException:
        role = None  # resume() says the run is unknown
    if role == "multirun":
        return resume_parent(run_id, progress=progress)
    return [resume(run_id, progress=progress)]
