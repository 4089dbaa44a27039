"""``python -m rlexp.runs stale | close-stale``: find the runs whose process died without ending them.

A run killed with ``kill -9`` (or lost with its machine) stays RUNNING in MLflow forever. Every
training run records where its process lives (``rlexp.host``, ``rlexp.pid``) and a heartbeat with
each batch of metrics (``rlexp.heartbeat``, see :mod:`rlexp.tracking`), so such a run is *stale*
when it is RUNNING and

- it ran on this host and its process is gone (or the pid now belongs to a later process), or
- it ran on another host and its last heartbeat (its start, before the first) is older than
  ``--older-than`` seconds (default one hour): that process cannot be asked.

Runs without ``rlexp.pid`` (a sweep's study and trial runs, runs recorded before rlexp kept it) are
never called stale: nothing tells whether they live (a resumed sweep fails its own lost trials).
``close-stale`` ends stale runs as KILLED, at their last heartbeat, with a ``stop_reason`` tag;
everything they logged stays. ``python -m rlexp`` prints one line when the experiment it is about
to write to holds stale runs; :func:`is_stale` is the rule, for reports.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from rlexp.config import ConfigError
from rlexp.tracking import HEARTBEAT_TAG, HOST_TAG, PID_TAG, check_tracking, retry_locked, tracking_uri

STALE_AFTER_S = 3600.0  # a run on another host is stale when silent this long
_RUNNING = "attributes.status = 'RUNNING'"


def pid_alive(pid: int, since_s: float) -> bool:
    """Whether process ``pid`` of this host lives and is the one that was running at ``since_s``
    (unix time): a pid the system has since given to a later process does not count, nor a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except OSError:
        return False
    started = _process_start(pid)
    if started is None:
        return True
    state, start_s = started
    return state != "Z" and start_s <= since_s + 5.0  # slack: clock ticks and the run's own start


def _process_start(pid: int) -> tuple[str, float] | None:
    """(state, start unix time) of ``pid`` from /proc (Linux), or None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def stale_reason(info: Any, tags: Mapping[str, str], now: float, *, host: str | None = None,
                 older_than_s: float = STALE_AFTER_S,
                 alive: Callable[[int, float], bool] = pid_alive) -> str | None:
    """Why the run is stale (one phrase), or None when it is not (or nothing can tell).

    ``info``: the run's ``RunInfo`` (``status``, ``start_time`` in ms); ``tags``: its tags; ``now``:
    unix time (s); ``host``: this host's name (default ``socket.gethostname()``); ``alive(pid,
    since_s)``: whether a local process lives (default :func:`pid_alive`).
    """
    if info.status != "RUNNING" or PID_TAG not in tags:
        return None
    run_host = tags.get(HOST_TAG, "")
    if run_host == (host if host is not None else socket.gethostname()):
        try:
            pid = int(tags[PID_TAG])
        except ValueError:
            return None
        started = (info.start_time or 0) / 1000
        return None if alive(pid, started) else f"its process {pid} on {run_host} is gone"
    last = last_seen(info, tags)
    if now - last <= older_than_s:
        return None
    return f"no heartbeat from {run_host or 'its host'} for {_duration(now - last)}"


def is_stale(info: Any, tags: Mapping[str, str], now: float, **kwargs: Any) -> bool:
    """Whether a RUNNING run's process is gone (:func:`stale_reason`'s rule; same arguments)."""
    return stale_reason(info, tags, now, **kwargs) is not None


def last_seen(info: Any, tags: Mapping[str, str]) -> float:
    """Unix time (s) the run last showed life: its heartbeat, else its start."""
    try:
        return float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return (info.start_time or 0) / 1000


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def running_runs(client: Any, experiment_ids: Sequence[str], max_results: int | None = None) -> Iterator[Any]:
    """The RUNNING runs of these experiments, page by page (at most ``max_results``)."""
    token, seen = None, 0
    while True:
        page = retry_locked(partial(client.search_runs, list(experiment_ids), filter_string=_RUNNING,
                                    max_results=min(max_results or 1000, 1000), page_token=token))
        for r in page:
            yield r
            seen += 1
            if max_results is not None and seen >= max_results:
                return
        token = page.token
        if not token:
            return


def find_stale(client: Any, experiment_ids: Sequence[str], *, now: float | None = None,
               older_than_s: float = STALE_AFTER_S, max_results: int | None = None) -> list[tuple[Any, str]]:
    """(run, reason) for each stale run of these experiments."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    out = []
    for r in running_runs(client, experiment_ids, max_results):
        reason = stale_reason(r.info, r.data.tags, now, host=host, older_than_s=older_than_s)
        if reason:
            out.append((r, reason))
    return out


def close(client: Any, run: Any, reason: str) -> None:
    """End a stale run as KILLED at its last heartbeat, saying why; what it logged stays."""
    from mlflow.entities import RunTag

    run_id = run.info.run_id
    tags = [RunTag("stop_reason", f"stale: {reason} (closed by python -m rlexp.runs close-stale)")]
    retry_locked(lambda: client.log_batch(run_id, tags=tags))
    end_ms = max(int(last_seen(run.info, run.data.tags) * 1000), run.info.start_time or 0)
    retry_locked(lambda: client.set_terminated(run_id, status="KILLED", end_time=end_ms))


def note_stale(client: Any, experiment_id: str, experiment: str) -> str | None:
    """One line for ``python -m rlexp`` when ``experiment`` holds stale runs (a cheap query: its
    first 200 RUNNING runs), else None. Never raises: it is only a notice."""
    try:
        n = len(find_stale(client, [experiment_id], max_results=200))
    except Exception:  # a notice must not stop a run
        return None
    if not n:
        return None
    return (f"rlexp: note: {n} run{'s' if n > 1 else ''} of experiment {experiment!r} "
            f"{'are' if n > 1 else 'is'} stale (RUNNING, but {'their' if n > 1 else 'its'} process is gone): "
            "see them with python -m rlexp.runs stale, end them as KILLED with python -m rlexp.runs close-stale")


def _experiments(client: Any, names: Sequence[str]) -> dict[str, str]:
    """experiment id -> name: those named, or every active one."""
    if not names:
        from mlflow.entities import ViewType

        exps = retry_locked(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=50000))
        return {e.experiment_id: e.name for e in exps}
    out = {}
    for name in names:
        exp = retry_locked(partial(client.get_experiment_by_name, name))
        if exp is None:
            raise ConfigError(f"--experiment {name!r}: no such experiment at {client.tracking_uri}")
        out[exp.experiment_id] = exp.name
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlexp.runs", description=__doc__.split("\n\n")[0]
                                     if __doc__ else None)
    parser.add_argument("command", choices=("stale", "close-stale"),
                        help="stale: list the stale runs; close-stale: end them as KILLED")
    parser.add_argument("--experiment", action="append", default=[], metavar="NAME",
                        help="only this experiment (repeatable; default: every one)")
    parser.add_argument("--older-than", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                        help="a run of another host is stale after this long without a heartbeat "
                             f"(default {STALE_AFTER_S:.0f})")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    uri = tracking_uri()
    try:
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():  # don't create one
            raise ConfigError(f"no MLflow store at {uri}: run where mlflow.db is, or set MLFLOW_TRACKING_URI")
        check_tracking(uri)
        client = MlflowClient(uri)
        exps = _experiments(client, args.experiment)
    except ConfigError as e:
        print(f"rlexp.runs: error: {e}", file=sys.stderr)
        return 2
    stale = find_stale(client, list(exps), older_than_s=args.older_than) if exps else []
    for run, reason in stale:
        started = datetime.fromtimestamp((run.info.start_time or 0) / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{run.info.run_id}  {exps.get(run.info.experiment_id, run.info.experiment_id)}  "
              f"{run.info.run_name}  started {started} UTC  {reason}")
        if args.command == "close-stale":
            close(client, run, reason)
    verb = "closed as KILLED" if args.command == "close-stale" else "stale"
    print(f"rlexp.runs: {len(stale)} run{'s' if len(stale) != 1 else ''} {verb} "
          f"({len(exps)} experiment{'s' if len(exps) != 1 else ''} at {uri})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
