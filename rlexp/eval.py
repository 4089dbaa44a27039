"""Evaluate and watch a trained agent: ``python -m rlexp.eval run=RUN_ID episodes=10 video=true``.

Rebuilds the run's policy (:func:`rlexp.policy.load_policy`), plays ``episodes`` greedy episodes
and logs ``eval/return_mean``, ``eval/return_std`` and ``eval/episodes`` to the run (at step = the
episodes it trained). With ``video=true`` the first ``video_episodes`` are recorded headless as
MP4 (gymnasium's ``RecordVideo``) under the run's artifacts, ``video/``; ``render=human`` opens a
window instead, where a display exists. ``eval.episodes`` runs the same :func:`evaluate` at the
end of training.

Evaluation episode ``j`` starts from env seed ``EVAL_SEED + j``: the same start states for every
run, none of which a training env sees (their seeds are a run's ``seed + i``, below 2**32 + the
number of envs).

Exit status: 0, or 2 with one line for a bad argument, an unknown run or a run without a model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np

from rlexp import command_name
from rlexp.config import ConfigError, EnvConfig

EVAL_SEED = 2**33  # evaluation episode j: env seed EVAL_SEED + j


@dataclass(frozen=True)
class EvalResult:
    """The returns and lengths of the greedy episodes."""

    returns: list[float]
    lengths: list[int]

    def metrics(self) -> dict[str, float]:
        r = np.asarray(self.returns, dtype=np.float64)
        return {"eval/return_mean": float(r.mean()), "eval/return_std": float(r.std()),
                "eval/episodes": float(len(r))}


def evaluate(act: Callable[[np.ndarray], Any], env: EnvConfig, episodes: int, *, video_dir: Path | None = None,
             video_episodes: int = 1, render: str | None = None) -> EvalResult:
    """Play ``episodes`` episodes of ``env`` with ``act(obs) -> action`` (episode ``j`` from env seed
    ``EVAL_SEED + j``); the first ``video_episodes`` are recorded as MP4 into ``video_dir`` when given."""
    if video_dir is not None:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame without a display
    mode = "rgb_array" if video_dir is not None else render
    e = gym.make(env.id, render_mode=mode, **env.kwargs)
    if video_dir is not None:
        e = gym.wrappers.RecordVideo(e, str(video_dir), episode_trigger=lambda j: j < video_episodes,
                                     name_prefix="eval", disable_logger=True)
    returns, lengths = [], []
    try:
        for j in range(episodes):
            obs, _ = e.reset(seed=EVAL_SEED + j)
            ret, n, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, _ = e.step(act(obs))
                ret += float(reward)
                n += 1
                done = terminated or truncated
            returns.append(ret)
            lengths.append(n)
    finally:
        e.close()
    return EvalResult(returns, lengths)


@dataclass
class EvalArgs:
    """The command line of ``python -m rlexp.eval``."""

    run: str = ""  # MLflow run id, or a model URI (models:/name/version, runs:/id/model)
    episodes: int = 10  # greedy episodes
    video: bool = False  # record the first video_episodes as MP4 under the run's artifacts (video/)
    video_episodes: int = 1
    render: str = "none"  # none | human (a window, where a display exists)


RENDERS = ("none", "human")
_TYPES: dict[str, type] = {"run": str, "episodes": int, "video": bool, "video_episodes": int, "render": str}


def _item(text: str) -> tuple[str, Any]:
    """One ``key=value`` argument, typed and checked; argparse turns a ValueError into one line."""
    key, sep, value = text.partition("=")
    if not sep or key not in _TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not an argument; use {', '.join(f'{k}=' for k in _TYPES)}")
    kind = _TYPES[key]
    if kind is bool:
        if value.lower() not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"{key}={value!r} must be true or false")
        return key, value.lower() == "true"
    if kind is int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}={value!r} must be an integer") from None
        if number < 1:
            raise argparse.ArgumentTypeError(f"{key}={number} must be >= 1")
        return key, number
    if key == "render" and value not in RENDERS:
        raise argparse.ArgumentTypeError(f"render={value!r} must be none or human")
    return key, value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise ConfigError(message.split(": ", 1)[-1] if message.startswith("argument") else message)


def _candidates(words: list[str], current: str) -> list[str]:
    """Tab completion (rlexp.completion): the keys, and the choices of the boolean and render keys."""
    key, eq, _ = current.partition("=")
    if eq:
        values = ("true", "false") if _TYPES.get(key) is bool else RENDERS if key == "render" else ()
        return [f"{key}={v}" for v in values]
    return [f"{k}=" for k in _TYPES]


def parse_args(argv: Sequence[str]) -> EvalArgs:
    """``key=value`` arguments (:class:`EvalArgs`); a bad one raises ConfigError naming it."""
    parser = _Parser(prog=command_name("rlexp.eval", "rlexp-eval"), description=__doc__.split("\n")[0])
    parser.add_argument("items", nargs="*", type=_item, metavar="KEY=VALUE",
                        help=f"keys: {', '.join(_TYPES)} (run= is required)")
    args = EvalArgs(**dict(parser.parse_args(list(argv)).items))
    if not args.run:
        raise ConfigError("run= is required: an MLflow run id or a model URI")
    return args


def run_eval(args: EvalArgs) -> EvalResult:
    """Evaluate the run's policy and log the metrics (and videos) to the run, when ``run`` is a run id."""
    from mlflow.tracking import MlflowClient

    from rlexp.policy import load_policy
    from rlexp.tracking import MlflowTracker, tracking_uri

    policy = load_policy(args.run)
    run_id = None if ":/" in args.run else args.run
    with tempfile.TemporaryDirectory(prefix="rlexp-eval-") as tmp:
        video_dir = Path(tmp) / "video" if args.video else None
        result = evaluate(policy.act, policy.config.env, args.episodes, video_dir=video_dir,
                          video_episodes=args.video_episodes, render=None if args.render == "none" else args.render)
        if run_id is not None:
            client = MlflowClient(tracking_uri())
            trained = client.get_run(run_id).data.metrics.get("episodes", 0.0)
            tracker = MlflowTracker(client, run_id)
            tracker.log_metrics(result.metrics(), step=int(trained))
            tracker.flush()
            if video_dir is not None:
                tracker.log_artifact(video_dir)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from rlexp.completion import handle

    if handle(sys.argv[1:] if argv is None else argv, _candidates):
        return 0
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        result = run_eval(args)
    except ConfigError as e:
        print(f"rlexp.eval: error: {e}", file=sys.stderr)
        return 2
    m = result.metrics()
    print(f"rlexp.eval: {args.run}: greedy return {m['eval/return_mean']:.2f} +- {m['eval/return_std']:.2f} "
          f"over {len(result.returns)} episodes (lengths {min(result.lengths)}-{max(result.lengths)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
