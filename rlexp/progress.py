"""A batch's training progress on stderr, one row per member (seed).

On a terminal, a tqdm bar per member: the share of its budget spent (episodes, or env steps when
``train.max_steps`` ends it sooner), its episode, mean return over the solve window, env steps/s
and the time left at its pace so far. Off a terminal (a CI or SLURM log) the same as one plain line
per member at most every ``train.log_every_s`` seconds, so a log shows progress without redraws.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

REDRAW_S = 0.25  # on a terminal: seconds between redraws


class Member(Protocol):
    """What a row shows of a member (its :class:`~rlexp.loops.EpisodeRecorder`)."""

    seed: int
    window: int
    max_episodes: int
    env_steps: int  # at its last finished episode

    @property
    def episodes(self) -> int: ...

    @property
    def mean(self) -> float: ...

    @property
    def solved_at(self) -> int | None: ...


def duration(seconds: float) -> str:
    """``1:02:03``, ``2:03``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """The rows of a batch's members; :meth:`show` after every event, cheap between redraws."""

    def __init__(self, members: Sequence[Member], max_steps: int | None, every_s: float,
                 stream: TextIO | None = None) -> None:
        self.members = list(members)
        self.max_steps = max_steps
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.every_s = REDRAW_S if self.live else every_s
        self.start = time.perf_counter()
        self._last = self.start
        self._bars: list[Any] = []

    def spent(self, k: int, steps: int) -> float:
        """Member ``k``'s share of its budget after ``steps`` env steps: the larger of the episode
        and the step budgets' shares (the first one spent ends it)."""
        m = self.members[k]
        share = m.episodes / m.max_episodes
        return min(1.0, max(share, steps / self.max_steps if self.max_steps else 0.0))

    def row(self, k: int, steps: int, wall: float) -> str:
        """Member ``k``'s progress after ``steps`` env steps of its own and ``wall`` seconds."""
        m = self.members[k]
        done = self.spent(k, steps)
        left = wall * (1 - done) / done if done > 0 else math.inf
        mean = f"{m.mean:.1f}" if m.episodes else "-"
        solved = f", solved at episode {m.solved_at}" if m.solved_at is not None else ""
        return (f"episode {m.episodes}/{m.max_episodes}, mean return (last {m.window}) {mean}, "
                f"{steps} env steps, {steps / wall if wall > 0 else 0:.0f} steps/s, "
                f"ETA {duration(left)}{solved}")

    def show(self, step: int, active: Sequence[int], final: bool = False) -> None:
        """Redraw (a terminal) or print the active members' lines (a log) when it is time; the
        active members have taken ``step`` env steps each, the others stopped at their last episode."""
        now = time.perf_counter()
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        wall = now - self.start
        steps = [step if k in active else m.env_steps for k, m in enumerate(self.members)]
        if self.live:
            self._draw(steps, wall, final)
        elif not final:
            for k in active:
                print(f"rlexp: seed {self.members[k].seed}: {self.row(k, steps[k], wall)}", file=self.stream,
                      flush=True)

    def _draw(self, steps: list[int], wall: float, final: bool) -> None:
        if not self._bars:
            from tqdm import tqdm

            self._bars = [tqdm(total=1.0, position=k, file=self.stream, dynamic_ncols=True)
                          for k in range(len(self.members))]
        for k, bar in enumerate(self._bars):
            bar.n = self.spent(k, steps[k])
            bar.bar_format = f"seed {self.members[k].seed} {{percentage:3.0f}}%|{{bar}}| {self.row(k, steps[k], wall)}"
            bar.refresh()
        if final:
            for bar in self._bars:
                bar.close()
