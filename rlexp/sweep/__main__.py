"""``python -m rlexp.sweep sweep=NAME [key=value ...]``: start, resume or extend an Optuna sweep.

The same command resumes a sweep after an interruption (completed trials are kept, a trial that
was running when its worker died is failed as lost and replaced) and adds trials when
``n_trials`` is raised. Keys of the sweep definition (``n_trials=10 workers=2 seeds=[1,2,3]
storage=postgresql://... pruner.name=none space.algo.lr.high=1e-2``) override ``sweeps/NAME.yaml``;
any other key (``train.max_episodes=100 algo.hidden=[32]``) is appended to the trials' ``base``
overrides. A bad key or value stops everything with one line naming it (exit 2) before any trial.

Several machines run one study when they share the storage (PostgreSQL/MySQL URL) and the
MLflow store (``MLFLOW_TRACKING_URI``): run the same command on each, with ``finalize=false`` on
all but one.
"""

from __future__ import annotations

import sys

from rlexp.config import ConfigError

USAGE = __doc__ or ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a in ("-h", "--help") for a in args):
        print(USAGE.strip())
        from rlexp.sweep.load import sweep_names

        print(f"\nsweeps: {', '.join(sweep_names())}")
        return 0
    sweeps = [a for a in args if a.startswith("sweep=")]
    others = [a for a in args if not a.startswith("sweep=")]
    if len(sweeps) != 1:
        print("rlexp.sweep: error: name one sweep: sweep=NAME (a file of sweeps/) or sweep=path/to.yaml",
              file=sys.stderr)
        return 2
    from rlexp.sweep.load import load
    from rlexp.sweep.runner import run_sweep

    try:
        sweep = load(sweeps[0].split("=", 1)[1], others)
    except ConfigError as e:
        print(f"rlexp.sweep: error: {e}", file=sys.stderr)
        return 2
    try:
        result = run_sweep(sweep)
    except ConfigError as e:
        print(f"rlexp.sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrlexp.sweep: interrupted; finished trials are kept, the running ones are lost. "
              f"Resume with the same command.", file=sys.stderr)
        return 130
    return 0 if result.finished else 1


if __name__ == "__main__":
    sys.exit(main())
