"""Experiment tracking: one small interface, an MLflow implementation and a null one for tests.

Metric keys are namespaced (``episode_return``, ``train/loss``); metrics are buffered and sent in
batches (``log_batch``) every couple of seconds, so a run writes a few rows a second however short
its episodes are. Writes that meet SQLite's "database is locked" are retried with back-off, which
is what lets parallel multirun jobs share one ``mlflow.db``.
"""

from __future__ import annotations

import os
import platform
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
HOST_TAG, PID_TAG = "rlexp.host", "rlexp.pid"
HEARTBEAT_TAG = "rlexp.heartbeat"  # unix time (s) of the run's last metrics flush
HEALTH_TIMEOUT_S = 5.0
ROLE_TAG = "rlexp.role"  # on a run that holds other runs (``multirun``: a multirun's parent), no episodes of its own


class Tracker(Protocol):
    """Where a training run reports to."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def flush(self) -> None: ...


class NullTracker:
    """Keeps every metric in memory and writes nothing: for tests and untracked runs."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def flush(self) -> None:
        pass


def runtime_tags() -> dict[str, str]:
    """What a run's floats depend on besides its config and seed: rlexp's git commit (MLflow's
    ``mlflow.source.git.commit``, when rlexp runs from a checkout), the Python, torch, numpy and
    gymnasium versions, and the CPU instruction set torch dispatches its kernels to (``runtime.cpu``,
    e.g. AVX2 or AVX512). The same seed gives the same returns only where all of these match: on
    another CPU type torch's kernels round differently, and a long RL run turns that into other
    episodes. Also where the run's process lives (:func:`process_tags`), for :mod:`rlexp.runs`."""
    return {**_versions(), **process_tags()}


def process_tags() -> dict[str, str]:
    """``rlexp.host`` and ``rlexp.pid`` of this process (not cached: a forked or spawned job has its
    own): what tells later that a RUNNING run's process is gone (killed with -9, machine reboot)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


@cache
def _versions() -> dict[str, str]:
    import gymnasium
    import numpy
    import torch
    from mlflow.utils.git_utils import get_git_commit
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = {"runtime.python": platform.python_version(), "runtime.torch": torch.__version__,
            "runtime.numpy": numpy.__version__, "runtime.gymnasium": gymnasium.__version__,
            "runtime.cpu": torch.backends.cpu.get_cpu_capability(), "runtime.machine": platform.machine()}
    commit = get_git_commit(str(Path(__file__).resolve().parent))
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded store ``mlflow.db`` in the working directory.

    A relative SQLite path is made absolute, so every job of a multirun writes to the same file.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path.cwd() / uri[len(prefix):])
    return uri


def check_tracking(uri: str | None = None, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Refuse, quickly and before any training, a tracking URI runs could not be recorded at:
    a local store (``sqlite:///``, ``file:`` or a path) whose folder cannot be written, or an
    ``http(s)://`` server that does not answer its ``/health`` endpoint within ``timeout`` seconds.
    Raises :class:`~rlexp.config.ConfigError` naming the URI and what to do."""
    from urllib.parse import urlparse

    from rlexp.config import ConfigError

    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        problem = _server_problem(uri, timeout)
        if problem:
            raise ConfigError(f"MLFLOW_TRACKING_URI={uri}: {problem}")
        return
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            return
        store, folder = Path(path), Path(path).parent
    elif scheme in ("file", "") or len(scheme) == 1:  # a Windows drive letter reads as a scheme
        store = folder = Path(urlparse(uri).path if scheme == "file" else uri)
    else:  # databricks, postgresql, ...: MLflow's own client reports those
        return
    reason = _unwritable(store, folder)
    if reason:
        raise ConfigError(f"MLFLOW_TRACKING_URI={uri}: runs cannot be recorded there ({reason}); "
                          "set MLFLOW_TRACKING_URI to a place you can write, e.g. sqlite:///mlflow.db "
                          "in a folder of yours")


def _server_problem(uri: str, timeout: float) -> str | None:
    """Why ``uri`` is not an MLflow server that answers, and what to do; None when it is: its
    ``/health`` says OK, or its REST API answers (an old server, a proxy without /health); 401/403
    count as answers (the credentials are for MLflow's client to explain)."""
    import ssl
    import urllib.error
    import urllib.request

    todo = ("start it (mlflow server --host HOST --port PORT) or set MLFLOW_TRACKING_URI to a running one "
            "(unset: sqlite:///mlflow.db here)")

    # the TLS settings MLflow's own client honours, so a server it can reach is not refused here
    tls = None
    if uri.startswith("https://"):
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
            tls = ssl._create_unverified_context()
        else:
            tls = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    status = ""
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + path, timeout=timeout, context=tls):
                return None
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                return None
            status = status or f"{path} gave HTTP {e.code}"
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLCertVerificationError):
                return (f"its TLS certificate is not trusted ({e.reason.verify_message}): set "
                        "MLFLOW_TRACKING_SERVER_CERT_PATH to its CA bundle, or MLFLOW_TRACKING_INSECURE_TLS=true")
            why = f"no answer in {timeout:.0f} s" if isinstance(e.reason, TimeoutError) else str(e.reason)
            return f"no MLflow server answers ({why}); {todo}"
        except TimeoutError:
            return f"no MLflow server answers (no answer in {timeout:.0f} s); {todo}"
        except OSError as e:
            return f"no MLflow server answers ({e or type(e).__name__}); {todo}"
    return f"what answers is not an MLflow server ({status}); {todo}"


def _unwritable(store: Path, folder: Path) -> str | None:
    """Why ``store`` (a file or folder MLflow will create in ``folder``) cannot be written, or None.
    Tries for real (root ignores permission bits, not a read-only file system); creates nothing
    that stays."""
    import tempfile

    if store.exists() and store != folder:
        if store.is_dir():
            return f"{store} is a folder, not a database file"
        try:
            with open(store, "ab"):
                pass
        except OSError as e:
            return f"{store}: {e.strerror or e}"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot create files in {existing}: {e.strerror or e}"
    return None


def is_locked(e: Exception) -> bool:
    """Whether ``e`` is SQLite reporting a locked (busy) database; MLflow wraps
    sqlite3.OperationalError in its own exceptions, so the message is what tells."""
    return "locked" in str(e).lower() or "busy" in str(e).lower()


def retry_locked(fn: Callable[[], T], attempts: int = 30, when: Callable[[Exception], bool] = is_locked,
                 delay: float = 0.05) -> T:
    """Call ``fn``, retrying with jittered back-off (from ``delay``, doubling up to 2 s) while the
    error is one ``when`` says will pass: by default SQLite's locked database. Any other error, or
    the last attempt's, is raised."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not when(e) or i == attempts - 1:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def get_or_create_experiment(client: Any, name: str) -> str:
    """The experiment's id, creating it if needed; safe when several processes race to create it."""
    for _ in range(5):
        exp = retry_locked(lambda: client.get_experiment_by_name(name))
        if exp is not None:
            exp_id = str(exp.experiment_id)
            if exp.lifecycle_stage == "deleted":
                retry_locked(partial(client.restore_experiment, exp_id))
            return exp_id
        try:
            return str(retry_locked(lambda: client.create_experiment(name)))
        except Exception as e:  # lost the race: someone else created it
            if "already exists" not in str(e).lower() and "unique" not in str(e).lower():
                raise
    raise RuntimeError(f"could not create or find MLflow experiment {name!r}")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside an SQLite store (no-op for other stores).

    MLflow creates and migrates the schema of a new SQLite file on first use; two processes doing
    that at once corrupt the migration ("table ... already exists"), so the first use is serialized.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    import fcntl

    lock_path = Path(uri[len(prefix):]).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_experiment(name: str, uri: str | None = None) -> tuple[Any, str]:
    """An ``MlflowClient`` on ``uri`` (default :func:`tracking_uri`) and the experiment's id."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    with store_lock(uri):
        client = MlflowClient(uri)
        return client, get_or_create_experiment(client, name)


class MlflowTracker:
    """Tracker writing to one MLflow run through ``MlflowClient`` (no global active run)."""

    def __init__(self, client: Any, run_id: str, flush_every_s: float | None = None) -> None:
        self.client, self.run_id = client, run_id
        # RLEXP_TRACKING_FLUSH_S=0 sends every metric at once (the concurrency test uses it)
        self.flush_every_s = (flush_every_s if flush_every_s is not None
                              else float(os.environ.get("RLEXP_TRACKING_FLUSH_S", "2.0")))
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), ts, int(step)) for k, v in metrics.items())
        if len(self._pending) >= 900 or time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        from mlflow.entities import RunTag

        # each batch of metrics carries a heartbeat: how rlexp.runs tells a silent run from a live one
        beat = [RunTag(HEARTBEAT_TAG, f"{time.time():.3f}")]
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            retry_locked(partial(self.client.log_batch, self.run_id, metrics=chunk, tags=beat))
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            retry_locked(partial(self.client.log_batch, self.run_id, params=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        retry_locked(lambda: self.client.log_batch(self.run_id, tags=items))  # type: ignore[misc]

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        retry_locked(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))  # type: ignore[misc]

    def terminate(self, status: str) -> None:
        self.flush()
        retry_locked(lambda: self.client.set_terminated(self.run_id, status=status))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
