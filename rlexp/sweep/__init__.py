"""Optuna sweeps over rlexp configurations: multi-seed, pruned, resumable, parallel, multi-machine.

Definitions live in ``sweeps/NAME.yaml`` (schema: :mod:`rlexp.sweep.config`); the keys, the objective
and the reasons behind the shipped sweeps: ``docs/sweeps.md``.
"""

from rlexp.sweep.load import Sweep, load
from rlexp.sweep.preset import evaluate
from rlexp.sweep.runner import SweepResult, run_sweep

__all__ = ["Sweep", "SweepResult", "evaluate", "load", "run_sweep"]
