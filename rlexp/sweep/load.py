"""Hydra at the sweep's edge: compose ``sweeps/NAME.yaml`` with command-line keys, validate, convert once.

A ``key=value`` whose first part is a field of :class:`~rlexp.sweep.config.SweepConfig` (``n_trials=10``,
``space.algo.lr.high=1e-2``) overrides the definition; any other (``train.max_episodes=30``) is an rlexp
override appended to ``base``. Everything is checked before a trial runs: the definition's types and
ranges, that every searched key exists in the rlexp config, and that the base composed with each
parameter's bounds and choices is a valid, compatible config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

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


def _locate(sweep: str) -> tuple[Path, str]:
    """``sweep=NAME`` (a file of sweeps/) or ``sweep=path/to/file.yaml``: (config dir, name)."""
    path = Path(sweep).resolve() if sweep.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{sweep}.yaml"
    if not path.is_file():
        raise ConfigError(f"sweep={sweep!r}: no such file" if sweep.endswith((".yaml", ".yml")) else
                          f"sweep={sweep!r} is not a file of sweeps/; choose one of: {', '.join(sweep_names())}")
    return path.parent, path.stem


def _replaced_args(overrides: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Pull out ``pruner.args={...}`` / ``sampler.args={...}``: they replace the file's arguments
    (Hydra would merge them), and ``pruner.name=X`` alone starts X without any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    replaced: dict[str, dict[str, Any]] = {}
    for ov in [ov for ov in overrides if override_key(ov) in ("pruner.args", "sampler.args")]:
        try:
            value = OverridesParser.create().parse_override(ov).value()
        except Exception as e:
            raise ConfigError(f"{ov}: {one_line(e)}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{ov}: must be a dict of keyword arguments, e.g. {override_key(ov)}={{a:1}}")
        replaced[override_key(ov).split(".")[0]] = value
    rest = [ov for ov in overrides if override_key(ov) not in ("pruner.args", "sampler.args")]
    for part in ("pruner", "sampler"):
        keys = [override_key(ov) for ov in rest]
        if f"{part}.name" in keys and not any(k.startswith(f"{part}.args") for k in keys):
            replaced.setdefault(part, {})
    return replaced, rest


def compose_sweep(sweep: str, overrides: Sequence[str] = ()) -> tuple[str, SweepConfig]:
    """Compose a sweep definition with overrides into the typed schema (no rlexp checks yet)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_sweep_schema()
    conf_dir, name = _locate(sweep)
    sweep_ovs: list[str] = []
    rlexp_ovs: list[str] = []
    known = set(Config.__dataclass_fields__) | set(group_names())
    for ov in overrides:
        if "=" not in ov and not ov.startswith("~"):
            raise ConfigError(f"{ov!r} is not a key=value override")
        top = override_key(ov).split(".", 1)[0]
        if top not in FIELDS | known:
            raise ConfigError(f"{ov}: {top!r} is neither a key of the sweep definition ({', '.join(sorted(FIELDS))}) "
                              f"nor of the rlexp config ({', '.join(sorted(known))})")
        (sweep_ovs if top in FIELDS else rlexp_ovs).append(ov)
    replaced, sweep_ovs = _replaced_args(sweep_ovs)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            dcfg = compose(config_name=name, overrides=sweep_ovs)
        for part, args in replaced.items():
            dcfg[part].args = args
        cfg = OmegaConf.to_object(dcfg)
    except ConfigError:
        raise
    except Exception as e:
        if isinstance(e, yaml.YAMLError):  # the file itself: where, and what the parser expected
            where = getattr(e, "problem_mark", None)
            at = f", line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(e, "problem", None) or one_line(e)
            hint = " (quote a list item with brackets: - 'algo.hidden=[16]')" if "'['" in problem else ""
            raise ConfigError(f"{conf_dir / name}.yaml{at}: not valid YAML: {problem}{hint}") from None
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
    # a key given on the command line holds for the re-evaluation too: it beats the definition's
    # validation.eval_overrides (train.max_episodes=50 for a quick try re-evaluates on 50 as well)
    cli_keys = {override_key(ov) for ov in rlexp_ovs}
    v = cfg.validation
    v.eval_overrides = [ov for ov in v.eval_overrides if override_key(ov) not in cli_keys]
    return name, cfg


def param_override(p: ParamSpec, value: object) -> str:
    """The rlexp override setting ``p`` to ``value`` (an Optuna value or a corner)."""
    if is_group(p.key):
        return f"{p.key}={value}"  # a group option, as on the command line (unquoted)
    if p.type == "categorical" and isinstance(value, str) and value in p.optuna_choices():
        value = p.choices[p.optuna_choices().index(value)]  # back from a list's text
    return f"{p.key}={format_value(int(value) if p.type == 'int' else value)}"  # type: ignore[call-overload]


def _compose_checked(where: str, overrides: list[str]) -> None:
    from rlexp.algos.registry import check_compatible

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
            if ov.startswith("~"):
                raise ConfigError(f"{where}: {ov!r}: deletions cannot be written to a preset; set a value instead")
            if override_key(ov) == "seed":
                raise ConfigError(f"{where}: {ov!r}: the seeds are the sweep's (seeds=, validation.*seeds=)")
            if where != "base" and override_key(ov) in searched:
                raise ConfigError(f"{where}: {ov!r}: {override_key(ov)} is searched (space.{override_key(ov)}); "
                                  "the re-evaluation uses the pick's value")
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
            raise ConfigError(f"space.{p.key}: {p.key} is not a key of the rlexp config composed from base {base}")
        if isinstance(node, DictConfig) or (isinstance(node, ListConfig) and p.type != "categorical"):
            raise ConfigError(f"space.{p.key}: {p.key} is a section, not a value; search one of its keys")
    # every bound and every choice composed at least once, all parameters set at the same time
    corners = [p.corners() for p in params]
    for i in range(max(len(c) for c in corners)):
        ovs = [param_override(p, c[i % len(c)]) for p, c in zip(params, corners, strict=True)]
        _compose_checked(f"space: with {' '.join(ovs)}", base + ovs)
    return Sweep(name, cfg, tuple(params))


def default_params(sweep: Sweep, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The base config's values of the searched keys (with ``extra`` overrides after the base, e.g.
    another group option), for those inside their range (Optuna's form)."""
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
    defaults (``algo=clipped_double_dqn`` with its lr, batch and tau). Keys whose default lies outside
    the space are left to the sampler."""
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
