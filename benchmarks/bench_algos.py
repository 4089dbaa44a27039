"""Episodes-to-solve and throughput of every algorithm, over several seeds.

    python -m benchmarks.bench_algos                          # every algorithm, 5 seeds (long)
    python -m benchmarks.bench_algos --algos dqn ppo --seeds 3 --jobs 2
    python -m benchmarks.bench_algos --throughput-only        # rlexp vs SB3 env steps/s (DQN, PPO)

Each algorithm runs on its benchmark env (CartPole-v1 for the discrete ones, Pendulum-v1 for
ddpg) with its default config, ``train.max_episodes`` from the table below, and stops when solved
(threshold from the env, window 100). Runs go to a process pool (``--jobs``, one torch thread
each; an algorithm's seeds train as one batch). The table is printed and written, with date, command and versions, under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import versions as bench_versions

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")

# algorithm -> (env group option, episode budget)
BENCH: dict[str, tuple[str, int]] = {
    "dqn": ("cartpole", 1000),
    "dqn_target": ("cartpole", 1000),
    "double_dqn": ("cartpole", 1000),
    "clipped_double_dqn": ("cartpole", 1000),
    "dueling_dqn": ("cartpole", 1000),
    "reinforce": ("cartpole", 2000),
    "reinforce_baseline": ("cartpole", 2000),
    "actor_critic": ("cartpole", 2000),
    "ppo": ("cartpole", 1000),
    "ddpg": ("pendulum", 300),
    "sb3_ppo": ("cartpole", 1000),
    "sb3_dqn": ("cartpole", 1000),
    "sb3_a2c": ("cartpole", 2000),
}


@dataclass
class Outcome:
    algo: str
    env: str
    seed: int
    solved_at: int | None
    episodes: int
    env_steps: int
    wall_time_s: float
    error: str | None = None


def run_seeds(algo: str, seeds: tuple[int, ...], extra: tuple[str, ...]) -> list[Outcome]:
    """An algorithm's seeds in a worker process (untracked): one batch, or one after another for
    an algorithm without a seed axis (sb3_*)."""
    import dataclasses

    from rlexp.algos.registry import get_algorithm
    from rlexp.compose import compose_config
    from rlexp.train import train_batch

    env, budget = BENCH.get(algo, ("cartpole", 1000))
    base = compose_config([f"algo={algo}", f"env={env}", f"train.max_episodes={budget}",
                           "tracking.enabled=false", "train.save_model=false", *extra])
    cfgs = [dataclasses.replace(base, seed=s) for s in seeds]
    parts = [cfgs] if get_algorithm(base.algo.name).batched else [[c] for c in cfgs]
    out = []
    for part in parts:
        try:
            results = train_batch(part)
        except Exception as e:  # the batch could not run: every seed of it is a failed result
            out += [Outcome(algo, c.env.id, c.seed, None, 0, 0, 0.0, f"{type(e).__name__}: {e}") for c in part]
            continue
        out += [Outcome(algo, c.env.id, c.seed, r.episodes_to_solve, r.episodes, r.env_steps, r.wall_time_s,
                        r.error) for c, r in zip(part, results, strict=True)]
    return out


def _star(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    return job[0](*job[1])


def run_jobs(fn: Callable[..., T], jobs: Sequence[tuple[Any, ...]], workers: int, results: list[T],
             report: Callable[[T], None]) -> bool:
    """``fn(*job)`` for every job in ``workers`` spawn processes (``rlexp.train.worker_pool``),
    appending each result to ``results`` and reporting it, in the jobs' order. Returns whether
    Ctrl-C or SIGTERM stopped it: the runs in flight are terminated, no queued one starts, and
    ``results`` holds the runs that finished (a ProcessPoolExecutor would finish every queued run
    before the interrupt got through)."""
    from rlexp.train import sigterm_as_interrupt, worker_pool

    try:
        if workers > 1 and len(jobs) > 1:
            with worker_pool(len(jobs), workers) as pool:
                for r in pool.imap(_star, [(fn, j) for j in jobs]):
                    results.append(r)
                    report(r)
        else:
            with sigterm_as_interrupt():
                for j in jobs:
                    results.append(fn(*j))
                    report(results[-1])
    except KeyboardInterrupt:
        print(f"interrupted: {len(results)} of {len(jobs)} runs finished; writing those", file=sys.stderr, flush=True)
        return True
    return False


def write_results(out_dir: Path, stem: str, title: str, command: str, preamble: str, text: str) -> Path:
    """Write a benchmark's table as ``<out_dir>/<stem>-<date>.md``, with date, command and versions."""
    now = datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{stem}-{now:%Y-%m-%d-%H%M}.md"
    out.write_text(f"# {title}\n\ndate: {now:%Y-%m-%d %H:%M UTC}\n\ncommand: `{command.strip()}`\n\n"
                   f"versions: {versions()}\n\n{preamble}\n\n{text}\n")
    return out


def interrupted_note(interrupted: bool, done: int, total: int) -> str:
    """The line that marks a table written after an interrupt."""
    return f"**Interrupted: {done} of {total} runs finished; the table has those only.**\n\n" if interrupted else ""


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(outcomes: list[Outcome], seeds: int) -> str:
    rows = ["| algo | env | solved | median episodes-to-solve | range | median env steps | "
            "median wall s | median env steps/s |", "|---|---|---|---|---|---|---|---|"]
    by_algo: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_algo.setdefault(o.algo, []).append(o)
    for algo, os_ in by_algo.items():
        solved = [o.solved_at for o in os_ if o.solved_at is not None]
        rng = f"{min(solved)}–{max(solved)}" if solved else "–"
        sps = [o.env_steps / o.wall_time_s for o in os_ if o.wall_time_s > 0]
        med = f"{_med([float(s) for s in solved]):.0f}" if solved else "not solved"
        errors = sum(o.error is not None for o in os_)
        note = f" ({errors} failed)" if errors else ""
        rows.append(f"| {algo} | {os_[0].env} | {len(solved)}/{len(os_)}{note} | {med} | {rng} | "
                    f"{_med([o.env_steps for o in os_]):.0f} | {_med([o.wall_time_s for o in os_]):.1f} | "
                    f"{_med(sps):.0f} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- throughput
ZOO_DQN = dict(hidden=[256, 256], lr=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000,
               gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
               exploration_fraction=0.16, exploration_final_eps=0.04)


def _rlexp_sps(steps: int, seed: int, overrides: list[str]) -> float:
    """env steps/s of an untracked rlexp run of exactly ``steps`` env steps."""
    from rlexp.compose import compose_config
    from rlexp.train import train

    cfg = compose_config([
        f"seed={seed}", "train.max_episodes=1000000", f"train.max_steps={steps}", "train.stop_on_solve=false",
        "tracking.enabled=false", "train.save_model=false", *overrides])
    return train(cfg).sps


def _sb3_sps(model: Any, steps: int) -> float:
    """env steps/s of ``model.learn`` for ``steps`` env steps, on one torch thread (as rlexp runs)."""
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    model.learn(total_timesteps=steps)
    return steps / (time.perf_counter() - t)


def rlexp_dqn_sps(steps: int, seed: int) -> float:
    z = ZOO_DQN
    return _rlexp_sps(steps, seed, [
        "algo=dqn_target", f"algo.hidden={z['hidden']}", f"optimizer.lr={z['lr']}",
        f"algo.batch_size={z['batch_size']}",
        f"algo.buffer_size={z['buffer_size']}", f"algo.learning_starts={z['learning_starts']}",
        f"algo.gamma={z['gamma']}", f"algo.target_update_interval={z['target_update_interval']}",
        f"algo.train_freq={z['train_freq']}", f"algo.gradient_steps={z['gradient_steps']}",
        "algo.exploration.schedule=linear", f"algo.exploration.steps={int(z['exploration_fraction'] * 50_000)}",
        f"algo.exploration.end={z['exploration_final_eps']}", "algo.loss=huber", "algo.max_grad_norm=10",
        "algo.layer_norm=false", "algo.activation=relu",  # SB3's plain ReLU MLP, whatever the defaults
    ])


def sb3_dqn_sps(steps: int, seed: int) -> float:
    from stable_baselines3 import DQN

    z = ZOO_DQN
    model = DQN("MlpPolicy", "CartPole-v1", learning_rate=z["lr"], batch_size=z["batch_size"],
                buffer_size=z["buffer_size"], learning_starts=z["learning_starts"], gamma=z["gamma"],
                target_update_interval=z["target_update_interval"], train_freq=z["train_freq"],
                gradient_steps=z["gradient_steps"], exploration_fraction=z["exploration_fraction"],
                exploration_final_eps=z["exploration_final_eps"],
                policy_kwargs=dict(net_arch=z["hidden"]), seed=seed, device="cpu", verbose=0)
    return _sb3_sps(model, steps)


ZOO_PPO = dict(num_envs=8, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8, lr=1e-3,
               hidden=[64, 64])


def rlexp_ppo_sps(steps: int, seed: int) -> float:
    """rlexp ppo with SB3's work per rollout: 8 envs x 32 steps, 20 passes of one 256 batch, no KL stop."""
    z = ZOO_PPO
    assert z["batch_size"] == z["num_envs"] * z["n_steps"], "one minibatch per pass"
    return _rlexp_sps(steps, seed, [
        "algo=ppo", f"env.num_envs={z['num_envs']}", f"algo.n_steps={z['n_steps']}", "algo.n_minibatches=1",
        f"algo.train_pi_iters={z['n_epochs']}", f"algo.train_v_iters={z['n_epochs']}", "algo.target_kl=null",
        f"algo.gamma={z['gamma']}", f"algo.gae_lambda={z['gae_lambda']}", f"optimizer.lr={z['lr']}",
        f"algo.value_lr={z['lr']}", f"algo.hidden={z['hidden']}", "algo.activation=tanh",
        "algo.value_target=lambda", "algo.ent_coef=0.0", "algo.max_grad_norm=0.5",
    ])


def sb3_ppo_sps(steps: int, seed: int) -> float:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    z = ZOO_PPO
    env = make_vec_env("CartPole-v1", n_envs=z["num_envs"], seed=seed)
    model = PPO("MlpPolicy", env, n_steps=z["n_steps"], batch_size=z["batch_size"], n_epochs=z["n_epochs"],
                gamma=z["gamma"], gae_lambda=z["gae_lambda"], learning_rate=z["lr"], ent_coef=0.0,
                max_grad_norm=0.5, policy_kwargs=dict(net_arch=z["hidden"]), seed=seed, device="cpu", verbose=0)
    return _sb3_sps(model, steps)


THROUGHPUT = {
    "dqn": ("rlexp dqn_target", rlexp_dqn_sps, "SB3 DQN", sb3_dqn_sps,
            "Zoo CartPole DQN settings: 256x256, batch 64, 128 gradient steps every 256 env steps, target "
            "copy every 10 steps"),
    "ppo": ("rlexp ppo", rlexp_ppo_sps, "SB3 PPO", sb3_ppo_sps,
            "Zoo CartPole PPO work per rollout: 8 envs x 32 steps, 20 epochs of one 256 batch, 64x64 tanh "
            "actor and critic, grad-norm clip 0.5; rlexp's KL early stop off so both do every pass"),
}


def throughput(kind: str, steps: int, repeats: int) -> str:
    """rlexp vs SB3 env steps/s with the same settings, run alternately in one process."""
    ours_name, ours_fn, theirs_name, theirs_fn, settings = THROUGHPUT[kind]
    ours, theirs = [], []
    for i in range(repeats):
        ours.append(ours_fn(steps, i))
        theirs.append(theirs_fn(steps, i))
        print(f"  throughput {kind} repeat {i + 1}: {ours[-1]:.0f} vs {theirs[-1]:.0f} env steps/s", flush=True)
    o, t = statistics.median(ours), statistics.median(theirs)
    runs_o, runs_t = ", ".join(f"{x:.0f}" for x in ours), ", ".join(f"{x:.0f}" for x in theirs)
    return (f"| implementation | env steps/s (median of {repeats}) | runs |\n|---|---|---|\n"
            f"| {ours_name} | {o:.0f} | {runs_o} |\n| {theirs_name} | {t:.0f} | {runs_t} |\n\n"
            f"ratio rlexp / SB3: **{o / t:.2f}×** ({steps} env steps per run; {settings}; one torch "
            "thread each, run alternately)")


# --------------------------------------------------------------------------- main
def versions() -> str:
    return bench_versions("stable-baselines3")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=[a for a in BENCH if not a.startswith("sb3")])
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes")
    p.add_argument("--override", nargs="*", default=[], help="extra overrides for every run")
    p.add_argument("--throughput", action="store_true", help="also compare env steps/s with SB3")
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--throughput-algos", nargs="+", choices=sorted(THROUGHPUT), default=sorted(THROUGHPUT),
                   help="which side-by-side comparisons (dqn: Zoo DQN settings, ppo: Zoo PPO settings)")
    p.add_argument("--throughput-steps", type=int, default=30_000)
    p.add_argument("--throughput-repeats", type=int, default=3)
    p.add_argument("--name", default="algos", help="results file prefix")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results file")
    args = p.parse_args(argv)

    sections = []
    interrupted = False
    if not args.throughput_only:
        from rlexp.algos.registry import names

        unknown = sorted(set(args.algos) - set(names()))
        if unknown:
            sys.exit(f"bench_algos: unknown --algos {', '.join(unknown)}; known: {', '.join(names())}")
        jobs = [(a, tuple(range(1, args.seeds + 1)), tuple(args.override)) for a in args.algos]
        t0 = time.perf_counter()
        batches: list[list[Outcome]] = []

        def report(batch: list[Outcome]) -> None:
            for o in batch:
                status = f"solved at {o.solved_at}" if o.solved_at else (o.error or "not solved")
                print(f"  {o.algo:<20} seed {o.seed}: {status} ({o.episodes} ep, {o.env_steps} steps, "
                      f"{o.wall_time_s:.0f} s)", flush=True)

        interrupted = run_jobs(run_seeds, jobs, args.jobs, batches, report)
        outcomes = [o for b in batches for o in b]
        sections.append(f"## Episodes-to-solve ({args.seeds} seeds, window 100, "
                        f"{time.perf_counter() - t0:.0f} s total with {args.jobs} jobs)\n\n"
                        + interrupted_note(interrupted, len(outcomes), len(jobs) * args.seeds)
                        + table(outcomes, args.seeds))
    if (args.throughput or args.throughput_only) and not interrupted:
        for kind in args.throughput_algos:
            sections.append(f"## Throughput: rlexp {kind.upper()} vs Stable-Baselines3 {kind.upper()}\n\n"
                            + throughput(kind, args.throughput_steps, args.throughput_repeats))
    cmd = "python -m benchmarks.bench_algos " + " ".join(argv if argv is not None else sys.argv[1:])
    now = datetime.now(UTC)
    text = (f"# rlexp benchmark — {now:%Y-%m-%d %H:%M} UTC\n\ncommand: `{cmd.strip()}`\n\n"
            f"versions: {versions()}\n\n" + "\n\n".join(sections) + "\n")
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.name}-{now:%Y-%m-%d-%H%M}.md"
    out.write_text(text)
    print(f"written to {out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
