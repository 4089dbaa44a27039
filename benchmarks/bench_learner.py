"""How much of a batch's cost is the learner's arithmetic, which batching the seeds cannot remove?

For each off-policy algorithm with its default config, in one process and one sitting:

- ``update K=1`` and ``update K=10``: one ``update_batches`` call (one gradient step on a full
  minibatch, as the loop makes once per env step) of an agent with 1 and with K members, on
  minibatches drawn from a filled replay buffer; per call, median over rounds that alternate the two;
- ``whole K=1``: the whole one-seed training step (env step, acting, buffer, update, recording),
  from ``train_batch`` on the same config for ``--steps`` env steps, per env step.

``update K=10 / whole K=1`` is a floor for what ten seeds cost against one: whatever else a batch
shares, each of its env steps runs the ten members' update. Where that ratio is above 2, ten seeds
for at most twice the wall time of one needs more arithmetic per second (more cores, a GPU), not
less overhead. ``--threads`` also times the K=10 update with more torch threads.

    python -m benchmarks.bench_learner --algos dqn_target dueling_dqn ddpg --members 10 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_algos import write_results
from rlexp.algos.registry import check_compatible, get_algorithm
from rlexp.buffer import ReplayBuffer
from rlexp.compose import compose_config
from rlexp.metrics import Counters
from rlexp.train import train_batch

ROOT = Path(__file__).resolve().parent.parent
ENV_OF = {"ddpg": "pendulum"}


def agent_and_buffer(cfg, k: int):
    spec = check_compatible(cfg)
    seeds = list(range(1, k + 1))
    agent = get_algorithm(cfg.algo.name).build(cfg, spec, seeds, torch.device("cpu"))
    a = cfg.algo
    buf = ReplayBuffer(10_000, spec.obs_dim, None if spec.discrete else spec.n_actions, seeds)
    rng = np.random.default_rng(0)
    for _ in range(2_000):
        obs = rng.standard_normal((k, spec.obs_dim)).astype(np.float32)
        act = (rng.integers(spec.n_actions, size=k) if spec.discrete
               else rng.uniform(-1, 1, (k, spec.n_actions)).astype(np.float32))
        buf.add(obs, act, rng.standard_normal(k), obs + 0.01, rng.random(k) < 0.02)
    return agent, buf, a.batch_size, a.gradient_steps


def time_update(agent, buf, batch_size: int, gradient_steps: int, calls: int) -> float:
    c = Counters(step=10_000, episodes=np.zeros(len(buf.rngs), dtype=np.int64))
    t = time.perf_counter()
    for _ in range(calls):
        agent.update_batches(buf.sample(batch_size, gradient_steps), c)
        c.step += 1
    return (time.perf_counter() - t) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["dqn_target", "dueling_dqn", "ddpg"])
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="also time the K-member update with this many threads")
    p.add_argument("--calls", type=int, default=100, help="update calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3000, help="env steps of the whole one-seed run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args(argv)
    cmd = "python -m benchmarks.bench_learner " + " ".join(argv if argv is not None else sys.argv[1:])
    k = a.members
    head = (f"| algo | update K=1 (ms) | update K={k} (ms) | update K={k} / K=1 | whole K=1 per env step (ms) | "
            f"**update K={k} / whole K=1** |")
    rows = [head + (f" update K={k}, {a.threads} threads (ms) |" if a.threads > 1 else ""),
            "|---" * (head.count("|") - 1 + (a.threads > 1)) + "|"]
    for algo in a.algos:
        torch.set_num_threads(1)
        cfg = compose_config([f"algo={algo}", f"env={ENV_OF.get(algo, 'cartpole')}", "tracking.enabled=false",
                              "train.save_model=false", f"train.max_steps={a.steps}", "train.max_episodes=1000000",
                              "train.stop_on_solve=false"])
        one, many = agent_and_buffer(cfg, 1), agent_and_buffer(cfg, k)
        t1, tk, tk_threads = [], [], []
        for _ in range(a.rounds):  # alternate, so load on the machine falls on both alike
            t1.append(time_update(*one, a.calls))
            tk.append(time_update(*many, a.calls))
            if a.threads > 1:
                torch.set_num_threads(a.threads)
                tk_threads.append(time_update(*many, a.calls))
                torch.set_num_threads(1)
        whole = train_batch([dataclasses.replace(cfg, seed=1)])[0]
        per_step = whole.wall_time_s / whole.env_steps
        u1, uk = statistics.median(t1), statistics.median(tk)
        row = (f"| {algo} | {u1 * 1e3:.2f} | {uk * 1e3:.2f} | {uk / u1:.1f} | {per_step * 1e3:.2f} | "
               f"**{uk / per_step:.1f}** |")
        if a.threads > 1:
            row += f" {statistics.median(tk_threads) * 1e3:.2f} |"
        rows.append(row)
        print(rows[-1], flush=True)
    text = "\n".join(rows)
    print(text)
    preamble = (f"{k} members against 1, default configs (`update_batches` on full minibatches from a filled "
                f"buffer, {a.calls} calls x {a.rounds} alternating rounds, medians; `whole K=1`: `train_batch` of "
                f"seed 1 for {a.steps} env steps, learning included). One torch thread unless stated.")
    out = write_results(a.out, "learner", "bench_learner", cmd, preamble, text)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
