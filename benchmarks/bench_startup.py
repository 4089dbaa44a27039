"""How long from the command to its first episode, against a bare ``import torch, gymnasium``?

    python -m benchmarks.bench_startup [--repeats 5] [--python PATH]

In one sitting, each repeat in turn: ``PYTHON -c "import torch, gymnasium"`` (its wall time), then
``PYTHON -m rlexp algo=dqn train.max_episodes=1`` in a fresh working folder, timed until its first
episode is in ``episodes.csv`` (polled every 10 ms): tracked in an MLflow store that exists (a
user's second command on), tracked in a new store (the very first command, which creates it), and
untracked. Target: the first episode within twice the bare import (medians over the repeats).
Two more bare imports show what tracking cannot go below in one process: ``import mlflow`` with the
SQLAlchemy store module it opens ``mlflow.db`` through, and everything a tracked run imports
(torch, gymnasium, mlflow and that store) in one interpreter.
``--python`` times another interpreter, e.g. a fresh venv's with rlexp installed from the wheel.
The table is printed and written, with date, command and versions, to
``benchmarks/results/startup-<date>.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_algos import RESULTS, write_results

TARGET = 2.0  # first episode within this many bare imports
ARGS = ["algo=dqn", "train.max_episodes=1", "train.save_model=false", "eval.episodes=0"]
BARE = "`import torch, gymnasium`"
IMPORTS = {  # bare imports, timed as whole interpreters
    BARE: "import torch, gymnasium",
    "`import mlflow` + its SQLite store": "import mlflow, mlflow.store.tracking.sqlalchemy_store",
    "all a tracked run imports (torch, gymnasium, mlflow + store)":
        "import torch, gymnasium, mlflow, mlflow.store.tracking.sqlalchemy_store",
}
CASES = {  # what each rlexp row runs, and whether its store exists before
    "rlexp, tracked (store exists)": ([], True),
    "rlexp, tracked (new store)": ([], False),
    "rlexp, untracked": (["tracking.enabled=false"], True),
}


def bare(python: str, cwd: Path, code: str) -> float:
    """Wall seconds of ``python -c code``."""
    t0 = time.perf_counter()
    subprocess.run([python, "-c", code], cwd=cwd, check=True)
    return time.perf_counter() - t0


def first_episode(python: str, cwd: Path, args: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``python -m rlexp args`` in ``cwd`` to its first recorded episode."""
    t0 = time.perf_counter()
    p = subprocess.Popen([python, "-m", "rlexp", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    found = None
    while found is None and p.poll() is None:
        for csv in (cwd / "outputs").glob("runs/*/*/episodes.csv") if (cwd / "outputs").is_dir() else ():
            if csv.read_text().count("\n") >= 2:  # the header and one episode
                found = time.perf_counter() - t0
        time.sleep(0.01)
    _, err = p.communicate(timeout=300)
    if found is None or p.returncode != 0:
        raise RuntimeError(f"rlexp {' '.join(args)} failed ({p.returncode}): {err[-2000:]}")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the repeats, print and save the table; exit 1 when the tracked first episode misses the target."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_startup", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--python", default=sys.executable, help="the interpreter to time (default: this one)")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    times: dict[str, list[float]] = {**{i: [] for i in IMPORTS}, **{c: [] for c in CASES}}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        subprocess.run([args.python, "-m", "rlexp", *ARGS], cwd=root, env=env, check=True, capture_output=True)
        for r in range(args.repeats):
            for what, code in IMPORTS.items():
                times[what].append(bare(args.python, root, code))
            for case, (extra, store_exists) in CASES.items():
                cwd = root / f"{r}-{len(times[case])}-{case.split(',')[-1].strip(' ()').replace(' ', '-')}"
                cwd.mkdir()
                if store_exists:
                    shutil.copy(root / "mlflow.db", cwd / "mlflow.db")
                times[case].append(first_episode(args.python, cwd, [*ARGS, *extra], env))
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  file=sys.stderr, flush=True)
    ref = statistics.median(times[BARE])
    rows = ["| what | median s | min s | max s | x bare import |", "|---|---|---|---|---|"]
    for what, xs in times.items():
        rows.append(f"| {what} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} | "
                    f"{statistics.median(xs) / ref:.2f} |")
    text = "\n".join(rows)
    ratio = statistics.median(times["rlexp, tracked (store exists)"]) / ref
    floor = statistics.median(times[list(IMPORTS)[-1]]) / ref
    verdict = (f"Tracked, store existing: first episode at **{ratio:.2f}x** the bare import (target <= {TARGET:g}x); "
               f"its imports alone, in one process, take {floor:.2f}x.")
    preamble = (f"Interpreter: `{args.python}`; {args.repeats} repeats in one sitting, the cases in turn; rlexp "
                f"`{' '.join(ARGS)}`, timed to its first episode in `episodes.csv`.")
    print(f"{text}\n\n{verdict}")
    command = "python -m benchmarks.bench_startup " + " ".join(argv if argv is not None else sys.argv[1:])
    out = write_results(RESULTS, "startup", "Start-up: command to first episode", command, preamble,
                        f"{text}\n\n{verdict}")
    print(f"written: {out}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
