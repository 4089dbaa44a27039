"""Hydra at the edge: compose ``conf/`` with overrides, convert once to a typed :class:`Config`.

Also the pre-flight check the CLI runs before any job starts: every job of a multirun is composed
and validated up front, and any problem is reported as one line naming the key and the value.
A user's own config folders (``hydra.searchpath=[file://DIR]``, which ``--config-dir DIR`` becomes)
add options to the groups; their files are checked against the same schemas.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlexp.config import Config, ConfigError, register_configs


def shipped(folder: str) -> Path:
    """A folder rlexp ships (``conf``, ``sweeps``): inside the installed package, else at the checkout's root."""
    package = Path(__file__).resolve().parent
    return package / folder if (package / folder).is_dir() else package.parent / folder


CONF_DIR = shipped("conf")
SEARCHPATH = "hydra.searchpath"


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of structured nodes that their dataclass does not declare (``+algo.typo=1`` adds one)."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    out = []
    for key in node:
        name = f"{prefix}{key!s}"
        if known is not None and key not in known:
            out.append(name)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            out += _unknown_keys(child, name + ".")
    return out


def to_config(dcfg: DictConfig) -> Config:
    """DictConfig -> typed Config (runs every ``__post_init__`` check); errors become ConfigError."""
    if OmegaConf.get_type(dcfg, "algo") is dict:  # a user's algo file that extends no schema
        raise ConfigError(f"algo.name={dcfg.algo.get('name')!r}: its algo/ file extends no algorithm schema; "
                          "start it with `defaults: [base_dqn, _self_]` (or base_ppo, base_ddpg, ...)")
    unknown = _unknown_keys(dcfg)
    if unknown:
        raise ConfigError(f"{unknown[0]}={OmegaConf.select(dcfg, unknown[0])!r} is not a key of the schema; "
                          "check its spelling (`--cfg job` prints the composed config)")
    try:
        cfg = OmegaConf.to_object(dcfg)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    assert isinstance(cfg, Config)
    return cfg


def one_line(e: BaseException) -> str:
    """A composition error as one line: Hydra/OmegaConf's headline plus the root cause's."""
    parts: list[str] = []
    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, ConfigError):
            return str(cur)
        first = str(cur).strip().splitlines()[0] if str(cur).strip() else type(cur).__name__
        if "$VALUE" not in first and first not in parts:
            parts.append(first.rstrip("."))
        cur = cur.__cause__ or cur.__context__
    return ": ".join(parts)


def override_key(override: str) -> str:
    """The config key an override sets: ``+algo.lr=1`` and ``~algo.lr`` -> ``algo.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def name_override(msg: str, overrides: Sequence[str]) -> str:
    """Lead with the offending override: ``optimizer.lr=abc: Value 'abc' ... Float``."""
    m = re.match(r"(?:Could not override|Error merging override) '?([^'\s:]+?)(?:=[^']*)?'?[:.]? (.*)", msg)
    if not m:
        return msg
    key, rest = m.group(1), m.group(2)
    for ov in overrides:
        if override_key(ov) == key:
            return f"{ov}: {rest}"
    return msg


def search_dirs(overrides: Sequence[str]) -> list[Path]:
    """The user's config folders a command line adds (``hydra.searchpath=[file://DIR,...]``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dirs: list[Path] = []
    for ov in overrides:
        if override_key(ov) != SEARCHPATH:
            continue
        try:
            value = OverridesParser.create().parse_override(ov).value()
        except Exception as e:
            raise ConfigError(f"{ov}: {one_line(e)}") from None
        for entry in value if isinstance(value, list) else [value]:
            scheme, sep, where = str(entry).partition("://")
            if sep and scheme != "file":
                continue  # pkg://: Hydra resolves it; its options are not listed here
            path = Path(where if sep else scheme)
            if not path.is_dir():
                raise ConfigError(f"{SEARCHPATH}: {entry!r} is not a folder (from {Path.cwd()})")
            dirs.append(path)
    return dirs


def group_options(group: str, dirs: Sequence[Path] = ()) -> list[str]:
    """The options of a config group: the YAML files under ``conf/<group>/`` and ``DIR/<group>/``
    of the user's config folders ``dirs``."""
    return sorted({p.stem for d in (CONF_DIR, *dirs) for p in (d / group).glob("*.yaml")})


def group_names(dirs: Sequence[Path] = ()) -> list[str]:
    """The config groups: the folders of ``conf/`` (and of the user's config folders)."""
    return sorted({p.name for d in (CONF_DIR, *dirs) for p in d.iterdir() if p.is_dir()})


def is_group(key: str, dirs: Sequence[Path] = ()) -> bool:
    """Whether ``key`` names a config group (``algo``, ``env``, ...) rather than a value."""
    return "." not in key and any((d / key).is_dir() for d in (CONF_DIR, *dirs))


def check_group_option(group: str, value: str, at: str | None = None, dirs: Sequence[Path] = ()) -> None:
    """Refuse ``value`` unless it is an option of config group ``group`` (in ``conf/`` or the
    user's config folders ``dirs``); the message starts with ``at`` (default ``group=``), the key
    the user wrote."""
    options = group_options(group, dirs)
    if value not in options and group != "experiment" and value in group_options("experiment", dirs):
        raise ConfigError(f"{at if at is not None else f'{group}='}{value!r} is now a preset: "
                          f"use +experiment={value}")
    if value not in options:
        raise ConfigError(f"{at if at is not None else f'{group}='}{value!r} is not an option of {group}/; "
                          f"choose one of: {', '.join(options)}")


def _check_group_choice(key: str, value: str, dirs: Sequence[Path]) -> None:
    group = key.lstrip("+~")
    if is_group(group, dirs):
        check_group_option(group, value, dirs=dirs)


def compose_dict(overrides: Sequence[str] = (), config_name: str = "config",
                 return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides (no working-dir change, no logging).

    ``return_hydra_config``: keep the ``hydra`` node (e.g. ``hydra.runtime.choices``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    dirs = search_dirs(overrides)
    for ov in overrides:
        if "=" in ov and not ov.startswith("hydra"):
            k, v = ov.split("=", 1)
            if "," not in v:
                _check_group_choice(k, v, dirs)
    gh = GlobalHydra.instance()
    was_initialized = gh.is_initialized()
    if was_initialized:  # inside a Hydra app (a sweep job): compose without re-initializing
        try:
            return compose(config_name=config_name, overrides=list(overrides),
                           return_hydra_config=return_hydra_config)
        except Exception as e:
            raise ConfigError(name_override(one_line(e), overrides)) from None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides),
                           return_hydra_config=return_hydra_config)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(name_override(one_line(e), overrides)) from None


def group_choices(overrides: Sequence[str] = ()) -> dict[str, str]:
    """The option each config group gets with these overrides (``{'algo': 'double_dqn', ...}``)."""
    choices = compose_dict(overrides, return_hydra_config=True).hydra.runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra/") and v is not None}


def compose_config(overrides: Sequence[str] = ()) -> Config:
    """Compose and convert: the typed config a job with these overrides would run."""
    return to_config(compose_dict(overrides))


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """The job override lists of a Hydra basic sweep (``seed=1,2,3 algo=a,b`` -> 6 lists).

    Hydra's own overrides (``hydra.*``, ``hydra/launcher=...``) are dropped: they don't change the
    job's config; but ``hydra.searchpath`` (the user's config folders) is kept in every job.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_hydra_override() and o.get_key_element() != SEARCHPATH:
            continue
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line or f"{o.get_key_element()}={o.get_value_string()}"])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def budget_warnings(configs: Sequence[Config]) -> list[str]:
    """Odd-but-legal budgets: ``train.max_episodes`` shorter than ``solve.window`` (no run can solve)."""
    short = sorted({(c.train.max_episodes, c.solve.window) for c in configs
                    if c.train.max_episodes < c.solve.window})
    return [f"train.max_episodes={n} < solve.window={w}: no run can solve (a solve needs {w} episodes)"
            for n, w in short]


def preflight(overrides: Sequence[str], max_jobs: int = 256) -> list[Config]:
    """Compose and validate every job of the command line; raises ConfigError on the first bad one."""
    from rlexp.algos.registry import check_compatible

    jobs = expand_sweep(overrides)
    if len(jobs) > max_jobs:  # a huge grid: check the corners, the first and the last job
        jobs = [jobs[0], jobs[-1]]
    configs = []
    checked: set[tuple[Any, ...]] = set()
    for job in jobs:
        cfg = compose_config(job)
        key = (cfg.algo.name, cfg.env.id, tuple(sorted(cfg.env.kwargs.items())), cfg.env.num_envs,
               cfg.solve.threshold)
        if key not in checked:
            check_compatible(cfg)
            checked.add(key)
        configs.append(cfg)
    return configs


def config_from_dict(data: dict[str, Any]) -> Config:
    """A recorded config (a run's ``config.yaml``) as the typed Config, checked as at composition:
    the algo schema is the one its ``conf/algo/<algo.name>.yaml`` extends."""
    import yaml

    from rlexp.config import ALGO_SCHEMAS

    name = str(data.get("algo", {}).get("name", ""))
    path = CONF_DIR / "algo" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"algo.name={name!r} is not an option of algo/; choose one of: "
                          f"{', '.join(group_options('algo'))}")
    defaults = yaml.safe_load(path.read_text()).get("defaults", [])
    schema = next(ALGO_SCHEMAS[d] for d in defaults if isinstance(d, str) and d in ALGO_SCHEMAS)
    register_configs()
    try:
        node = OmegaConf.merge(OmegaConf.structured(Config), {"algo": OmegaConf.structured(schema)}, data)
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    assert isinstance(node, DictConfig)
    return to_config(node)
