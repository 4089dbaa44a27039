"""Checkpoints: when a member's is due, how it is written (atomically), and where it is kept.

A member's checkpoint holds everything it needs to continue exactly: its networks (targets too),
optimizer states, random generators (its own, the replay buffer's, its environments'), replay
buffer, environments mid-episode (pickled), the loop's counters and episode accumulators, its
recorder (returns, solve window, ``episodes.csv`` rows, update metrics not yet logged) and its
config. It is written between two env steps (the loop's *safe point*) every
``train.checkpoint_every`` episodes, and when a stop is requested (Ctrl-C, SIGTERM): the signal
handler only asks, the loop writes every member's checkpoint at its next safe point and stops.

A checkpoint file is written to a temporary name and renamed (``os.replace``), so a crash mid-write
leaves the previous one; in the run's artifacts each is ``checkpoint/ckpt-<episode>.pt`` and the
older ones are deleted once the new one is stored, so a crash during an upload leaves the previous
one too (:func:`load_latest` falls back to it).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlexp.envs import EnvBatch

ARTIFACT_DIR = "checkpoint"
FORMAT = 1


class Checkpoints:
    """Which members' checkpoints are due, and whether a stop was asked for (by a signal handler)."""

    def __init__(self, every: int, write: Callable[[int, dict[str, Any]], None]) -> None:
        self.every, self.write = every, write
        self.due: set[int] = set()
        self.stop_reason: str | None = None

    def episode_done(self, k: int, episodes: int) -> None:
        if self.every and episodes % self.every == 0:
            self.due.add(k)


def env_state(envs: EnvBatch, k: int) -> dict[str, Any]:
    """Member ``k``'s environments as they are (mid-episode, with their generators) and observations."""
    return {"envs": pickle.dumps(envs.envs[k]), "obs": envs.obs[k].copy()}


def load_env_state(envs: EnvBatch, state: Mapping[str, Any], k: int = 0) -> None:
    for env in envs.envs[k]:
        env.close()
    envs.envs[k] = pickle.loads(state["envs"])  # noqa: S301 (the run's own checkpoint)
    envs.obs[k] = state["obs"]


def global_rng_state() -> dict[str, Any]:
    """The process-wide generators (nothing should draw from them; kept so that a stray draw repeats)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed onto it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_name(episode: int) -> str:
    return f"ckpt-{episode:08d}.pt"


def store(tracker: Any, path: Path) -> None:
    """Keep ``path`` as the run's last checkpoint: uploaded (an MLflow run) under ``checkpoint/``, then the
    older ones deleted; locally the older files beside it go too."""
    for old in path.parent.glob("ckpt-*.pt"):
        if old != path:
            old.unlink()
    client, run_id = getattr(tracker, "client", None), getattr(tracker, "run_id", None)
    if client is None or run_id is None:  # not an MLflow run: the local file is the checkpoint
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from rlexp.tracking import retry_locked

    retry_locked(lambda: client.log_artifact(run_id, str(path), ARTIFACT_DIR))
    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    for a in client.list_artifacts(run_id, ARTIFACT_DIR):
        if Path(a.path).name != path.name:
            repo.delete_artifacts(a.path)


def load_latest(client: Any, run_id: str) -> dict[str, Any] | None:
    """The run's newest checkpoint that loads (a partial upload is skipped), or None."""
    names = sorted((a.path for a in client.list_artifacts(run_id, ARTIFACT_DIR) if a.path.endswith(".pt")),
                   reverse=True)
    with tempfile.TemporaryDirectory(prefix="rlexp-resume-") as tmp:
        for name in names:
            try:
                local = client.download_artifacts(run_id, name, tmp)
                state = torch.load(local, map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001 (a truncated or unreadable file: try the previous one)
                continue
            if isinstance(state, dict) and state.get("format") == FORMAT:
                return state
    return None


_STOPPABLE: list[Checkpoints] = []  # the running loops that stop at their next safe point when asked


@contextmanager
def stoppable(checkpoints: Checkpoints | None) -> Iterator[None]:
    """While the loop runs, a stop request (:func:`request_stop`) goes to ``checkpoints``."""
    if checkpoints is None:
        yield
        return
    _STOPPABLE.append(checkpoints)
    try:
        yield
    finally:
        _STOPPABLE.remove(checkpoints)


def request_stop(reason: str) -> bool:
    """Ask the running loops to checkpoint and stop (``reason``: the KeyboardInterrupt's message);
    False when there is none, or a stop was already asked for (then stop at once)."""
    if not _STOPPABLE or any(cp.stop_reason is not None for cp in _STOPPABLE):
        return False
    for cp in _STOPPABLE:
        cp.stop_reason = reason
    return True


def writer(cfgs: Sequence[Any], trackers: Sequence[Any], dirs: Sequence[Path], recs: Sequence[Any]
           ) -> Callable[[int, dict[str, Any]], None]:
    """``write(k, state)``: member ``k``'s checkpoint, after its metrics so far reached its tracker."""
    def write(k: int, state: dict[str, Any]) -> None:
        path = dirs[k] / file_name(recs[k].episodes)
        trackers[k].flush()  # what is logged is what the checkpoint holds: a resume skips the rest
        save_atomic({"format": FORMAT, "config": dataclasses.asdict(cfgs[k]), "global_rng": global_rng_state(),
                     **state}, path)
        store(trackers[k], path)

    return write
