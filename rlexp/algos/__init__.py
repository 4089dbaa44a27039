"""Algorithm registry: ``algo.name`` -> how to build and train it.

Each entry names the action spaces it can act in, the loop that trains it and a ``build``
function turning a typed config into an agent. Modules register their names at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlexp.config import ConfigError


@dataclass(frozen=True)
class Algorithm:
    """A registered algorithm."""

    name: str
    loop: str  # off_policy | on_policy | external
    action_spaces: tuple[str, ...]  # subset of ("discrete", "continuous")
    build: Callable[..., Any]  # (cfg: Config, spec: EnvSpec, seeds: list[int], device) -> agent of len(seeds) members
    vectorized: bool = False  # accepts env.num_envs > 1
    batched: bool = True  # trains several seeds at once (False: one seed per run)


_REGISTRY: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> None:
    _REGISTRY[algo.name] = algo


def get_algorithm(name: str) -> Algorithm:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"algo.name={name!r} is not a registered algorithm; "
                          f"known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def _load() -> None:
    from rlexp.algos import registry  # noqa: F401  (imports every algorithm module once)
