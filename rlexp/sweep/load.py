"""Hydra at the sweep's edge: compose ``sweeps/NAME.yaml`` with command-line keys, validate, convert once.

A key of :class:`~rlexp.sweep.config.SweepConfig` overrides the definition; any other is appended to
``base``. The base composed with every parameter's bounds and choices must be a valid rlexp config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlexp.algos.registry import check_compatible
from rlexp.compose import (
    check_group_option,
    compose_config,
    compose_dict,
    group_choices,
    group_names,
    is_group,
    name_override,
    one_line,
    override_key,
    shipped,
)
from rlexp.config import Config, ConfigError
from rlexp.sweep.config import FIELDS, ParamSpec, SweepConfig, format_value, register_sweep_schema

SWEEPS_DIR = shipped("sweeps")
_ABSENT = object()
REPLACED = ("pruner.args", "sampler.args")  # given on the command line, they replace the file's arguments


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its definition, the study's name and the parameters searched."""

    name: str  # the sweep file's name
    cfg: SweepConfig
    params: tuple[ParamSpec, ...]

    @property
    def study_name(self) -> str:
        return self.cfg.study_name or self.name


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def _replaced_args(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """The ``pruner.args={...}`` / ``sampler.args={...}`` overrides by part (Hydra would merge them
    into the file's); ``pruner.name=X`` alone replaces the file's arguments with none."""
    keys = [override_key(ov) for ov in overrides]
    replaced: dict[str, dict[str, Any]] = {
        part: {} for part in ("pruner", "sampler")
        if f"{part}.name" in keys and not any(k.startswith(f"{part}.args") for k in keys)}
    for ov in (ov for ov in overrides if override_key(ov) in REPLACED):
        try:
            value = OverridesParser.create().parse_override(ov).value()
        except Exception as e:
            raise ConfigError(f"{ov}: {one_line(e)}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{ov}: must be a dict of keyword arguments, e.g. {override_key(ov)}={{a:1}}")
        replaced[override_key(ov).split(".")[0]] = value
    return replaced


def compose_sweep(sweep: str, overrides: Sequence[str] = ()) -> tuple[str, SweepConfig]:
    """Compose a sweep definition with overrides into the typed schema (no rlexp checks yet)."""
    register_sweep_schema()
    is_file = sweep.endswith((".yaml", ".yml"))
    path = Path(sweep).resolve() if is_file else SWEEPS_DIR / f"{sweep}.yaml"
    if not path.is_file():
        raise ConfigError(f"sweep={sweep!r}: no such file" if is_file else f"sweep={sweep!r} is not a file "
                          f"of sweeps/; choose one of: {', '.join(sweep_names())}")
    sweep_ovs: list[str] = []
    rlexp_ovs: list[str] = []
    known = set(Config.__dataclass_fields__) | set(group_names())
    for ov in overrides:
        if "=" not in ov and not ov.startswith("~"):
            raise ConfigError(f"{ov!r} is not a key=value override")
        top = override_key(ov).split(".", 1)[0]
        if top not in FIELDS | known:
            raise ConfigError(f"{ov}: {top!r} is neither a key of the sweep definition "
                              f"({', '.join(sorted(FIELDS))}) nor of the rlexp config "
                              f"({', '.join(sorted(known))})")
        (sweep_ovs if top in FIELDS else rlexp_ovs).append(ov)
    replaced = _replaced_args(sweep_ovs)
    sweep_ovs = [ov for ov in sweep_ovs if override_key(ov) not in REPLACED]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
            dcfg = compose(config_name=path.stem, overrides=sweep_ovs)
        for part, args in replaced.items():
            dcfg[part].args = args
        cfg = OmegaConf.to_object(dcfg)
    except ConfigError:
        raise
    except yaml.YAMLError as e:  # the file itself: where, and what the parser expected
        where = getattr(e, "problem_mark", None)
        at = f", line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or one_line(e)
        hint = " (quote a list item with brackets: - 'algo.hidden=[16]')" if "'['" in problem else ""
        raise ConfigError(f"{path.parent / path.stem}.yaml{at}: not valid YAML: {problem}{hint}") from None
    except Exception as e:
        msg = name_override(one_line(e), [*sweep_ovs, *(f"{k}.args" for k in replaced)])
        if "not in struct" in msg and ".args." in msg.split(":", 1)[0]:
            msg += " (pruner.args={...} / sampler.args={...} set all the arguments at once)"
        elif "not in struct" in msg:
            msg += " (a new key needs a leading +, e.g. +space.algo.gamma={type:float,low:0.9,high:0.999})"
        raise ConfigError(msg) from None
    if not isinstance(cfg, SweepConfig):
        raise ConfigError(f"sweep={sweep!r} does not extend the sweep schema: start it with "
                          "'defaults: [base_sweep, _self_]'")
    cfg.base = [*cfg.base, *rlexp_ovs]
    # a key given on the command line beats the definition's eval_overrides (train.max_episodes=50
    # for a quick try re-evaluates on 50 as well)
    cli_keys = {override_key(ov) for ov in rlexp_ovs}
    v = cfg.validation
    v.eval_overrides = [ov for ov in v.eval_overrides if override_key(ov) not in cli_keys]
    return path.stem, cfg


def param_override(p: ParamSpec, value: object) -> str:
    """The rlexp override setting ``p`` to ``value`` (an Optuna value or a corner)."""
    if is_group(p.key):
        return f"{p.key}={value}"  # a group option, as on the command line (unquoted)
    if p.type == "categorical" and isinstance(value, str) and value in p.optuna_choices():
        value = p.choices[p.optuna_choices().index(value)]  # back from a list's text
    return f"{p.key}={format_value(int(value) if p.type == 'int' else value)}"  # type: ignore[call-overload]


def _compose_checked(where: str, overrides: list[str]) -> None:
    try:
        check_compatible(compose_config(overrides))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def validate(name: str, cfg: SweepConfig) -> Sweep:
    """Check the base and the search space against the real rlexp config; raises ConfigError."""
    params, base, evals = cfg.params(), list(cfg.base), cfg.validation.eval_overrides
    searched = {p.key for p in params}
    for where, ovs in (("base", base), ("validation.eval_overrides", evals)):
        for ov in ovs:  # what a preset holds: neither a deletion nor the seed, nor a searched key
            key = override_key(ov)
            if ov.startswith("~"):
                raise ConfigError(f"{where}: {ov!r}: deletions cannot be written to a preset; set a value "
                                  "instead")
            if key == "seed":
                raise ConfigError(f"{where}: {ov!r}: the seeds are the sweep's (seeds=, validation.*seeds=)")
            if where != "base" and key in searched:
                raise ConfigError(f"{where}: {ov!r}: {key} is searched (space.{key}); the re-evaluation uses "
                                  "the pick's value")
    _compose_checked("base", base)
    _compose_checked("validation.eval_overrides", [*base, *evals])
    dbase = compose_dict(base)
    for p in params:
        if p.key == "seed" or p.key.startswith("hydra"):
            raise ConfigError(f"space.{p.key} cannot be searched: the seeds are the sweep's")
        if p.key in cfg.groups:  # a group's option, e.g. which member of the DQN family
            if not is_group(p.key):
                raise ConfigError(f"groups.{p.key}: {p.key!r} is not a config group; choose among: "
                                  f"{', '.join(group_names())}")
            for c in p.choices:
                check_group_option(p.key, c, at=f"groups.{p.key}: ")
            continue
        node = OmegaConf.select(dbase, p.key, default=_ABSENT)
        if node is _ABSENT:
            raise ConfigError(f"space.{p.key}: {p.key} is not a key of the rlexp config composed from base "
                              f"{base}")
        if isinstance(node, DictConfig) or (isinstance(node, ListConfig) and p.type != "categorical"):
            raise ConfigError(f"space.{p.key}: {p.key} is a section, not a value; search one of its keys")
    # every bound and every choice composed at least once, all parameters set at the same time
    corners = [p.corners() for p in params]
    for i in range(max(len(c) for c in corners)):
        ovs = [param_override(p, c[i % len(c)]) for p, c in zip(params, corners, strict=True)]
        _compose_checked(f"space: with {' '.join(ovs)}", base + ovs)
    return Sweep(name, cfg, tuple(params))


def default_params(sweep: Sweep, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The base config's values of the searched keys that lie in their range (Optuna's form), with
    ``extra`` overrides after the base (e.g. another group option)."""
    overrides = [*sweep.cfg.base, *extra]
    dbase = compose_dict(overrides)
    choices = group_choices(overrides) if any(is_group(p.key) for p in sweep.params) else {}
    out: dict[str, Any] = {}
    for p in sweep.params:
        v = choices.get(p.key) if is_group(p.key) else OmegaConf.select(dbase, p.key, default=None)
        if isinstance(v, ListConfig):
            v = format_value(OmegaConf.to_container(v))
        if v is not None and p.contains(v):
            out[p.key] = v
    return out


def start_points(sweep: Sweep) -> list[tuple[str, dict[str, Any]]]:
    """The trials a new study starts from (``start_from_default``), as (label, params): the base
    config's values of the searched keys, then each other option of a searched group at its own
    defaults. Keys whose default lies outside the space are left to the sampler."""
    points = [("default", default_params(sweep))]
    for p in sweep.params:
        if p.key in sweep.cfg.groups and is_group(p.key):
            for option in (o for o in p.choices if o != points[0][1].get(p.key)):
                params = {**default_params(sweep, [param_override(p, option)]), p.key: option}
                points.append((f"default {p.key}={option}", params))
    return [(label, params) for label, params in points if params]


def load(sweep: str, overrides: Sequence[str] = ()) -> Sweep:
    """Compose and validate ``sweep`` with command-line ``overrides``; raises ConfigError."""
    return validate(*compose_sweep(sweep, overrides))
