"""The sweep's answer: the top trials run again on held-out seeds, the pick re-evaluated on fresh seeds
and written as an experiment preset, ``conf/experiment/<study>.yaml``, so that
``python -m rlexp +experiment=<study> seed=1,2,3 -m`` trains exactly the pick's configuration.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import FrozenTrial

from rlexp.algos.registry import check_compatible
from rlexp.compose import compose_config, compose_dict, is_group
from rlexp.envs import solve_threshold
from rlexp.sweep.objective import aggregate, algo_label, run_value
from rlexp.train import TrainResult, run_batch


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def top_table(trials: Sequence[FrozenTrial]) -> str:
    """Markdown table of complete trials (best first)."""
    rows = []
    for i, t in enumerate(trials, 1):
        ets = t.user_attrs.get("episodes_to_solve", [])
        params = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        rows.append([i, t.number, f"{t.value:.1f}", f"{sum(e is not None for e in ets)}/{len(ets)}",
                     ", ".join("-" if e is None else str(e) for e in ets), t.user_attrs.get("env_steps", 0),
                     " ".join(params)])
    header = ["rank", "trial", "value", "solved seeds", "episodes-to-solve", "env steps", "params"]
    return markdown(header, rows)


@dataclass
class EvalSummary:
    """A configuration trained on fresh seeds (:func:`evaluate`)."""

    seeds: list[int]
    runs: list[TrainResult]

    @property
    def solved(self) -> int:
        return sum(r.episodes_to_solve is not None for r in self.runs)

    @property
    def median_episodes_to_solve(self) -> float:
        """Median with unsolved runs counted as infinitely slow (censored)."""
        values = [math.inf if r.episodes_to_solve is None else float(r.episodes_to_solve) for r in self.runs]
        return float(statistics.median(values)) if values else math.nan

    def line(self) -> str:
        med = self.median_episodes_to_solve
        return (f"{self.solved}/{len(self.runs)} solved, median episodes-to-solve "
                f"{'unsolved' if math.isinf(med) else f'{med:g}'} on fresh seeds {self.seeds}")


def _batch(overrides: Sequence[str], seeds: Sequence[int], parent_run_id: str | None,
           tags: dict[str, Any]) -> tuple[Any, Any, list[TrainResult]]:
    """``overrides`` composed once and trained on ``seeds`` as one batch, tracked as configured."""
    cfg = compose_config(list(overrides))
    spec = check_compatible(cfg)  # once per batch: run_batch takes the spec
    group = f"{tags['sweep']}/{tags.get('sweep_role', 'eval')}" if "sweep" in tags else None
    results = run_batch([replace(cfg, seed=s) for s in seeds], label=algo_label(overrides), group=group,
                        tags=tags, parent_run_id=parent_run_id, spec=spec)  # SIGTERM: runs KILLED
    return cfg, spec, results


def evaluate(overrides: Sequence[str], seeds: Sequence[int], *, parent_run_id: str | None = None,
             tags: dict[str, Any] | None = None) -> EvalSummary:
    """Train ``overrides`` on ``seeds`` as one batch; a failed seed is a result."""
    return EvalSummary(list(seeds), _batch(overrides, seeds, parent_run_id, dict(tags or {}))[2])


def validation_runs(job: tuple[int, list[str], list[int], float | None, str | None, dict[str, Any]]
                    ) -> tuple[int, dict[str, dict[str, Any]]]:
    """Trial ``number``'s configuration on held-out seeds: (number, seed -> its record: value by the
    trials' censoring rule and budget, solved_at, env_steps, wall_time_s, error)."""
    number, overrides, seeds, penalty, parent_run_id, tags = job
    cfg, spec, results = _batch(overrides, seeds, parent_run_id, tags)
    threshold, budget = solve_threshold(cfg, spec), cfg.train.max_episodes
    return number, {str(s): {"value": run_value(r, cfg.solve.window, threshold, budget, penalty or budget),
                             "solved_at": r.episodes_to_solve, "env_steps": r.env_steps,
                             "wall_time_s": r.wall_time_s, "error": r.error}
                    for s, r in zip(seeds, results, strict=True)}


@dataclass
class Validated:
    """A top trial judged on its own seeds and the held-out validation seeds (:func:`pick`)."""

    number: int
    trial_value: float  # the trial's objective, over its own seeds
    seed_values: list[float]  # its own seeds' values
    validation: dict[int, float]  # validation seed -> value (the same censoring rule and budget)
    solved: int  # seeds solved, own and validation
    value: float  # the objective's aggregate over all of them: what the pick ranks by

    @property
    def seeds(self) -> int:
        return len(self.seed_values) + len(self.validation)


def pick(candidates: Sequence[FrozenTrial], records: dict[str, Any], seeds: Sequence[int],
         how: str) -> list[Validated]:
    """The candidates ranked by the objective over their own seeds and the validation ``seeds``
    (``records``: trial number -> seed -> ``{"value", "solved_at"}``, as the study stores them),
    best first, ties to the lower number; a trial whose validation is not all recorded is left out."""
    out = []
    for t in candidates:
        rec = records.get(str(t.number), {})
        if any(str(s) not in rec for s in seeds) or t.value is None:
            continue
        own = [float(v) for v in t.user_attrs.get("seed_values") or [t.value]]
        solved = sum(e is not None for e in t.user_attrs.get("episodes_to_solve") or [])
        solved += sum(rec[str(s)].get("solved_at") is not None for s in seeds)
        val = {s: float(rec[str(s)]["value"]) for s in seeds}
        value = aggregate([*own, *val.values()], how)
        out.append(Validated(t.number, float(t.value), own, val, solved, value))
    return sorted(out, key=lambda v: (v.value, v.number))


def validation_table(rows: Sequence[Validated]) -> str:
    """Markdown table of the validated trials, the pick first."""
    header = ["rank", "trial", "value (own + validation seeds)", "solved", "own seeds' value", "own seeds",
              "validation seeds"]
    return markdown(header, [[i, v.number, f"{v.value:.1f}", f"{v.solved}/{v.seeds}", f"{v.trial_value:.1f}",
                              ", ".join(f"{x:g}" for x in v.seed_values),
                              ", ".join(f"{s}: {x:g}" for s, x in v.validation.items())]
                             for i, v in enumerate(rows, 1)])


def preset_path(study_name: str, preset_dir: str | None) -> Path:
    """``<preset_dir or conf/experiment>/<study>.yaml``, the name made a file stem Hydra accepts."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    return Path(preset_dir or Path("conf", "experiment")) / f"{stem}.yaml"


def build(overrides: Sequence[str]) -> dict[str, Any]:
    """The preset's content: ``defaults`` for group choices, nested keys with the composed values."""
    dcfg = compose_dict(list(overrides))
    defaults: dict[str, str] = {}
    values: dict[str, Any] = {}
    for ov in overrides:
        raw_key, raw_value = ov.split("=", 1)
        key = raw_key.lstrip("+")
        if is_group(key):
            defaults[f"override /{key}" if raw_key == key else f"/{key}"] = raw_value
        elif key != "seed":
            node = OmegaConf.select(dcfg, key)
            if isinstance(node, DictConfig | ListConfig):
                node = OmegaConf.to_container(node, resolve=True)
            *parents, leaf = key.split(".")
            d = values
            for part in parents:
                d = d.setdefault(part, {})
            d[leaf] = node
    return {"defaults": [{k: v} for k, v in defaults.items()], **values} if defaults else values


def write(path: Path, overrides: Sequence[str], comment: Sequence[str]) -> Path:
    """Write the preset for ``overrides`` (base + the pick's params) under a provenance comment."""
    head = "# @package _global_\n" + "".join(f"# {line}\n".replace("# \n", "#\n") for line in comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + yaml.safe_dump(build(overrides), sort_keys=False))
    return path
