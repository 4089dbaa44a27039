"""``python -m rlexp.sweep sweep=NAME [key=value ...]``: start, resume or extend an Optuna sweep.

The same command resumes a sweep after an interruption (completed trials are kept, a trial that
was running when its worker died is failed as lost and replaced) and adds trials when
``n_trials`` is raised. Keys of the sweep definition (``n_trials=10 workers=2 seeds=[1,2,3]
storage=postgresql://... pruner.name=none space.algo.lr.high=1e-2``) override ``sweeps/NAME.yaml``;
any other key (``train.max_episodes=100 algo.hidden=[32]``) is appended to the trials' ``base``
overrides. ``pruner.args={...}`` replaces the file's arguments, and ``pruner.name=X`` alone starts
X without any. A bad key or value stops everything with one line naming it (exit 2) before any trial.

Trial k runs seeds ``seeds[i] + k * seed_stride`` (recorded as the trial's ``seeds`` user attribute);
its value is the mean (or median) episodes-to-solve over them, an unsolved seed counting
``B + penalty * (1 + shortfall)`` with B = train.max_episodes (see rlexp.sweep.objective). At the end
the top trials run on held-out seeds, and the pick is re-evaluated on ``validation.eval_seeds`` fresh seeds and written to
``conf/experiment/<study>.yaml``: ``python -m rlexp +experiment=<study> seed=1,2,3 -m`` reproduces it.

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
        from rlexp import command_name
        from rlexp.sweep.load import sweep_names

        usage = USAGE.strip().replace("python -m rlexp.sweep", command_name("rlexp.sweep", "rlexp-sweep"))
        print(f"{usage}\n\nsweeps: {', '.join(sweep_names())}", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    sweeps = [a for a in args if a.startswith("sweep=")]
    others = [a for a in args if not a.startswith("sweep=")]
    if len(sweeps) != 1:
        print("rlexp.sweep: error: name one sweep: sweep=NAME (a file of sweeps/) or sweep=path/to.yaml",
              file=sys.stderr)
        return 2
    from rlexp.sweep.load import load
    from rlexp.sweep.runner import run_sweep
    from rlexp.tracking import check_tracking

    try:
        sweep = load(sweeps[0].split("=", 1)[1], others)
        check_tracking()  # an unwritable MLflow store or a silent server: refused before any trial
    except ConfigError as e:
        print(f"rlexp.sweep: error: {e}", file=sys.stderr)
        return 2
    try:
        result = run_sweep(sweep)
    except ConfigError as e:
        print(f"rlexp.sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrlexp.sweep: interrupted; finished trials are kept, the running ones are lost. "
              "Resume with the same command.", file=sys.stderr)
        return 130
    return 0 if result.all_started else 1


if __name__ == "__main__":
    sys.exit(main())
