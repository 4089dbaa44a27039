"""Fault injection (issue 26): every failure a user can meet before or around a run ends with one
line naming the cause and what to do, a non-zero exit code, no traceback, and nothing lost or
half-written in MLflow. Through the real command line where the exit and the output matter."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlexp.config import ConfigError
from rlexp.tracking import HEARTBEAT_TAG, HOST_TAG, PID_TAG, check_tracking

from .conftest import PYTHON, children_once_training, cli_env

TINY = ["train.max_episodes=2", "algo.hidden=[16]", "train.save_model=false"]


def cli(args: list[str], cwd: Path, module: str = "rlexp", timeout: float = 120,
        **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", module, *args], cwd=cwd, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def refused(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one line a refused command printed; checks the contract around it."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def nothing_written(folder: Path) -> None:
    """No MLflow store, Optuna study or Hydra output appeared in ``folder``."""
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    d = tmp_path / "cwd"
    d.mkdir()
    return d


# --------------------------------------------------------------------------- missing optional deps
def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(_installed("Box2D"), reason="Box2D is installed here")
def test_run_of_an_env_without_its_dependency_names_the_env_and_the_extra(empty):
    p = cli(["algo=dqn", "env.id=LunarLander-v3", "solve.threshold=200"], empty)
    refused(p, "env.id='LunarLander-v3'", 'pip install "gymnasium[box2d]"')
    nothing_written(empty)


@pytest.mark.skipif(_installed("Box2D"), reason="Box2D is installed here")
def test_sweep_of_an_env_without_its_dependency_stops_before_any_trial(empty):
    p = cli(["sweep=dqn_cartpole", "env.id=LunarLander-v3", "solve.threshold=200"], empty, module="rlexp.sweep")
    refused(p, "env.id='LunarLander-v3'", 'pip install "gymnasium[box2d]"')
    nothing_written(empty)


@pytest.mark.skipif(_installed("mujoco"), reason="MuJoCo is installed here")
def test_mujoco_env_without_mujoco_names_the_mujoco_extra():
    from rlexp.config import EnvConfig
    from rlexp.envs import describe

    with pytest.raises(ConfigError, match=r"env.id='HalfCheetah-v5' .*pip install \"gymnasium\[mujoco\]\""):
        describe(EnvConfig(id="HalfCheetah-v5", threshold=1.0))


# --------------------------------------------------------------------------- tracking store
def test_unwritable_local_store_is_refused_before_training(empty, tmp_path):
    (tmp_path / "a_file").write_text("")
    t0 = time.monotonic()
    p = cli(TINY, empty, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    assert time.monotonic() - t0 < 30  # the interpreter's imports; the check itself is instant
    refused(p, "MLFLOW_TRACKING_URI=sqlite:///", "is not a folder", "set MLFLOW_TRACKING_URI")
    nothing_written(empty)


@pytest.mark.parametrize("uri", ["sqlite:////proc/rlexp/mlflow.db", "file:///proc/rlexp/mlruns"])
def test_read_only_file_system_is_refused_even_for_root(uri):
    with pytest.raises(ConfigError, match="runs cannot be recorded there"):
        check_tracking(uri)


def test_a_folder_in_place_of_the_database_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a database file"):
        check_tracking(f"sqlite:///{tmp_path}")


def test_writable_stores_pass_and_nothing_is_created(tmp_path):
    check_tracking(f"sqlite:///{tmp_path / 'new' / 'sub' / 'mlflow.db'}")
    check_tracking(str(tmp_path / "mlruns"))
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_that_refuses_connections_is_refused_in_seconds(empty):
    t0 = time.monotonic()
    p = cli(TINY, empty, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{_free_port()}")
    assert time.monotonic() - t0 < 30
    refused(p, "no MLflow server answers", "mlflow server", "MLFLOW_TRACKING_URI")
    nothing_written(empty)


def test_an_untracked_run_does_not_need_the_server(empty):
    p = cli([*TINY, "tracking.enabled=false"], empty, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{_free_port()}")
    assert p.returncode == 0 and "not solved" in p.stderr, p.stderr


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung server, a black-holed proxy)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def test_server_that_never_answers_is_refused_within_10_s(empty, silent_server):
    t0 = time.monotonic()
    p = cli(TINY, empty, MLFLOW_TRACKING_URI=silent_server)
    assert time.monotonic() - t0 < 15  # the 5 s health timeout and the interpreter's imports
    refused(p, "no MLflow server answers (no answer in 5 s)")
    nothing_written(empty)


def test_sweep_with_a_silent_server_stops_before_any_trial(empty, silent_server):
    p = cli(["sweep=dqn_cartpole"], empty, module="rlexp.sweep", MLFLOW_TRACKING_URI=silent_server)
    refused(p, "rlexp.sweep: error: MLFLOW_TRACKING_URI=http://", "no MLflow server answers")
    nothing_written(empty)


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, int]]]:
    """A local HTTP server answering ``routes[path]`` (status) and 404 elsewhere."""
    routes: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            code = routes.get(self.path.split("?")[0], 404)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"OK" if code == 200 else b"")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", routes
    finally:
        srv.shutdown()
        srv.server_close()


def test_what_answers_must_be_an_mlflow_server(http_server):
    uri, routes = http_server
    with pytest.raises(ConfigError, match=r"what answers is not an MLflow server \(/health gave HTTP 404\)"):
        check_tracking(uri)
    routes["/health"] = 200  # mlflow server's health endpoint
    check_tracking(uri)
    del routes["/health"]
    routes["/api/2.0/mlflow/experiments/search"] = 401  # a server behind auth, without /health
    check_tracking(uri)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_https_server_with_an_untrusted_certificate_says_which_setting_trusts_it(tmp_path, monkeypatch):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", key,
                    "-out", cert, "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    uri = f"https://127.0.0.1:{srv.server_address[1]}"
    try:
        for var in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS"):
            monkeypatch.delenv(var, raising=False)
        with pytest.raises(ConfigError, match="TLS certificate is not trusted .*MLFLOW_TRACKING_SERVER_CERT_PATH"):
            check_tracking(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))  # what MLflow's client reads too
        check_tracking(uri)
        monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
        monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
        check_tracking(uri)
    finally:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------- names
def test_experiment_name_longer_than_mlflow_allows_is_refused_up_front(empty):
    p = cli(["tracking.experiment=" + "x" * 501, *TINY], empty)
    line = refused(p, "tracking.experiment is 501 characters long", "at most 500")
    assert len(line) < 200
    nothing_written(empty)


@pytest.mark.parametrize("override, message", [
    ("tracking.experiment=' '", "tracking.experiment=' ' must not be empty"),
    ("tracking.run_name=" + "r" * 251, "tracking.run_name is 251 characters long"),
    ("+tracking.tags.bad$=x", "tracking.tags='bad$' is not an MLflow tag key"),
])
def test_names_mlflow_rejects_are_refused_at_composition(override, message):
    from rlexp.compose import compose_config

    with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
        compose_config([override])


def test_names_mlflow_takes_are_taken():
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    from rlexp.compose import compose_config
    from rlexp.config import MAX_EXPERIMENT_NAME

    assert MAX_EXPERIMENT_NAME == MAX_EXPERIMENT_NAME_LENGTH
    cfg = compose_config(["tracking.experiment='it\\'s \"quoted\" é'", "tracking.run_name=" + "r" * 250])
    assert cfg.tracking.experiment == "it's \"quoted\" é"


def test_a_sweep_refuses_an_over_long_experiment_name_of_its_trials():
    from rlexp.sweep.load import load

    with pytest.raises(ConfigError, match="tracking.experiment is 501 characters long"):
        load("dqn_cartpole", ["tracking.experiment=" + "x" * 501])


def test_study_name_with_a_backslash_is_refused_before_any_trial(empty):
    p = cli(["sweep=dqn_cartpole", "study_name='a\\\\'"], empty, module="rlexp.sweep")
    refused(p, "study_name=", "backslash")
    nothing_written(empty)


def test_study_name_with_quotes_finds_its_parent_run_again(mlflow_uri):
    from rlexp.sweep.config import SweepConfig
    from rlexp.sweep.tracking import open_parent

    name = "it's \"quoted\""
    SweepConfig(space={"algo": {"lr": {"type": "float", "low": 1e-4, "high": 1e-3}}}, study_name=name)
    first = open_parent(name, "E", "sqlite:///optuna.db", {"n": 1})
    assert open_parent(name, "E", "sqlite:///optuna.db", {"n": 1}) == first  # a resume reuses it


# --------------------------------------------------------------------------- stale runs
def _info(status: str = "RUNNING", start_s: float = 1000.0) -> SimpleNamespace:
    return SimpleNamespace(status=status, start_time=int(start_s * 1000))


@pytest.mark.parametrize("tags, alive, now, stale", [
    ({HOST_TAG: "here", PID_TAG: "42"}, False, 1001.0, True),  # local, process gone
    ({HOST_TAG: "here", PID_TAG: "42"}, True, 99999.0, False),  # local, alive however long
    ({HOST_TAG: "there", PID_TAG: "42", HEARTBEAT_TAG: "5000"}, True, 5000 + 3599.0, False),
    ({HOST_TAG: "there", PID_TAG: "42", HEARTBEAT_TAG: "5000"}, True, 5000 + 3601.0, True),
    ({HOST_TAG: "there", PID_TAG: "42"}, True, 1000 + 3601.0, True),  # silent since its start
    ({"sweep_role": "study"}, False, 99999.0, False),  # no pid: nothing can tell
])
def test_is_stale(tags, alive, now, stale):
    from rlexp.runs import is_stale

    assert is_stale(_info(), tags, now, host="here", alive=lambda pid, since: alive) is stale
    assert not is_stale(_info("KILLED"), tags, now, host="here", alive=lambda pid, since: alive)


def test_a_pid_given_to_a_later_process_is_not_the_run_alive():
    from rlexp.runs import pid_alive

    assert pid_alive(os.getpid(), time.time())
    assert not pid_alive(os.getpid(), 0.0)  # this process started after a run of 1970
    assert not pid_alive(2**22 + 12345, time.time())


def test_run_killed_with_9_is_found_noted_and_closed_with_its_metrics_kept(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "RLEXP_TRACKING_FLUSH_S": "0"}
    p = subprocess.Popen([PYTHON, "-m", "rlexp", "train.max_episodes=100000", "train.stop_on_solve=false",
                          "algo.hidden=[16]", "train.save_model=false"], cwd=tmp_path, env=cli_env(**env),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        children_once_training(p, uri, 1, timeout=120)
        assert p.poll() is None, "the run ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("CartPole-v1").experiment_id])
    rid = run.info.run_id
    assert run.info.status == "RUNNING" and run.data.tags[PID_TAG] == str(p.pid)
    logged = len(client.get_metric_history(rid, "episode_return"))
    assert logged >= 1

    listed = cli(["stale"], tmp_path, module="rlexp.runs", MLFLOW_TRACKING_URI=uri)
    assert listed.returncode == 0 and f"{rid}  CartPole-v1" in listed.stdout
    assert f"its process {p.pid} on " in listed.stdout and "1 run stale" in listed.stderr

    note = cli(["train.max_episodes=1", "algo.hidden=[16]", "train.save_model=false"], tmp_path,
               MLFLOW_TRACKING_URI=uri)
    assert note.returncode == 0, note.stderr
    assert ("rlexp: note: 1 run of experiment 'CartPole-v1' is stale" in note.stderr
            and "python -m rlexp.runs close-stale" in note.stderr)

    closed = cli(["close-stale"], tmp_path, module="rlexp.runs", MLFLOW_TRACKING_URI=uri)
    assert closed.returncode == 0 and "1 run closed as KILLED" in closed.stderr
    after = client.get_run(rid)
    assert after.info.status == "KILLED" and after.data.tags["stop_reason"].startswith("stale: its process")
    assert after.info.end_time is not None and after.info.end_time >= run.info.start_time
    assert len(client.get_metric_history(rid, "episode_return")) == logged  # nothing lost
    again = cli(["stale"], tmp_path, module="rlexp.runs", MLFLOW_TRACKING_URI=uri)
    assert again.stdout == "" and "0 runs stale" in again.stderr


def test_runs_cli_creates_no_store_where_there_is_none(empty):
    p = cli(["stale"], empty, module="rlexp.runs")
    refused(p, "no MLflow store at sqlite:///")
    nothing_written(empty)


def test_runs_cli_refuses_an_unknown_experiment_in_one_line(mlflow_uri, tmp_path):
    from rlexp.tracking import open_experiment

    open_experiment("E")
    p = cli(["stale", "--experiment", "nope"], tmp_path, module="rlexp.runs", MLFLOW_TRACKING_URI=mlflow_uri)
    refused(p, "--experiment 'nope': no such experiment")
