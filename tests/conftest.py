"""Shared fixtures: a private MLflow store per test, small configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh embedded MLflow store in tmp_path, set as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running ``python -m rlexp`` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


PYTHON = sys.executable


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: restore its default action. A
    test run started in the background of a shell (``cmd &``, nohup) inherits SIGINT *ignored*,
    and a Python started that way never turns Ctrl-C into KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children(pid: int, *, workers_only: bool = False) -> set[int]:
    """The child processes of ``pid`` (from /proc); ``workers_only`` leaves out multiprocessing's
    resource tracker, which outlives its parent by design."""
    try:
        kids = {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()
    if workers_only:
        kids = {k for k in kids if "resource_tracker" not in _cmdline(k)}
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


TINY = ["algo.hidden=[16]", "tracking.enabled=false", "train.save_model=false"]
