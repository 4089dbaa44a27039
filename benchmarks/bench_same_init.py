"""Given the same initial weights, does the seed-axis engine learn what the single-seed engine learned?

For each DQN-family algorithm it trains one seed on the reference commit (the single-seed engine, default
3b0e3b4: its agent keeps its Q-networks in ``q_nets``) and records that run's initial Q-network weights, then
trains the same seed on the current code from exactly those weights, with the same env, exploration and replay
generators (both engines seed them alike), and compares the returns episode by episode. It also says whether
the current code had drawn those same weights itself (a member's generator seeded with the seed gives torch's
global stream after ``torch.manual_seed(seed)``, in ``nn.Linear``'s order), that is whether the plain runs of a
seed start alike on both engines. Same maths: the runs stay identical until the kernels' rounding differences
(bmm against mm) flip one greedy action; a semantic difference (a target computed at another time, an
off-by-one in a schedule) would part them within the first updates.

    python -m benchmarks.bench_same_init --algos dqn dqn_target double_dqn clipped_double_dqn dueling_dqn --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_algos import write_results
from benchmarks.bench_batch import ROOT, reference_tree

# run in a child process with the reference commit's code: train, dump the initial nets and the returns
OLD = """
import json, sys, torch
import rlexp.algos.dqn as d
algo, seed, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
init = d.DQNAgent.__init__
def record(self, *a, **k):
    init(self, *a, **k)
    torch.save([{n: t.clone() for n, t in q.state_dict().items()} for q in self.q_nets], out + ".pt")
d.DQNAgent.__init__ = record
from rlexp.compose import compose_config
from rlexp.train import train
r = train(compose_config([f"algo={algo}", f"seed={seed}", f"train.max_steps={steps}", "train.max_episodes=1000000",
                          "train.stop_on_solve=false", "tracking.enabled=false", "train.save_model=false"]))
json.dump([float(x) for x in r.returns], open(out + ".json", "w"))
"""

# run with the current code: the same seed, its nets (and target nets) loaded with the recorded weights
NEW = """
import json, re, sys, torch
import rlexp.algos.dqn as d
algo, seed, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
recorded = torch.load(out + ".pt")
init = d.DQNAgent.__init__
drawn = []
def load(self, *a, **k):
    init(self, *a, **k)
    with torch.no_grad():
        for i, state in enumerate(recorded):
            for net in [self.nets[i]] + self.targets[i:i + 1]:
                own = net.state_dict()
                for name, t in state.items():  # q.3.weight (out, in) -> q.layers.3.weight (1, in, out)
                    mine = own[re.sub(r"^(\\w+)\\.(\\d+)\\.", r"\\1.layers.\\2.", name)]
                    t = (t.t() if t.dim() == 2 else t).reshape(mine.shape)
                    drawn.append(torch.equal(mine, t))
                    mine.copy_(t)
d.DQNAgent.__init__ = load
from rlexp.compose import compose_config
from rlexp.train import run_batch
r = run_batch([compose_config([f"algo={algo}", f"seed={seed}", f"train.max_steps={steps}",
                               "train.max_episodes=1000000", "train.stop_on_solve=false", "tracking.enabled=false",
                               "train.save_model=false"])])[0]
json.dump({"returns": [float(x) for x in r.returns], "drawn_alike": all(drawn)}, open(out + "-new.json", "w"))
"""


def run(code: str, tree: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} (code from {tree}) failed:\n{p.stderr[-2000:]}")


def compare(old: list[float], new: list[float]) -> tuple[int, int]:
    """Leading episodes with equal returns, and the env step at the end of the last of them."""
    same = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
    return same, int(sum(old[:same]))  # CartPole: one reward per step, so a return is a length


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["dqn", "dqn_target", "double_dqn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--steps", type=int, default=30_000, help="env steps per run")
    p.add_argument("--ref", default="3b0e3b4", help="the single-seed engine's commit")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args(argv)
    rows = ["| algo | seed | episodes in the run (reference / current) | identical leading episodes | "
            "env steps before the first difference | initial weights drawn alike |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="bench-same-init-") as tmp, \
            reference_tree(a.ref, Path(tmp) / "ref") as ref:
        assert ref is not None
        for algo in a.algos:
            for seed in a.seeds:
                out = str(Path(tmp) / f"{algo}-{seed}")
                args = [algo, str(seed), str(a.steps), out]
                run(OLD, ref, args)
                run(NEW, ROOT, args)
                old = json.loads(Path(out + ".json").read_text())
                current = json.loads(Path(out + "-new.json").read_text())
                new, alike = current["returns"], "yes" if current["drawn_alike"] else "no"
                same, steps = compare(old, new)
                rows.append(f"| {algo} | {seed} | {len(old)} / {len(new)} | {same} | {steps} | {alike} |")
                print(rows[-1], flush=True)
    cmd = "python -m benchmarks.bench_same_init " + " ".join(sys.argv[1:] if argv is None else argv)
    print(write_results(a.out, "same-init", "The seed-axis engine against the single-seed engine, same initial "
                        "weights", cmd, f"{a.steps} env steps per run, no stop on solve, untracked; reference {a.ref}.",
                        "\n".join(rows)))


if __name__ == "__main__":
    main()
