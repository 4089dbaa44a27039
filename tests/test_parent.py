"""A multirun's parent run: the aggregate of its children, per arm (pure parts; the CLI end to end is in
tests/test_tracking.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from rlexp.parent import aggregate, arm, arm_names, median_text, summary_metrics, summary_table


def child(arm_key: str, algo: str, solved_at: int | None, episodes: int, status: str = "FINISHED"):
    metrics = {"episodes": float(episodes), **({"episodes_to_solve": float(solved_at)} if solved_at else {})}
    return SimpleNamespace(info=SimpleNamespace(status=status),
                           data=SimpleNamespace(tags={"rlexp.arm": arm_key, "algo": algo}, metrics=metrics))


def test_arm_is_the_overrides_without_the_seed():
    assert arm(["algo=dqn", "seed=3", "optimizer.lr=0.001", "+seed=4"]) == "algo=dqn optimizer.lr=0.001"
    assert arm_names(["algo=dqn train.max_episodes=9", "algo=ppo train.max_episodes=9"]) == {
        "algo=dqn train.max_episodes=9": "algo=dqn", "algo=ppo train.max_episodes=9": "algo=ppo"}


def test_one_arm_five_seeds_median_with_its_exact_interval():
    solved = [120, 80, 200, 150]  # and one unsolved at its 300-episode budget
    runs = [child("algo=dqn", "dqn", s, s + 50) for s in solved] + [child("algo=dqn", "dqn", None, 300)]
    a = aggregate(runs)
    assert list(a) == ["dqn"]
    r = a["dqn"]
    assert (r["runs"], r["solved"], r["failed"]) == (5, 4, 0)
    assert r["median"] == np.median([*solved, 300]) == 150  # the censored run is the slowest either way
    # [first, last] is the 93.75% interval of 5 runs; the last is censored, so no upper end
    assert (r["lo"], r["level"]) == (80, 1 - 2 * 0.5**5) and math.isnan(r["hi"])
    assert median_text(r) == "150 [80, >] (93.75%)"
    m = summary_metrics(a)
    assert m == {"seeds": 5, "seeds_solved": 4, "median_episodes_to_solve": 150, "median_episodes_to_solve_lo": 80}
    solved_all = aggregate([child("a", "dqn", s, s) for s in (*solved, 260)])["dqn"]
    assert (solved_all["lo"], solved_all["hi"]) == (80, 260)


def test_two_arms_are_prefixed_and_an_arm_mostly_unsolved_has_no_median():
    runs = [child("algo=dqn x=1", "dqn", 40, 60), child("algo=dqn x=1", "dqn", 50, 70),
            child("algo=ppo x=1", "ppo", None, 90), child("algo=ppo x=1", "ppo", 30, 40, "KILLED"),
            child("algo=ppo x=1", "ppo", None, 90, "FAILED")]
    a = aggregate(runs)
    assert set(a) == {"algo=dqn", "algo=ppo"}
    assert a["algo=ppo"]["kind"] == "not reached" and median_text(a["algo=ppo"]) == "> 90"
    assert a["algo=ppo"]["failed"] == 2 and a["algo=ppo"]["solved"] == 1
    m = summary_metrics(a)
    assert m["algo:dqn/median_episodes_to_solve"] == 45 and m["algo:dqn/seeds_solved"] == 2
    assert "algo:ppo/median_episodes_to_solve" not in m and m["algo:ppo/seeds"] == 3
    assert all(math.isfinite(v) for v in m.values())
    assert "| algo=ppo | 3 | 1/3 | 2 | > 90 |" in summary_table(a)
