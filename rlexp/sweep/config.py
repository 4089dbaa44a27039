"""Typed schema of a sweep definition (``sweeps/NAME.yaml``), registered with Hydra as ``base_sweep``:
unknown keys and wrong types are refused at composition, bad ranges by ``__post_init__``. ``space`` is a
tree shaped like the rlexp config whose leaves are parameter specs (``space.algo.lr.high=1e-2``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from rlexp.config import ConfigError, _at_least_one, _check, _choice, _non_negative, _positive

PARAM_TYPES = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "threshold", "none")
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_overrides(key: str, overrides: list[str]) -> None:
    for ov in overrides:
        _check(isinstance(ov, str) and "=" in ov, key, ov, "entries must be key=value overrides")


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key and its range (built from a leaf of ``space``)."""

    key: str  # rlexp config key, e.g. algo.lr
    type: str  # float | int | categorical
    low: float | None = None  # float/int: lower bound (inclusive)
    high: float | None = None  # float/int: upper bound (inclusive)
    log: bool = False  # float/int: sample uniformly in log space (low > 0)
    step: float | None = None  # float/int: grid step from low; None: continuous (float) or 1 (int)
    choices: tuple[Any, ...] = ()  # categorical: scalars, or lists written as on the command line

    def __post_init__(self) -> None:
        at, choices = f"space.{self.key}", list(self.choices)
        _choice(f"{at}.type", self.type, PARAM_TYPES)
        if self.type == "categorical":
            _check(len(choices) >= 1, f"{at}.choices", choices, "must list at least one value")
            for name in ("low", "high", "step"):
                _check(getattr(self, name) is None, f"{at}.{name}", getattr(self, name),
                       "is not used by a categorical parameter (use choices)")
            _check(all(c is None or isinstance(c, bool | int | float | str | list) for c in choices),
                   f"{at}.choices", choices, "must hold scalars or lists")
            return
        _check(not choices, f"{at}.choices", choices, f"is only for categorical, not {self.type}")
        for name in ("low", "high"):
            v = getattr(self, name)
            _check(_is_number(v), f"{at}.{name}", v, "must be a finite number")
        assert self.low is not None and self.high is not None
        _check(self.low < self.high, f"{at}.low", self.low, f"must be < {at}.high ({self.high})")
        _check(not self.log or self.low > 0, f"{at}.low", self.low, "must be > 0 with log: true")
        if self.step is not None:
            _check(_is_number(self.step) and self.step > 0, f"{at}.step", self.step, "must be > 0")
            _check(not self.log, f"{at}.step", self.step, "cannot be combined with log: true")
        for name in ("low", "high", "step") if self.type == "int" else ():
            v = getattr(self, name)
            _check(v is None or float(v).is_integer(), f"{at}.{name}", v, "must be an integer for type: int")

    def optuna_choices(self) -> list[Any]:
        """Categorical choices as Optuna stores them: lists become their command-line text."""
        return [format_value(c) if isinstance(c, list) else c for c in self.choices]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (as the rlexp config holds it) is a point of this range or a choice."""
        if self.type == "categorical":
            return value in self.optuna_choices() or value in self.choices
        if not _is_number(value):
            return False
        assert self.low is not None and self.high is not None
        k = (value - self.low) / self.step if self.step else 0.0
        on_grid = abs(k - round(k)) < 1e-9 and (self.type != "int" or value == int(value))
        return self.low <= value <= self.high and on_grid

    def corners(self) -> list[Any]:
        """Values that validation composes: both bounds, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        return [int(self.low or 0), int(self.high or 0)] if self.type == "int" else [self.low, self.high]


def format_value(v: Any) -> str:
    """A value as Hydra reads it on the command line (floats exactly, strings quoted)."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_space(space: Mapping[str, Any], prefix: str = "") -> list[ParamSpec]:
    """The leaves of a ``space`` tree (a mapping with a ``type`` key) as validated specs."""
    out: list[ParamSpec] = []
    for k, v in space.items():
        key = f"{prefix}{k}"
        if not isinstance(v, Mapping) or not v:
            raise ConfigError(f"space.{key}={v!r} must be a parameter spec "
                              "{type: float|int|categorical, ...} or a section of them")
        if "type" not in v:
            out.extend(parse_space(v, key + "."))
            continue
        unknown = sorted(set(v) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(f"space.{key}.{unknown[0]} is not a parameter field; "
                              f"use {', '.join(sorted(_SPEC_KEYS))}")
        choices = v.get("choices")
        if choices is not None and not isinstance(choices, list | tuple):
            raise ConfigError(f"space.{key}.choices={choices!r} must be a list")
        out.append(ParamSpec(key, str(v["type"]), v.get("low"), v.get("high"), bool(v.get("log", False)),
                             v.get("step"), tuple(choices or ())))
    return out


@dataclass
class SamplerConfig:
    """The Optuna sampler that proposes each trial's parameters."""

    name: str = "tpe"  # tpe | random | cmaes | gp | qmc
    seed: int | None = 0  # trial k's sampler is seeded from (seed, k), whatever the workers; None: unseeded
    args: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the sampler class

    def __post_init__(self) -> None:
        _choice("sampler.name", self.name, SAMPLERS)


@dataclass
class PrunerConfig:
    """The Optuna pruner that stops hopeless trials, and how often trials report to it."""

    name: str = "median"  # median | percentile | successive_halving | hyperband | wilcoxon | threshold | none
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the pruner class
    report_every: int = 25  # episodes between intermediate values (and pruning checks)

    def __post_init__(self) -> None:
        _choice("pruner.name", self.name, PRUNERS)
        _at_least_one("pruner", self, "report_every")


@dataclass
class ObjectiveConfig:
    """Episodes-to-solve over a trial's seeds, unsolved seeds censored (see rlexp.sweep.objective)."""

    aggregate: str = "mean"  # mean | median of the per-seed values
    penalty: float | None = None  # episodes added for an unsolved seed, x (1 + shortfall); None: the budget

    def __post_init__(self) -> None:
        _choice("objective.aggregate", self.aggregate, ("mean", "median"))
        _positive("objective", self, "penalty")


@dataclass
class ValidationConfig:
    """The end of a sweep: the best trials again on held-out seeds, the pick on fresh ones."""

    top: int = 3  # complete trials run again on the held-out seeds, best first (0: pick the best as it is)
    seeds: int = 3  # held-out seeds each of them runs (seed_base + j), with the trials' budget and objective
    seed_base: int = 500_000
    eval_seeds: int = 5  # fresh seeds the pick is re-evaluated on, eval_seed_base + j (0: skip)
    eval_seed_base: int = 1_000_000
    # overrides of the re-evaluation and the preset only, after base and the pick's params
    # (train.max_episodes=1000: trials on a short budget, the pick judged on the full one)
    eval_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _non_negative("validation", self, "top", "seeds", "seed_base", "eval_seeds", "eval_seed_base")
        _check_overrides("validation.eval_overrides", self.eval_overrides)

    def seed_list(self) -> list[int]:
        """The held-out seeds (none when validation is off: top or seeds 0)."""
        return [self.seed_base + j for j in range(self.seeds)] if self.top >= 1 else []

    def fresh_seeds(self) -> list[int]:
        return [self.eval_seed_base + j for j in range(self.eval_seeds)]


@dataclass
class SweepConfig:
    """A whole sweep: what every trial starts from, what it searches, how trials are run and stored."""

    base: list[str] = field(default_factory=list)  # rlexp overrides of every trial: algo, env, budgets
    space: dict[str, Any] = field(default_factory=dict)  # search space: config tree of parameter specs
    # config groups searched too, group -> options: {algo: [double_dqn, clipped_double_dqn]} lets
    # the sampler choose the family member (the space's algo.* keys then apply to the chosen one)
    groups: dict[str, list[str]] = field(default_factory=dict)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    n_trials: int = 30  # trials to finish in the study (complete, pruned or failed); raise it to add trials
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # seeds of trial 0
    seed_stride: int = 1000  # trial k runs seeds[i] + k * seed_stride (0: every trial the same seeds)
    # a new study's first trials run the base config's values of the searched keys, then each other
    # group option at its own defaults (load.start_points)
    start_from_default: bool = True
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: str = "sqlite:///optuna.db"  # Optuna RDB URL or journal:///FILE; relative paths are from the cwd
    study_name: str | None = None  # None: the sweep's name
    workers: int = 1  # processes on this machine, each running trials of the shared study
    heartbeat_interval: int = 10  # s between a running trial's heartbeats; silent for 2x: failed as lost
    finalize: bool = True  # at the end: validate, re-evaluate, write the preset (false on helpers)
    preset_dir: str | None = None  # where the pick's preset goes; None: conf/experiment
    preset_unsolved: bool = False  # validate and write a pick even when no trial solved any of its seeds
    top: int = 5  # rows of the top-trials table printed at the end

    def __post_init__(self) -> None:
        _check_overrides("base", self.base)
        _check(bool(self.space) or bool(self.groups), "space", self.space, "must hold at least one parameter")
        for g, options in self.groups.items():
            _check("." not in g and not g.startswith(("+", "~")), f"groups.{g}", options,
                   "must be keyed by a config group's name (algo, env, optimizer, ...)")
            _check(len(options) >= 1, f"groups.{g}", options, "must list at least one option")
            _check(len(set(options)) == len(options), f"groups.{g}", options, "must not repeat an option")
        self.params()  # validates every leaf
        _at_least_one("", self, "n_trials", "workers", "heartbeat_interval", "top")
        _check(len(self.seeds) >= 1, "seeds", self.seeds, "must list at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "must be distinct")
        _check(all(s >= 0 for s in self.seeds), "seeds", self.seeds, "must be >= 0")
        _non_negative("", self, "seed_stride")
        if self.seed_stride:
            _check(self.seed_stride > max(self.seeds) - min(self.seeds), "seed_stride", self.seed_stride,
                   f"must exceed the spread of seeds ({self.seeds}) so trials never share a seed")
        v = self.validation
        clash = sorted(set(v.seed_list()) & set(v.fresh_seeds()))
        _check(not clash, "validation.seed_base", v.seed_base, f"gives seeds {clash} that the re-evaluation "
               f"uses (validation.eval_seed_base={v.eval_seed_base}); the pick must not see the seeds it is "
               "judged on")
        used = {s for k in range(self.n_trials) for s in self.trial_seeds(k)}
        for key, value, held_out in (("validation.eval_seed_base", v.eval_seed_base, v.fresh_seeds()),
                                     ("validation.seed_base", v.seed_base, v.seed_list())):
            clash = sorted(used.intersection(held_out))
            _check(not clash, key, value, f"gives seeds {clash} that trials run (seeds={self.seeds}, "
                   f"seed_stride={self.seed_stride}, n_trials={self.n_trials}); they must be held out")
        _check("://" in self.storage, "storage", self.storage, "must be a URL: sqlite:///optuna.db, "
               "postgresql://user:pw@host/db or journal:///optuna.log (a journal file)")
        if self.study_name is not None:  # it goes into MLflow search filters, which do not escape a backslash
            _check(0 < len(self.study_name.strip()) <= 200, "study_name", self.study_name[:40],
                   "must not be empty nor longer than 200 characters")
            _check(self.study_name.isprintable() and "\\" not in self.study_name, "study_name",
                   self.study_name, "must not hold backslashes or control characters")

    def params(self) -> list[ParamSpec]:
        """The searched parameters, validated: the group choices first, then the space in file order."""
        groups = [ParamSpec(g, "categorical", choices=tuple(opts)) for g, opts in self.groups.items()]
        return [*groups, *parse_space(self.space)]

    def trial_seeds(self, number: int) -> list[int]:
        """The seeds trial ``number`` runs (fixed, so that any trial can be reproduced)."""
        return [s + number * self.seed_stride for s in self.seeds]


FIELDS = frozenset(SweepConfig.__dataclass_fields__)


def register_sweep_schema() -> None:
    """Register the schema with Hydra's ConfigStore as ``base_sweep`` (idempotent)."""
    ConfigStore.instance().store(name="base_sweep", node=SweepConfig)
