"""Typed schema of a sweep definition (``sweeps/NAME.yaml``); values live in the YAML files.

The schema is registered in Hydra's ConfigStore as ``base_sweep``; a sweep file extends it
(``defaults: [base_sweep, _self_]``), so an unknown key or a wrong type is refused at composition
and the range checks in ``__post_init__`` name the key and the value, as in :mod:`rlexp.config`.

The search space is a tree shaped like the rlexp config whose leaves are parameter specs::

    space:
      algo:
        lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
        batch_size: {type: categorical, choices: [32, 64, 128]}

so that ``space.algo.lr.high=1e-2``, ``+space.algo.gamma={type:float,low:0.9,high:0.999}`` and
``~space.algo.batch_size`` work on the command line like any Hydra key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from rlexp.config import ConfigError, _check, _choice

PARAM_TYPES = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "threshold", "bound", "none")
AGGREGATES = ("mean", "median")
PRUNED_VALUES = ("last", "seeds_run")
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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
        at = f"space.{self.key}"
        _choice(f"{at}.type", self.type, PARAM_TYPES)
        if self.type == "categorical":
            _check(len(self.choices) >= 1, f"{at}.choices", list(self.choices), "must list at least one value")
            for name in ("low", "high", "step"):
                _check(getattr(self, name) is None, f"{at}.{name}", getattr(self, name),
                       "is not used by a categorical parameter (use choices)")
            for c in self.choices:
                ok = c is None or isinstance(c, bool | int | float | str | list)
                _check(ok, f"{at}.choices", list(self.choices), "must hold scalars or lists")
            return
        _check(not self.choices, f"{at}.choices", list(self.choices), f"is only for categorical, not {self.type}")
        for name in ("low", "high"):
            _check(_is_number(getattr(self, name)), f"{at}.{name}", getattr(self, name), "must be a finite number")
        assert self.low is not None and self.high is not None
        _check(self.low < self.high, f"{at}.low", self.low, f"must be < {at}.high ({self.high})")
        if self.log:
            _check(self.low > 0, f"{at}.low", self.low, "must be > 0 with log: true")
        if self.step is not None:
            _check(_is_number(self.step) and self.step > 0, f"{at}.step", self.step, "must be > 0")
            _check(not self.log, f"{at}.step", self.step, "cannot be combined with log: true")
        if self.type == "int":
            for name in ("low", "high", "step"):
                v = getattr(self, name)
                if v is not None:
                    _check(float(v).is_integer(), f"{at}.{name}", v, "must be an integer for type: int")

    def optuna_choices(self) -> list[Any]:
        """Categorical choices as Optuna stores them: lists become their command-line text."""
        return [format_value(c) if isinstance(c, list) else c for c in self.choices]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (as the rlexp config holds it) is a point of this range or a choice."""
        if self.type == "categorical":
            return value in self.optuna_choices() or value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high or (self.type == "int" and value != int(value)):
            return False
        if self.step:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def corners(self) -> list[Any]:
        """Values that validation composes: both bounds, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low or 0), int(self.high or 0)]
        return [self.low, self.high]


def format_value(v: Any) -> str:
    """A value as Hydra reads it on the command line (floats exactly, strings quoted)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def parse_space(space: Mapping[str, Any], prefix: str = "") -> list[ParamSpec]:
    """The leaves of a ``space`` tree (a mapping with a ``type`` key) as validated specs."""
    out: list[ParamSpec] = []
    for k, v in space.items():
        key = f"{prefix}{k}"
        if not isinstance(v, Mapping):
            raise ConfigError(f"space.{key}={v!r} must be a parameter spec "
                              "{type: float|int|categorical, ...} or a section of them")
        if "type" not in v:
            if not v:
                raise ConfigError(f"space.{key} is an empty section")
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
    # false: Optuna's own handling (TPE ranks every pruned trial below every complete one); true:
    # the sampler sees a pruned trial as complete with its last reported value (a pessimistic one).
    # Off by default: with it off the dqn_cartpole sweep met the pruning figure on both sampler
    # seeds measured, with it on on neither (benchmarks/results/sweep-2026-11-22-{0813,0814,0934,1025}.md)
    consider_pruned: bool = False
    # with consider_pruned, the value a pruned trial is seen with: last (its last reported value:
    # the seeds it did not run count as the worst) | seeds_run (the objective over the seeds it ran,
    # the one in flight as if its budget had ended at the stop: a trial stopped after solving two
    # seeds ranks with the trials that solved two, not below every configuration that solved none)
    pruned_value: str = "last"

    def __post_init__(self) -> None:
        _choice("sampler.name", self.name, SAMPLERS)
        _choice("sampler.pruned_value", self.pruned_value, PRUNED_VALUES)


@dataclass
class PrunerConfig:
    """The Optuna pruner that stops hopeless trials, and how often trials report to it."""

    # median | percentile | successive_halving | hyperband | threshold: Optuna's pruner (and the bound);
    # bound: the bound alone (args: n_startup_trials only); none: no pruning
    name: str = "median"
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the pruner class
    report_every: int = 25  # episodes between intermediate values (and pruning checks)
    # also stop a trial whose lower bound is above the best complete value (it can no longer
    # win; see rlexp.sweep.objective) once args.n_startup_trials trials are complete; off with
    # pruner.name=none
    bound: bool = True
    max_return: float | None = None  # the most one episode can return: tightens that bound
    # the bound compares with the bound_rank-th best complete value, not the best: 1 stops every
    # trial that cannot win; k lets a trial complete while it can still enter the top k, so the
    # sampler's good group (TPE's: the best ~10% of trials, 3 of 30) is made of trials that were
    # run to the end, not of whatever completed before the pruner started (see rlexp.sweep.objective;
    # on dqn_cartpole 3 did not find a better best than 1: sweeps/dqn_cartpole.yaml)
    bound_rank: int = 1
    # run a trial's seeds side by side (a process each) and judge them together: at every report
    # the trial's value over all its seeds, at step = episode (rlexp.sweep.lockstep); false: one
    # seed after the other, each judged at the end of its own slot of steps. Without a pruner both
    # run the same runs and record the same values
    lockstep: bool = False

    def __post_init__(self) -> None:
        _choice("pruner.name", self.name, PRUNERS)
        _check(self.report_every >= 1, "pruner.report_every", self.report_every, "must be >= 1")
        _check(self.bound_rank >= 1, "pruner.bound_rank", self.bound_rank, "must be >= 1")
        _check(self.bound or self.name != "bound", "pruner.bound", self.bound,
               "must be true with pruner.name=bound (the bound is then the only thing that stops trials)")


@dataclass
class ObjectiveConfig:
    """Episodes-to-solve over a trial's seeds, unsolved seeds censored (see rlexp.sweep.objective)."""

    aggregate: str = "mean"  # mean | median of the per-seed values
    penalty: float | None = None  # episodes added for an unsolved seed, x (1 + shortfall); None: the budget

    def __post_init__(self) -> None:
        _choice("objective.aggregate", self.aggregate, AGGREGATES)
        if self.penalty is not None:
            _check(self.penalty > 0, "objective.penalty", self.penalty, "must be > 0")


@dataclass
class ValidationConfig:
    """Before the pick: the best complete trials run again on held-out seeds, and the one best over
    its own seeds and these wins (see rlexp.sweep.runner.pick). Three seeds per trial cannot tell
    a configuration that fails one seed in five from a reliable one; the validation seeds can."""

    top: int = 3  # complete trials validated, best first (0: the best trial is picked as it is)
    seeds: int = 3  # held-out seeds each runs, seed_base + j: with the trials' budget and objective
    seed_base: int = 500_000  # checked unused by trials and apart from the re-evaluation's fresh seeds

    def __post_init__(self) -> None:
        _check(self.top >= 0, "validation.top", self.top, "must be >= 0")
        _check(self.seeds >= 0, "validation.seeds", self.seeds, "must be >= 0")
        _check(self.seed_base >= 0, "validation.seed_base", self.seed_base, "must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.top >= 1 and self.seeds >= 1

    def seed_list(self) -> list[int]:
        return [self.seed_base + j for j in range(self.seeds)] if self.enabled else []


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
    eval_seeds: int = 5  # fresh seeds the best config is re-evaluated on at the end (0: skip)
    # the first trial of a new study runs the base config's own values of the searched keys (those
    # inside the space), so the search starts from the default and the sampler has it as an anchor;
    # with groups, the next trials run each other option at its own defaults (load.start_points)
    start_from_default: bool = True
    eval_seed_base: int = 1_000_000  # the fresh seeds are eval_seed_base + j; checked unused by trials
    # overrides added to the re-evaluation and the preset only, after base and the best params: e.g.
    # train.max_episodes=1000 to judge the winner on the full budget when trials use a short one
    eval_overrides: list[str] = field(default_factory=list)
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # the top trials on held-out seeds
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: str = "sqlite:///optuna.db"  # any Optuna RDB URL; relative SQLite paths are from the cwd
    study_name: str | None = None  # None: the sweep's name
    workers: int = 1  # processes on this machine, each running trials of the shared study
    heartbeat_interval: int = 10  # s between a running trial's heartbeats; silent for 2x: failed as lost
    finalize: bool = True  # at the end: re-evaluate the best, plot, write the preset (false on helpers)
    preset_dir: str | None = None  # where the best config's preset goes; None: conf/experiment
    top: int = 5  # rows of the top-trials table printed at the end

    def __post_init__(self) -> None:
        for ov in self.base:
            _check(isinstance(ov, str) and "=" in ov, "base", ov, "entries must be key=value overrides")
        for ov in self.eval_overrides:
            _check(isinstance(ov, str) and "=" in ov, "eval_overrides", ov, "entries must be key=value overrides")
        _check(bool(self.space) or bool(self.groups), "space", self.space, "must hold at least one parameter")
        for g, options in self.groups.items():
            _check("." not in g and not g.startswith(("+", "~")), f"groups.{g}", options,
                   "must be keyed by a config group's name (algo, env, optimizer, ...)")
            _check(len(options) >= 1, f"groups.{g}", options, "must list at least one option")
            _check(len(set(options)) == len(options), f"groups.{g}", options, "must not repeat an option")
        self.params()  # validates every leaf
        _check(self.n_trials >= 1, "n_trials", self.n_trials, "must be >= 1")
        _check(len(self.seeds) >= 1, "seeds", self.seeds, "must list at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "must be distinct")
        _check(all(s >= 0 for s in self.seeds), "seeds", self.seeds, "must be >= 0")
        _check(self.seed_stride >= 0, "seed_stride", self.seed_stride, "must be >= 0")
        if self.seed_stride:
            _check(self.seed_stride > max(self.seeds) - min(self.seeds), "seed_stride", self.seed_stride,
                   f"must exceed the spread of seeds ({self.seeds}) so trials never share a seed")
        _check(self.eval_seeds >= 0, "eval_seeds", self.eval_seeds, "must be >= 0")
        _check(self.eval_seed_base >= 0, "eval_seed_base", self.eval_seed_base, "must be >= 0")
        clash = sorted(set(self.validation.seed_list()) & set(self.fresh_seeds()))
        _check(not clash, "validation.seed_base", self.validation.seed_base,
               f"gives seeds {clash} that the re-evaluation uses (eval_seed_base={self.eval_seed_base}); "
               "the pick must not see the seeds it is judged on")
        used = {s for k in range(self.n_trials) for s in self.trial_seeds(k)}
        for key, value, held_out in (("eval_seed_base", self.eval_seed_base, self.fresh_seeds()),
                                     ("validation.seed_base", self.validation.seed_base, self.validation.seed_list())):
            clash = sorted(used.intersection(held_out))
            _check(not clash, key, value, f"gives seeds {clash} that trials run (seeds={self.seeds}, "
                   f"seed_stride={self.seed_stride}, n_trials={self.n_trials}); they must be held out")
        _check(bool(self.storage), "storage", self.storage, "must be an Optuna storage URL")
        _check("://" in self.storage, "storage", self.storage,
               "must be a database URL, e.g. sqlite:///optuna.db or postgresql://user:pw@host/db")
        if self.study_name is not None:
            _check(bool(self.study_name.strip()), "study_name", self.study_name, "must not be empty")
            # it names MLflow runs (sweep-NAME-trial-N: 250 characters at most) and goes into their
            # search filters, where quotes are escaped but a backslash is not
            _check(len(self.study_name) <= 200, "study_name", self.study_name[:40] + "...",
                   f"is {len(self.study_name)} characters long; at most 200")
            _check(self.study_name.isprintable() and "\\" not in self.study_name, "study_name", self.study_name,
                   "must not hold backslashes or control characters")
        _check(self.workers >= 1, "workers", self.workers, "must be >= 1")
        _check(self.heartbeat_interval >= 1, "heartbeat_interval", self.heartbeat_interval, "must be >= 1")
        _check(self.top >= 1, "top", self.top, "must be >= 1")

    def params(self) -> list[ParamSpec]:
        """The searched parameters, validated: the group choices first, then the space in file order."""
        groups = [ParamSpec(g, "categorical", choices=tuple(opts)) for g, opts in self.groups.items()]
        return [*groups, *parse_space(self.space)]

    def trial_seeds(self, number: int) -> list[int]:
        """The seeds trial ``number`` runs (fixed, so that any trial can be reproduced)."""
        return [s + number * self.seed_stride for s in self.seeds]

    def fresh_seeds(self) -> list[int]:
        """The seeds of the final re-evaluation."""
        return [self.eval_seed_base + j for j in range(self.eval_seeds)]


FIELDS = frozenset(SweepConfig.__dataclass_fields__)


def register_sweep_schema() -> None:
    """Register the schema with Hydra's ConfigStore as ``base_sweep`` (idempotent)."""
    ConfigStore.instance().store(name="base_sweep", node=SweepConfig)
