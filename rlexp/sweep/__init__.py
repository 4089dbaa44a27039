"""Optuna sweeps over rlexp configurations: multi-seed, pruned, resumable, parallel, multi-machine.

    python -m rlexp.sweep sweep=dqn_cartpole                      # start, or resume after a stop
    python -m rlexp.sweep sweep=dqn_cartpole n_trials=40          # add trials to the same study
    python -m rlexp.sweep sweep=dqn_cartpole workers=2 storage=postgresql://u:pw@db/optuna

Definitions live in ``sweeps/NAME.yaml`` (schema: :mod:`rlexp.sweep.config`); every trial's
configuration is composed once by Hydra like a normal run (``base`` + the trial's parameters) and
its seeds train as one batch. The objective and its censoring rule: :mod:`rlexp.sweep.objective`;
the keys and the reasons behind the shipped sweeps: ``docs/sweeps.md``.
"""

from rlexp.sweep.load import Sweep, load
from rlexp.sweep.runner import SweepResult, evaluate, run_sweep

__all__ = ["Sweep", "SweepResult", "evaluate", "load", "run_sweep"]
