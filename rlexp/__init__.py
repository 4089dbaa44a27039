"""rlexp: reinforcement-learning experiments. ``rlexp.load_policy(run_id)`` gives a run's trained policy."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_policy":  # imported on first use: ``import rlexp.config`` stays light
        from rlexp.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'rlexp' has no attribute {name!r}")


def command_name(module: str, script: str) -> str:
    """How the running command names itself: its console script (``rlexp-sweep``) or ``python -m module``."""
    import os
    import sys

    return script if os.path.basename(sys.argv[0]) == script else f"python -m {module}"
