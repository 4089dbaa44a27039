"""What do ten seeds cost against one, and is one seed as fast as before the seed axis?

For each algorithm, whole commands are timed side by side in one sitting, as a user runs them
(tracked in a fresh embedded MLflow store, start-up included), each with the same fixed step budget
and no stop on solve:

- ``python -m rlexp algo=X seed=1 ...`` (one seed),
- ``python -m rlexp algo=X seed=1,...,K -m ...`` (K seeds: one batch with the default launcher),
- with ``--ref COMMIT``, the one-seed command at that commit (a git worktree, e.g. the last commit
  before the seed axis: the single-seed code path it replaced).

The order rotates between repeats; the table gives the median wall time of each and the ratios.

    python -m benchmarks.bench_batch --algos dqn_target dueling_dqn ppo ddpg --seeds 10 --steps 20000 --ref 3b0e3b4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.bench_algos import write_results

ROOT = Path(__file__).resolve().parent.parent
ENV_OF = {"ddpg": "pendulum"}


def command(algo: str, seeds: int, steps: int) -> list[str]:
    seed = "seed=" + ",".join(str(s) for s in range(1, seeds + 1))
    args = [f"algo={algo}", f"env={ENV_OF.get(algo, 'cartpole')}", seed, f"train.max_steps={steps}",
            "train.max_episodes=1000000", "train.stop_on_solve=false"]
    return [sys.executable, "-m", "rlexp", *args, *(["-m"] if seeds > 1 else [])]


def timed(cmd: list[str], cwd: Path, out: Path) -> float:
    """Wall seconds of ``cmd`` in ``out`` (its own MLflow store and outputs), code from ``cwd``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(cwd)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} (code from {cwd}) failed:\n{p.stderr[-2000:]}")
    return wall


@contextmanager
def reference_tree(commit: str | None, where: Path) -> Iterator[Path | None]:
    """A detached git worktree of ``commit`` at ``where`` for the block (its conf/ and rlexp/ are what
    the commands run), removed after it; None without a commit."""
    if commit is None:
        yield None
        return
    subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["dqn_target", "dueling_dqn", "ppo", "ddpg"])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--steps", type=int, default=20_000, help="env steps per seed")
    p.add_argument("--steps-for", nargs="*", default=[], metavar="ALGO=N", help="another budget for an algorithm")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--ref", default=None, help="commit whose one-seed command is timed too")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args(argv)
    steps_of = {k: int(v) for k, v in (x.split("=", 1) for x in a.steps_for)}
    cmd = "python -m benchmarks.bench_batch " + " ".join(argv if argv is not None else sys.argv[1:])
    out: Path | None = None
    rows = ["| algo | env steps per seed | 1 seed (s) | "
            f"{a.seeds} seeds (s) | {a.seeds} seeds / 1 seed | 1 seed at {a.ref or '-'} (s) | 1 seed / reference |",
            "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp, \
            reference_tree(a.ref, Path(tmp) / "ref") as ref:
        for algo in a.algos:
            steps = steps_of.get(algo, a.steps)
            kinds = [("one", ROOT, 1), ("many", ROOT, a.seeds)] + ([("ref", ref, 1)] if ref else [])
            times: dict[str, list[float]] = {k: [] for k, _, _ in kinds}
            for rep in range(a.repeats):
                for kind, cwd, n in kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]:
                    assert cwd is not None
                    wall = timed(command(algo, n, steps), cwd, Path(tmp) / f"{algo}-{kind}-{rep}")
                    times[kind].append(wall)
                    print(f"{algo} {kind}: {wall:.1f} s", file=sys.stderr)
            one, many = statistics.median(times["one"]), statistics.median(times["many"])
            old = statistics.median(times["ref"]) if ref else float("nan")
            rows.append(f"| {algo} | {steps} | {one:.1f} | {many:.1f} | {many / one:.2f} | "
                        f"{old:.1f} | {one / old:.2f} |")
            out = _write(a, cmd, "\n".join(rows), out)  # after every algorithm: a stop keeps what ran
    print("\n".join(rows))
    if out is not None:
        print(f"written: {out}", file=sys.stderr)
    return 0


def _write(a: argparse.Namespace, cmd: str, text: str, previous: Path | None) -> Path:
    """The table so far, replacing the file written for fewer algorithms."""
    if previous is not None:
        previous.unlink(missing_ok=True)
    return write_results(a.out, "batch", "Ten seeds against one, and one seed against the reference commit", cmd,
                         f"Whole commands, tracked, start-up included; median of {a.repeats} run(s) each, "
                         "order rotated between repeats. The machine has 2 cores; note what else ran.", text)


if __name__ == "__main__":
    raise SystemExit(main())
