"""The sweep's answer as an experiment preset: ``conf/experiment/<study>.yaml``.

The preset holds the base overrides (group choices in its defaults list, values as nested keys)
and the pick's parameters, so that ``python -m rlexp +experiment=<study> seed=1,2,3 -m`` trains
exactly the pick's configuration (tests/test_sweep.py composes one and checks that).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlexp.compose import compose_dict, is_group


def preset_name(study_name: str) -> str:
    """A file stem Hydra accepts as a group option."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)


def preset_path(study_name: str, preset_dir: str | None) -> Path:
    folder = Path(preset_dir) if preset_dir else Path("conf", "experiment")
    return folder / f"{preset_name(study_name)}.yaml"


def build(overrides: Sequence[str]) -> dict[str, Any]:
    """The preset's content: ``defaults`` for group choices, nested keys with the composed values."""
    dcfg = compose_dict(list(overrides))
    defaults: dict[str, str] = {}
    values: dict[str, Any] = {}
    for ov in overrides:
        raw_key, raw_value = ov.split("=", 1)
        key = raw_key.lstrip("+")
        if key == "seed":
            continue
        if is_group(key):
            defaults[f"override /{key}" if raw_key == key else f"/{key}"] = raw_value
            continue
        node = OmegaConf.select(dcfg, key)
        value = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
        d = values
        *parents, leaf = key.split(".")
        for part in parents:
            d = d.setdefault(part, {})
        d[leaf] = value
    out: dict[str, Any] = {}
    if defaults:
        out["defaults"] = [{k: v} for k, v in defaults.items()]
    out.update(values)
    return out


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists (``hidden: [64, 64]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def write(path: Path, overrides: Sequence[str], comment: Sequence[str]) -> Path:
    """Write the preset for ``overrides`` (base + best params) with a provenance comment."""
    data = build(overrides)
    defaults = data.pop("defaults", [])
    body = ""
    if defaults:
        body = "defaults:\n" + "".join(f"  - {k}: {v}\n" for d in defaults for k, v in d.items())
    if data:
        body += yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    head = "# @package _global_\n" + "".join(f"# {line}\n".replace("# \n", "#\n") for line in comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + body)
    return path
