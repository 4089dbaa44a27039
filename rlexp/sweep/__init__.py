"""Optuna sweeps over rlexp configurations: multi-seed, pruned, resumable, parallel, multi-machine.

Definitions live in ``sweeps/NAME.yaml`` (schema: :mod:`rlexp.sweep.config`); a trial composes its
configuration once (``base`` + its parameters) and trains its seeds as one batch; the objective and
its censoring rule: :mod:`rlexp.sweep.objective`; the keys and the reasons behind the shipped sweeps:
``docs/sweeps.md``.
"""

from rlexp.sweep.load import Sweep, load
from rlexp.sweep.preset import evaluate
from rlexp.sweep.runner import SweepResult, run_sweep

__all__ = ["Sweep", "SweepResult", "evaluate", "load", "run_sweep"]
