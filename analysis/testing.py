"""Contract-shaped synthetic MLflow runs for the analysis tests and benchmarks (no training).

The runs follow the core's MLflow contract: tags ``algo/env/seed/group``, dotted params, the
per-episode and final metrics, and an ``episodes.csv`` artifact. Solve times are not chosen
directly: a noisy logistic learning curve is drawn and the shared solve criterion
(:func:`rlexp.metrics.episodes_to_solve`) decides when, and whether, the run solved.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from rlexp.metrics import episodes_to_solve, rolling_mean

CARTPOLE = {"threshold": 475.0, "window": 100, "max_return": 500.0, "min_return": 8.0}
_BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch call


def synthetic_returns(
    rng: np.random.Generator,
    *,
    midpoint: float,
    max_episodes: int,
    threshold: float = CARTPOLE["threshold"],
    window: int = CARTPOLE["window"],
    max_return: float = CARTPOLE["max_return"],
    noise: float = 20.0,
    stop_when_solved: bool = True,
) -> np.ndarray:
    """Integer returns on a noisy logistic curve centred at ``midpoint``; cut at the solve episode."""
    ep = np.arange(1, max_episodes + 1)
    curve = max_return / (1.0 + np.exp(-(ep - midpoint) / max(0.15 * midpoint, 1.0)))
    r = np.clip(np.round(curve + rng.normal(0.0, noise, ep.size)), CARTPOLE["min_return"], max_return)
    if stop_when_solved:
        n = episodes_to_solve(r, window, threshold)
        if n is not None:
            r = r[:n]
    return r


def contract_params(
    *,
    algo: str,
    env: str,
    seed: int,
    max_episodes: int,
    threshold: float,
    window: int,
    overrides: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """Flattened config params as the core logs them (dotted keys, string values)."""
    params: dict[str, object] = {
        "algo.name": algo,
        "algo.gamma": 0.99,
        "algo.lr": 1e-3,
        "algo.batch_size": 64,
        "optimizer.name": "adam",
        "optimizer.lr": 1e-3,
        "env.id": env,
        "train.max_episodes": max_episodes,
        "train.max_steps": 10**6,
        "solve.threshold": threshold,
        "solve.window": window,
        "seed": seed,
    }
    params.update(overrides or {})
    return {k: str(v) for k, v in params.items()}


def log_contract_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    algo: str,
    env: str,
    seed: int,
    returns: Sequence[float],
    group: str = "g0",
    max_episodes: int | None = None,
    threshold: float = CARTPOLE["threshold"],
    window: int = CARTPOLE["window"],
    status: str = "FINISHED",
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
    episode_metrics: bool = True,
    episodes_csv: bool = True,
    step_axis: str = "env_step",
) -> str:
    """Log one contract-shaped run from its episode returns; returns the run id.

    ``step_axis``: the per-episode metrics' step, ``env_step`` (with the ``episode`` metric, as rlexp
    logs them) or ``episode`` (runs recorded before the env-step axis)."""
    r = np.asarray(returns, dtype=float)
    n = len(r)
    solved_at = episodes_to_solve(r, window, threshold)
    length = r.astype(int)
    env_step = np.cumsum(length)
    wall = np.round(env_step * 2e-4, 4)
    run_tags = {"algo": algo, "env": env, "seed": str(seed), "group": group, **(tags or {})}
    run = client.create_run(experiment_id, run_name=f"{algo}-{env}-{seed}", tags=run_tags)
    rid = run.info.run_id
    t0 = int(time.time() * 1000)
    metrics: list[Metric] = []
    if episode_metrics:
        means = rolling_mean(r, window)
        for i in range(n):
            step = int(env_step[i]) if step_axis == "env_step" else i + 1
            metrics += [
                Metric("episode_return", float(r[i]), t0, step),
                Metric("episode_return_mean", float(means[i]), t0, step),
                Metric("episode_length", float(length[i]), t0, step),
            ]
            if step_axis == "env_step":
                metrics.append(Metric("episode", float(i + 1), t0, step))
    final = {
        "solved": float(solved_at is not None),
        "episodes": float(n),
        "env_steps": float(env_step[-1]) if n else 0.0,
        "wall_time_s": float(wall[-1]) if n else 0.0,
    }
    final["sps"] = final["env_steps"] / final["wall_time_s"] if final["wall_time_s"] else 0.0
    if solved_at is not None:
        final["episodes_to_solve"] = float(solved_at)
    metrics += [Metric(k, v, t0, 0) for k, v in final.items()]
    p = contract_params(
        algo=algo,
        env=env,
        seed=seed,
        max_episodes=max_episodes or n,
        threshold=threshold,
        window=window,
        overrides=params,
    )
    client.log_batch(rid, params=[Param(k, v) for k, v in p.items()])
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(rid, metrics=metrics[i : i + _BATCH])
    if episodes_csv:
        table = pd.DataFrame(
            {
                "episode": np.arange(1, n + 1),
                "return": r,
                "length": length,
                "env_step": env_step,
                "wall_time_s": wall,
            }
        )
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        client.log_text(rid, buf.getvalue(), "episodes.csv")
    client.log_text(rid, "".join(f"{k}: {v}\n" for k, v in p.items()), "config.yaml")
    client.set_terminated(rid, status=status)
    return rid


def fill_store(
    tracking_uri: str,
    experiment: str,
    midpoints: Mapping[str, float],
    *,
    seeds: Sequence[int] = range(5),
    max_episodes: int = 300,
    env: str = "CartPole-v1",
    group: str = "g0",
    noise: float = 20.0,
    spread: float = 0.25,
    episode_metrics: bool = True,
    params: Mapping[str, Mapping[str, object]] | None = None,
) -> list[str]:
    """Log one synthetic run per (algo, seed); ``midpoints`` maps algo -> learning-curve midpoint.

    Each seed's midpoint is the algo's times a lognormal factor of log-sd ``spread``.
    """
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    ids = []
    for k, (algo, mid) in enumerate(midpoints.items()):
        for seed in seeds:
            rng = np.random.default_rng([seed, k])
            mid_seed = mid * float(np.exp(rng.normal(0.0, spread)))
            r = synthetic_returns(rng, midpoint=mid_seed, max_episodes=max_episodes, noise=noise)
            ids.append(
                log_contract_run(
                    client,
                    exp_id,
                    algo=algo,
                    env=env,
                    seed=seed,
                    returns=r,
                    group=group,
                    max_episodes=max_episodes,
                    episode_metrics=episode_metrics,
                    params=(params or {}).get(algo),
                )
            )
    return ids
