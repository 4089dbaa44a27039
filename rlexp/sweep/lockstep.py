"""A trial's seeds in lockstep (``pruner.lockstep``): one process per seed, judged together.

Run one after the other, a trial's seeds are judged one at a time: a configuration that fails its
first seed is stopped there (by the median pruner, or by the bound once one unsolved seed puts its
value out of reach), whatever it would have done on the others. In lockstep the seeds run side by
side, each in its own process, and pause at every ``pruner.report_every`` episodes. The trial then
reports, at step = episode, the aggregate over all its seeds of each one's value *if its budget
ended now* (a seed whose run has ended: its final value), and the pruner and the bound judge that.

Each seed runs exactly as it would alone (a fresh process, seeded by :func:`rlexp.train.run`), so a
trial that is not stopped records the same values and env steps either way: a no-pruner study is the
same search with or without lockstep. A seed's run is stopped only at a report where it goes on
(the last-report rule of :mod:`rlexp.sweep.objective`). A seed that fails (NaN, an exception) fails
the trial with its reason; the other seeds' runs then end KILLED.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlexp.compose import compose_config
from rlexp.envs import check_compatible, solve_threshold
from rlexp.loops import EpisodeInfo
from rlexp.sweep.objective import Objective, Pruned, aggregate, censor_penalty, run_ends, seed_now

JOIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SeedJob:
    """What a seed's process needs (picklable): the run's overrides and the report schedule."""

    index: int
    overrides: list[str]
    every: int
    penalty: float | None  # None: the budget
    max_return: float | None
    run_kwargs: dict[str, Any] = field(default_factory=dict)  # label, group, tags, parent_run_id


class SeedFailed(Exception):
    """A seed's run raised (or diverged): the trial fails with this reason."""


@dataclass
class Pause:
    """The seed's callback: at each report where its run goes on, send the seed's value and lower
    bound, and wait for the trial's word (go on, or stop)."""

    conn: Any
    budget: int
    every: int
    threshold: float
    penalty: float
    window: int
    max_return: float | None
    stop_on_solve: bool
    recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window)

    def message(self, info: EpisodeInfo) -> tuple[Any, ...] | None:
        """The report this episode sends (None: not a report episode, or the run ends here and its
        value comes with "done")."""
        self.recent.append(info.ret)
        if info.episode % self.every or run_ends(info, self.budget, self.stop_on_solve):
            return None
        cur, low = seed_now(info, self.recent, self.budget, self.window, self.threshold, self.penalty,
                            self.max_return)
        return ("report", info.episode, cur, low, info.env_step)

    def __call__(self, info: EpisodeInfo) -> None:
        msg = self.message(info)
        if msg is None:
            return
        self.conn.send(msg)
        word, reason = self.conn.recv()
        if word != "go":
            raise Pruned(reason)


def seed_main(conn: Any, job: SeedJob) -> None:
    """A seed's process (module-level: spawnable). Sends ``("report", ...)`` at each report,
    then ``("done", solved_at, value, env_steps)``, ``("stopped",)`` or ``("error", reason)``."""
    from rlexp.train import RunInterrupted, run

    try:
        cfg = compose_config([*job.overrides])
        budget = cfg.train.max_episodes
        penalty = censor_penalty(job.penalty, budget)
        threshold = solve_threshold(cfg, check_compatible(cfg))
        pause = Pause(conn, budget, job.every, threshold, penalty, cfg.solve.window, job.max_return,
                       cfg.train.stop_on_solve)
        result = run(cfg, callback=pause, **job.run_kwargs)
        value = Objective.seed_result(result, cfg.solve.window, threshold, budget, penalty)
        conn.send(("done", result.episodes_to_solve, value, result.env_steps))
    except (RunInterrupted, KeyboardInterrupt):
        _send(conn, ("stopped",))
    except BaseException as e:  # noqa: BLE001 - any failure is the trial's reason
        _send(conn, ("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _send(conn: Any, msg: tuple[Any, ...]) -> None:
    with contextlib.suppress(BrokenPipeError, EOFError, OSError):  # the other end is gone
        conn.send(msg)


@dataclass
class Seeds:
    """What the trial knows of its seeds (index order); ``None``: not known yet."""

    n: int
    final: list[float | None] = field(init=False)  # value of a seed whose run ended
    solved: list[int | None] = field(init=False)
    current: list[float | None] = field(init=False)  # value at the last report, as if the budget ended
    low: list[float | None] = field(init=False)  # lower bound at the last report
    env_steps: list[int] = field(init=False)
    ended: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.final, self.solved = [None] * self.n, [None] * self.n
        self.current, self.low = [None] * self.n, [None] * self.n
        self.env_steps, self.ended = [0] * self.n, [False] * self.n

    def values(self) -> list[float]:
        """Each seed's final value, else its value at the last report (seeds not heard from: none)."""
        return _known(self.final, self.current)

    def lows(self) -> list[float]:
        """Each seed's final value, else its lower bound at the last report."""
        return _known(self.final, self.low)


def _known(first: Sequence[float | None], then: Sequence[float | None]) -> list[float]:
    picked = (a if a is not None else b for a, b in zip(first, then, strict=True))
    return [v for v in picked if v is not None]


class Channel(Protocol):
    """The trial's end of a seed: messages from :func:`seed_main` (or a replay), words back."""

    def recv(self) -> tuple[Any, ...]: ...

    def send(self, word: tuple[str, str]) -> None: ...


@dataclass
class _Pipe:
    """A seed process's pipe."""

    conn: Any
    proc: Any
    index: int

    def recv(self) -> tuple[Any, ...]:
        try:
            return tuple(self.conn.recv())
        except (EOFError, OSError):
            self.proc.join(timeout=5)
            raise SeedFailed(f"seed index {self.index}: its process ended without a word "
                             f"(exit code {self.proc.exitcode})") from None

    def send(self, word: tuple[str, str]) -> None:
        _send(self.conn, word)


def run_lockstep(jobs: Sequence[SeedJob], how: str, report: Callable[[float, int], None],
                 should_prune: Callable[[], bool], check_bound: Callable[[float, str], None],
                 on_seed_done: Callable[[int, float, int | None, int], None], seeds: Seeds) -> float:
    """Run ``jobs`` side by side, a spawned process each, and :func:`coordinate` them; returns the
    trial's value. Whatever the end, every seed process has stopped when it returns or raises."""
    from rlexp.train import _sigterm_as_interrupt

    ctx = mp.get_context("spawn")
    conns: list[Any] = []
    procs: list[Any] = []
    ok = False
    try:
        with _sigterm_as_interrupt():  # SIGTERM (the sweep stopping): every seed's run ends KILLED
            channels = []
            for job in jobs:
                parent, child = ctx.Pipe()
                p = ctx.Process(target=seed_main, args=(child, job), name=f"seed-{job.index}", daemon=True)
                p.start()
                child.close()
                conns.append(parent)
                procs.append(p)
                channels.append(_Pipe(parent, p, job.index))
            value = coordinate(channels, how, report, should_prune, check_bound, on_seed_done, seeds)
        ok = True
        return value
    finally:
        _stop(procs, ok)
        for c in conns:
            c.close()


def coordinate(channels: Sequence[Channel], how: str, report: Callable[[float, int], None],
               should_prune: Callable[[], bool], check_bound: Callable[[float, str], None],
               on_seed_done: Callable[[int, float, int | None, int], None], seeds: Seeds) -> float:
    """Judge the seeds together; returns the trial's value (``how`` over its seeds).

    At each report round (every live seed paused at the same episode) the trial reports the
    aggregate of :meth:`Seeds.values` at step = episode, then ``check_bound`` on the aggregate of
    the lower bounds and ``should_prune``; either stops every live seed (``Pruned``, once each has
    said its run ended). ``seeds`` is updated as it goes (the caller records it whatever the end).
    Raises :class:`SeedFailed`, or ``RunInterrupted`` if a seed's run was interrupted.
    """
    from rlexp.train import RunInterrupted

    live = set(range(len(channels)))
    while live:
        paused: dict[int, int] = {}
        for i in sorted(live):
            msg = channels[i].recv()
            if msg[0] == "report":
                _, episode, cur, low, env = msg
                seeds.current[i], seeds.low[i], seeds.env_steps[i] = cur, low, env
                paused[i] = episode
            elif msg[0] == "done":
                _, solved_at, value, env = msg
                seeds.final[i], seeds.solved[i], seeds.env_steps[i], seeds.ended[i] = value, solved_at, env, True
                live.discard(i)
                on_seed_done(i, value, solved_at, env)
            elif msg[0] == "error":
                raise SeedFailed(f"seed index {i}: {msg[1]}")
            else:  # its run was interrupted (Ctrl-C reaches every process): so is the trial
                raise RunInterrupted(f"seed index {i}: its run was interrupted")
        if not paused:
            break
        episodes = set(paused.values())
        if len(episodes) != 1:  # every seed reports on the same grid: a bug, not an input
            raise RuntimeError(f"seeds paused at different episodes: {paused}")
        episode = episodes.pop()
        report(aggregate(seeds.values(), how), episode)
        where = f"step {episode} (episode {episode} of every seed)"
        try:
            check_bound(aggregate(seeds.lows(), how), where)
            if should_prune():
                raise Pruned(f"pruned at {where}")
        except Pruned as e:
            for i in paused:
                channels[i].send(("stop", str(e)))
            for i in paused:  # each run ends KILLED before the trial is recorded PRUNED
                channels[i].recv()
                seeds.ended[i] = True
            raise
        for i in paused:
            channels[i].send(("go", ""))
    return aggregate([v for v in seeds.final if v is not None], how)


def _stop(procs: Sequence[Any], ended: bool) -> None:
    """Wait for the seed processes (``ended``: every run has ended and said so), SIGTERM any still
    running (its run ends KILLED), and wait for all."""
    for p in procs if ended else ():
        p.join(timeout=JOIN_TIMEOUT_S)
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(timeout=JOIN_TIMEOUT_S)
        if p.is_alive():
            print(f"[lockstep] {p.name} did not stop in {JOIN_TIMEOUT_S:.0f} s: killed", file=sys.stderr)
            p.kill()
            p.join()
