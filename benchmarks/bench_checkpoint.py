"""Checkpoints and resume (issue 27): kill -9 and resume, the checkpoints' cost and size.

- ``kill``: ``python -m rlexp`` (``dqn_target``) is killed with SIGKILL at ``--kills`` random
  moments (uniform in seconds after its first logged episode), then ``python -m rlexp resume=ID``;
  each resumed run's ``episode_return`` history must equal the uninterrupted run's, episode by
  episode (each once);
- ``overhead``: env steps per second with the default ``train.checkpoint_every`` against ``0``,
  the two alternating, ``--repeats`` times each, tracked in one MLflow store; and each config's
  checkpoint file size and write time (the first default checkpoint, episode 100).

    python -m benchmarks.bench_checkpoint --kills 10 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_algos import write_results

ROOT = Path(__file__).resolve().parent.parent
KILL_ARGS = ["algo=dqn_target", "train.max_episodes=150", "train.checkpoint_every=10", "eval.episodes=0",
             "train.save_model=false", "seed=1", "train.progress=false"]


def _env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def _returns(client: object, run_id: str) -> list[float]:
    hist = client.get_metric_history(run_id, "episode_return")  # type: ignore[attr-defined]
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def kill_and_resume(kills: int, seed: int, work: Path) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / 'kill.db'}"
    client = MlflowClient(uri)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlexp", *KILL_ARGS, f"hydra.run.dir={work / 'ref'}"], cwd=work,
                   env=_env(uri), check=True, capture_output=True)
    whole_s = time.perf_counter() - t0
    [ref] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    expected = _returns(client, ref.info.run_id)
    rng = random.Random(seed)
    rows = []
    for i in range(kills):
        p = subprocess.Popen([sys.executable, "-m", "rlexp", *KILL_ARGS, f"+tracking.tags.kill={i}",
                              f"hydra.run.dir={work / f'k{i}'}"], cwd=work, env=_env(uri),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_id = None
        while run_id is None and p.poll() is None:  # the run exists and has logged an episode
            time.sleep(0.2)
            found = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.kill = '{i}'")
            if found and "episode_return" in found[0].data.metrics:
                run_id = found[0].info.run_id
        delay = rng.uniform(0.0, 0.8 * whole_s)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert run_id is not None
        before = client.get_run(run_id)
        at = len(_returns(client, run_id))
        r = subprocess.run([sys.executable, "-m", "rlexp", f"resume={run_id}"], cwd=work, env=_env(uri),
                           capture_output=True, text=True)
        got = _returns(client, run_id)
        ckpt = [a.path for a in client.list_artifacts(run_id, "checkpoint")]
        rows.append(f"| {i + 1} | {delay:.1f} | {before.info.status} | {at} | {r.returncode} | "
                    f"{client.get_run(run_id).info.status} | {len(got)} | {got == expected} | {', '.join(ckpt)} |")
        print(rows[-1], flush=True)
    same = sum(" True " in row for row in rows)
    head = ("| kill | seconds after the first episode | status after kill -9 | episodes logged | resume exit | "
            "status | episodes | returns identical | last checkpoint |\n|---|---|---|---|---|---|---|---|---|")
    return (f"### kill -9 and resume ({' '.join(KILL_ARGS)})\n\nUninterrupted: {len(expected)} episodes in "
            f"{whole_s:.0f} s (command wall time). **{same} of {kills}** resumed runs end with the uninterrupted "
            f"run's returns, each episode once.\n\n{head}\n" + "\n".join(rows))


def overhead(repeats: int, work: Path) -> str:
    from mlflow import MlflowClient

    from rlexp import checkpoint
    from rlexp.compose import compose_config
    from rlexp.train import run

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'overhead.db'}"
    out = ["| config | checkpoint_every | env steps/s (each run) | median | vs 0 | checkpoints | size (MB) | "
           "write + store (s, median) |", "|---|---|---|---|---|---|---|---|"]
    for name, args in (("double_dqn (default)", ["algo=double_dqn", "train.max_episodes=200"]),
                       ("ppo", ["algo=ppo", "train.max_episodes=400"])):
        sps: dict[int, list[float]] = {0: [], 100: []}
        sizes: list[float] = []
        writes: list[float] = []
        real_store = checkpoint.store

        def timed_store(tracker: object, path: Path, sizes: list[float] = sizes, writes: list[float] = writes,
                        real_store: object = real_store) -> None:
            sizes.append(path.stat().st_size / 1e6)
            t = time.perf_counter()
            real_store(tracker, path)  # type: ignore[operator]
            writes.append(time.perf_counter() - t)

        checkpoint.store = timed_store  # type: ignore[assignment]
        try:
            for _ in range(repeats):
                for every in (0, 100):
                    cfg = compose_config([*args, f"train.checkpoint_every={every}", "eval.episodes=0",
                                          "train.save_model=false", "seed=1", "train.stop_on_solve=false"])
                    sps[every].append(run(cfg).sps)
        finally:
            checkpoint.store = real_store  # type: ignore[assignment]
        base = statistics.median(sps[0])
        for every in (0, 100):
            med = statistics.median(sps[every])
            extra = (f"{len(sizes) // repeats} | {sizes[0]:.2f} | {statistics.median(writes):.3f}" if every
                     else "0 | - | -")
            out.append(f"| {name} | {every} | {', '.join(f'{v:.0f}' for v in sps[every])} | {med:.0f} | "
                       f"{med / base - 1:+.1%} | {extra} |")
        print(out[-2], out[-1], sep="\n", flush=True)
    MlflowClient()  # the store stays in the temporary folder
    return ("### Checkpoint overhead and size\n\nSame seed and budget (no stop on solve), tracked in one SQLite store; "
            "the runs alternate. Size and write time: the checkpoint files written (the first at episode 100; "
            "the replay buffer is saved up to its fill).\n\n" + "\n".join(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="the kill moments' generator")
    ap.add_argument("--skip", choices=["kill", "overhead"], default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    parts = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        if args.skip != "kill":
            parts.append(kill_and_resume(args.kills, args.seed, Path(tmp)))
        if args.skip != "overhead":
            parts.append(overhead(args.repeats, Path(tmp)))
    path = write_results(args.out, "checkpoint", "Checkpoints and resume", " ".join(["python -m benchmarks.bench_checkpoint",
                         *(argv if argv is not None else sys.argv[1:])]), "Issue 27's figures.", "\n\n".join(parts))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
