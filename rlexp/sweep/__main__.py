"""``python -m rlexp.sweep sweep=NAME [key=value ...]``: start, resume or extend an Optuna sweep.

The same command resumes a sweep after an interruption and adds trials when ``n_trials`` is raised.
Keys of the sweep definition (``n_trials=10 workers=2 storage=postgresql://... pruner.name=none``)
override ``sweeps/NAME.yaml``; any other (``train.max_episodes=100``) is appended to the trials'
``base``. At the end the pick is written to ``conf/experiment/<study>.yaml``. Several machines run one
study with the same storage URL and MLflow store, ``finalize=false`` on all but one. The keys, the
objective and the end of a sweep: docs/sweeps.md.
"""

from __future__ import annotations

import sys

from rlexp.config import ConfigError
from rlexp.sweep.config import PRUNERS, SAMPLERS, SweepConfig
from rlexp.sweep.load import sweep_names


def candidates(words: list[str], current: str) -> list[str]:
    """Tab completion (rlexp.completion): ``sweep=`` names, the definition's keys and their choices,
    and for anything else ``rlexp``'s own overrides, which go to the trials' base."""
    from rlexp.completion import dataclass_keys, rlexp_overrides

    keys = ["sweep=", *dataclass_keys(SweepConfig)]
    choices = {"sweep": sweep_names(), "sampler.name": SAMPLERS, "pruner.name": PRUNERS,
               "objective.aggregate": ("mean", "median")}
    key, eq, _ = current.partition("=")
    if eq and f"{key}=" in keys:
        return [f"{key}={c}" for c in choices.get(key, ())]
    trial = [w for w in words if f"{w.partition('=')[0]}=" not in keys]
    return [k for k in keys if k.startswith(current)] + rlexp_overrides(trial, current)


def main(argv: list[str] | None = None) -> int:
    from rlexp import command_name
    from rlexp.completion import handle
    from rlexp.sweep.load import load
    from rlexp.sweep.runner import run_sweep
    from rlexp.tracking import check_tracking
    from rlexp.train import by_sigterm

    args = sys.argv[1:] if argv is None else argv
    if handle(args, candidates):
        return 0
    if not args or any(a in ("-h", "--help") for a in args):
        usage = __doc__.strip().replace("python -m rlexp.sweep", command_name("rlexp.sweep", "rlexp-sweep"))
        print(f"{usage}\n\nsweeps: {', '.join(sweep_names())}", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    sweeps = [a.split("=", 1)[1] for a in args if a.startswith("sweep=")]
    if len(sweeps) != 1:
        print("rlexp.sweep: error: name one sweep: sweep=NAME (a file of sweeps/) or sweep=path/to.yaml",
              file=sys.stderr)
        return 2
    try:
        sweep = load(sweeps[0], [a for a in args if not a.startswith("sweep=")])
        check_tracking()  # an unwritable MLflow store or a silent server: refused before any trial
        result = run_sweep(sweep)
    except ConfigError as e:
        print(f"rlexp.sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if by_sigterm(e) else "interrupted"
        print(f"\nrlexp.sweep: {how}; finished trials are kept, the running ones are lost (their runs end "
              "KILLED). Resume with the same command.", file=sys.stderr)
        return 143 if by_sigterm(e) else 130
    if result.failed:  # after the end's own output, so these are the last lines a user or a scheduler sees
        print(f"rlexp.sweep: {len(result.failed)} trial(s) of study {result.study_name!r} failed (they count "
              "towards n_trials and are not run again):", file=sys.stderr)
        for line in result.failed:
            print(f"rlexp.sweep: {line}", file=sys.stderr)
    return 0 if result.all_started and not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
