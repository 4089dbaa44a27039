"""Training progress: a live tqdm bar per seed on a terminal, plain lines at most every
``train.log_every_s`` seconds elsewhere."""

from __future__ import annotations

import io
import math

import pytest

from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.progress import Progress, duration
from rlexp.train import train_batch


class Row:
    def __init__(self, seed: int, episodes: int, mean: float, env_steps: int = 0) -> None:
        self.seed, self.window, self.max_episodes, self.env_steps = seed, 100, 50, env_steps
        self.episodes, self.mean, self.solved_at = episodes, mean, None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_row_says_episode_mean_speed_and_time_left():
    p = Progress([Row(3, 25, 41.25)], None, 10, io.StringIO())
    # half the episode budget in 10 s: 10 s left
    assert p.row(0, 500, 10.0) == ("episode 25/50, mean return (last 100) 41.2, 500 env steps, 50 steps/s, "
                                   "ETA 0:10")
    # a step budget spent faster than the episodes sets the time left
    assert Progress([Row(3, 25, 41.25)], 625, 10, io.StringIO()).spent(0, 500) == 0.8
    assert Progress([Row(3, 0, math.nan)], None, 10, io.StringIO()).row(0, 0, 0.0).endswith("ETA ?")
    assert (duration(5), duration(65), duration(3725)) == ("0:05", "1:05", "1:02:05")


def test_off_a_terminal_lines_come_at_most_every_log_every_s():
    out = io.StringIO()
    rows = [Row(1, 10, 20.0), Row(2, 12, 30.0, env_steps=240)]
    Progress(rows, None, 3600, out).show(200, [0, 1])
    assert out.getvalue() == ""  # not yet
    p = Progress(rows, None, 1e-9, out)
    p.show(200, [0])  # member 2 ended: only the active one
    assert out.getvalue() == "rlexp: seed 1: " + p.row(0, 200, p._last - p.start) + "\n"


def test_on_a_terminal_a_tqdm_bar_per_member():
    out = Terminal()
    p = Progress([Row(1, 10, 20.0), Row(2, 40, 30.0)], None, 10, out)
    p.show(200, [0, 1], final=True)
    text = out.getvalue()
    assert len(p._bars) == 2
    assert "seed 1  20%|" in text and "seed 2  80%|" in text and "episode 40/50" in text


def test_training_reports_progress_lines(capfd):
    cfgs = [compose_config(["algo=dqn", "train.max_episodes=6", "algo.hidden=[8]", "tracking.enabled=false",
                            "train.save_model=false", "train.log_every_s=0.001", f"seed={s}"]) for s in (1, 2)]
    train_batch(cfgs, progress=True)
    err = capfd.readouterr().err
    assert "rlexp: seed 1: episode " in err and "rlexp: seed 2: episode " in err
    train_batch(cfgs)  # the API is quiet unless asked
    assert capfd.readouterr().err == ""


def test_log_every_s_must_be_positive():
    with pytest.raises(ConfigError, match=r"train.log_every_s=0.0 must be > 0"):
        compose_config(["train.log_every_s=0"])
