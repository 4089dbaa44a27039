"""Shared fixtures: a private MLflow store per test, small configs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def children_once_training(p: subprocess.Popen[str], uri: str, n: int, role: str | None = None,
                           timeout: float = 180) -> set[int]:
    """Poll the MLflow store ``uri`` while ``p`` runs until ``n`` runs (with tag ``sweep_role`` ``role``,
    if given; a multirun's parent run is not counted) have logged an episode return; then ``p``'s
    worker processes (empty: they never did)."""
    from mlflow import MlflowClient

    from rlexp.cli import worker_processes
    from rlexp.tracking import ROLE_TAG

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.5)
        try:
            client = MlflowClient(uri)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        except Exception:  # the store is not created yet
            continue
        runs = [r for r in runs if ROLE_TAG not in r.data.tags and (role is None or r.data.tags.get("sweep_role") == role)]
        if len(runs) == n and all(r.data.metrics.get("episode_return") is not None for r in runs):
            return set(worker_processes(p.pid))
    return set()


TINY = ["algo.hidden=[16]", "tracking.enabled=false", "train.save_model=false"]


def pick(name: str) -> str:
    """The override that selects ``name``: ``algo=dqn``, or ``+experiment=dqn_seed`` for a preset."""
    from rlexp.compose import group_options

    return f"+experiment={name}" if name in group_options("experiment") else f"algo={name}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(backend_store: str, artifacts: Path) -> Iterator[str]:
    """An ``mlflow server`` on loopback over ``backend_store`` with ``artifacts`` as its artifact
    root (served through it: clients need no access to the folder); yields its URI, stops it after."""
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend_store, "--artifacts-destination", str(artifacts)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail(f"mlflow server over {backend_store} did not come up")
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
