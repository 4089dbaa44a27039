"""What pruning saves, and what a sweep finds: one sweep run twice, with and without its pruner.

    python -m benchmarks.bench_sweep sweep=dqn_cartpole workers=2                  # full size (~2 h on 2 cores)
    python -m benchmarks.bench_sweep sweep=dqn_cartpole n_trials=4 seeds=[1] train.max_episodes=30
    python -m benchmarks.bench_sweep sweep=dqn_cartpole workers=2 \
        baseline=outputs/bench_sweep/2026-11-22-003145/optuna.db:bench-dqn_cartpole-unpruned-2026-11-22-003145

Both runs use the same definition and sampler seed, each in a fresh study (storage under
``outputs/bench_sweep/<stamp>/``), one with the definition's pruner and one with
``pruner.name=none``. ``baseline=DB:STUDY`` takes the no-pruner half from an earlier run's study
instead of running it again, and ``pruned=DB:STUDY`` the pruned half (both: the table alone, from two
studies run with ``python -m rlexp.sweep``). A study taken must have this sweep's definition (what
makes trial values comparable), its recorded sampler (name, seed, arguments: the same random start)
and ``n_trials`` finished trials, and a baseline no pruned trial; its re-evaluation is not repeated.
Each pick is re-evaluated on the same ``validation.eval_seeds`` fresh seeds, and so is the default
configuration (the base overrides alone). The Markdown table
(trials complete/pruned/failed, total env steps, wall time, best value, env-steps saving,
re-evaluations) is printed and written with date, command and versions to
``benchmarks/results/sweep-<date>.md``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import versions as bench_versions

RESULTS = Path(__file__).resolve().parent / "results"


def _eval_cells(ev: object | None) -> str:
    from rlexp.sweep.preset import EvalSummary

    if not isinstance(ev, EvalSummary):
        return "– | –"
    med = ev.median_episodes_to_solve
    return f"{ev.solved}/{len(ev.runs)} | {'unsolved' if math.isinf(med) else f'{med:g}'}"


def _picked(r: Any) -> str:
    """The trial re-evaluated: the validation's pick with its value over own and validation seeds."""
    if r.evaluation is None:
        return "–"
    if r.picked is None:
        return f"{r.best_number} (not validated)"
    return f"{r.picked.number} ({r.picked.value:.1f} over {r.picked.seeds} seeds, {r.picked.solved} solved)"


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def versions() -> str:
    return bench_versions("optuna", "mlflow")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a in ("-h", "--help") for a in args) or not any(a.startswith("sweep=") for a in args):
        print(__doc__)
        return 0 if args else 2
    from rlexp.config import ConfigError
    from rlexp.sweep import evaluate, load, run_sweep

    name = next(a for a in args if a.startswith("sweep=")).split("=", 1)[1]
    baseline = next((a.split("=", 1)[1] for a in args if a.startswith("baseline=")), None)
    pruned = next((a.split("=", 1)[1] for a in args if a.startswith("pruned=")), None)
    overrides = [a for a in args if not a.startswith(("sweep=", "baseline=", "pruned="))]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M%S")
    work = Path("outputs") / "bench_sweep" / stamp
    work.mkdir(parents=True, exist_ok=True)
    common = [*overrides, f"storage=sqlite:///{work.resolve() / 'optuna.db'}", f"preset_dir={work / 'presets'}"]
    try:
        runs = {"pruner": load(name, [*common, f"study_name=bench-{name}-pruned-{stamp}"])}
        runs["no pruner"] = load(name, [*common, f"study_name=bench-{name}-unpruned-{stamp}", "pruner.name=none"])
    except ConfigError as e:
        print(f"bench_sweep: error: {e}", file=sys.stderr)
        return 2
    cfg = runs["pruner"].cfg
    fresh = cfg.validation.fresh_seeds()
    command = "python -m benchmarks.bench_sweep " + " ".join(args)
    out = RESULTS / f"sweep-{stamp[:15]}.md"
    results: dict[str, Any] = {}
    default_eval = None

    def write() -> None:  # after every stage, so a run stopped half-way still leaves its table
        workers = "workers as each study was run" if len(taken) == 2 else f"{cfg.workers} worker(s)"
        rows = ["| run | pruner | complete | pruned | failed | env steps | wall time | best value (trial) | "
                f"re-evaluated trial (validated) | re-eval solved/{len(fresh)} | re-eval median episodes-to-solve |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in results.items():
            best = f"{r.best_value:.1f} ({r.best_number})" if r.best_value is not None else "–"
            t = r.tally
            rows.append(f"| {label} | {pruner_names.get(label, runs[label].cfg.pruner.name)} | {t['complete']} | {t['pruned']} | "
                        f"{t['failed']} | {r.env_steps} | {r.wall_time_s / 60:.1f} min | {best} | {_picked(r)} | "
                        f"{_eval_cells(r.evaluation)} |")
        rows.append(f"| default config | – | – | – | – | – | – | – | – | {_eval_cells(default_eval)} |")
        table = "\n".join(rows)
        if len(results) == 2:
            pruned, full = results["pruner"], results["no pruner"]
            saving = 1 - pruned.env_steps / full.env_steps if full.env_steps else float("nan")
            summary = (f"Env steps saved by pruning: **{saving:.0%}** ({pruned.env_steps} vs {full.env_steps}); "
                       f"best value with pruning {_fmt(pruned.best_value)} vs without {_fmt(full.best_value)} "
                       "(episodes-to-solve, lower is better).")
        else:
            summary = f"Stages done: {', '.join(results) or 'none'}, default re-evaluation " + (
                "done." if default_eval is not None else "not yet.")
        print(f"\n{table}\n\n{summary}")
        text = (f"# bench_sweep\n\ndate: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}\n\ncommand: `{command}`\n\n"
                f"versions: {versions()}\n\nsweep: {name}, {cfg.n_trials} trials x {len(cfg.seeds)} seeds, "
                f"{workers}, sampler {cfg.sampler.name} seed {cfg.sampler.seed}, base `{' '.join(cfg.base)}`, "
                f"re-evaluations with `{' '.join(cfg.validation.eval_overrides) or '(nothing more)'}`; "
                f"fresh seeds {fresh}; studies: "
                + "; ".join(f"{label} {r.study_name} in {r.storage}{_as_run(r)}"
                            for label, r in results.items()) + "\n\n"
                f"{table}\n\n{summary}\n")
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"\nbench_sweep: written {out}", file=sys.stderr)

    pruner_names: dict[str, str] = {}  # of the halves taken from studies: what they were run with
    taken = [h for h, spec in (("pruner", pruned), ("no pruner", baseline)) if spec is not None]
    for key, spec, half in (("baseline", baseline, "no pruner"), ("pruned", pruned, "pruner")):
        if spec is not None:  # checked before any work: a wrong study is refused at once
            try:
                study = open_study(spec)
                results[half] = from_study(study, spec, runs[half], pruned=half == "pruner")
                pruner_names[half] = study.user_attrs.get("pruner") or "(not recorded)"
            except ValueError as e:
                print(f"bench_sweep: error: {key}={spec}: {e}", file=sys.stderr)
                return 2
    if pruned is not None:
        results = {"pruner": results.pop("pruner"), **results}
        write()
        if baseline is not None:
            return 0
    else:
        # the pruned sweep and both re-evaluations first: its table is useful even if the run is stopped
        print(f"bench_sweep: pruner: study {runs['pruner'].study_name}", file=sys.stderr, flush=True)
        results = {"pruner": run_sweep(runs["pruner"]), **results}
        write()
    if fresh and pruned is None:
        default = [*cfg.base, *cfg.validation.eval_overrides]
        print(f"bench_sweep: default config ({' '.join(default)}) on fresh seeds {fresh}", file=sys.stderr)
        t0 = time.perf_counter()
        default_eval = evaluate(default, fresh, tags={"sweep": f"bench-{name}-default-{stamp}", "sweep_role": "eval"})
        print(f"bench_sweep: default config: {default_eval.line()} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
        write()
    if baseline is None:
        print(f"bench_sweep: no pruner: study {runs['no pruner'].study_name}", file=sys.stderr, flush=True)
        results["no pruner"] = run_sweep(runs["no pruner"])
        write()
    return 0


def _as_run(r: Any) -> str:
    """Trials lost to a stopped worker, named in the header (not counted; a trial records its env
    steps when it ends, so theirs are in no sum)."""
    return f" ({r.tally['lost']} lost trial(s), not counted, env steps unrecorded)" if r.tally.get("lost") else ""


def open_study(spec: str) -> Any:
    """The Optuna study ``DB:STUDY`` (an SQLite file); ValueError naming what is wrong."""
    import optuna

    db, sep, study_name = spec.rpartition(":")
    if not sep or not db or not study_name or not Path(db).is_file():
        raise ValueError("expected an existing SQLite file and a study name, DB:STUDY")
    try:
        return optuna.load_study(study_name=study_name, storage=f"sqlite:///{Path(db).resolve()}")
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {db}") from None


def differing(have: dict[str, Any], want: dict[str, Any], keys: Sequence[str]) -> tuple[str, Any, Any] | None:
    """The first of ``keys`` on which a study's record ``have`` and the sweep's ``want`` differ:
    (key, the study's, the sweep's); None if they agree on all."""
    return next(((k, have.get(k), want[k]) for k in keys if have.get(k) != want[k]), None)


def from_study(study: Any, spec: str, sweep: Any, pruned: bool) -> Any:
    """A half from an earlier ``study`` (opened from ``spec``, ``DB:STUDY``): its tally, env steps,
    wall time (first trial start to last trial end) and best trial; checked against ``sweep``'s
    definition and sampler, finished, and (``pruned``) run with a pruner or (not) without."""
    import dataclasses

    import optuna

    from rlexp.sweep.runner import COMPARABLE, definition, sampler_record, summarize
    from rlexp.sweep.study import done

    have, want = study.user_attrs.get("definition") or {}, definition(sweep)
    diff = differing({"groups": {}, **have}, want, (*COMPARABLE, "space", "groups"))
    if diff:
        raise ValueError(f"its {diff[0]} {diff[1]!r} is not this sweep's {diff[2]!r}")
    recorded, want_sampler = study.user_attrs.get("sampler"), sampler_record(sweep)
    if recorded is None:
        raise ValueError("it recorded no sampler (a study from before rlexp recorded it): not known to be the same search")
    diff = differing(recorded, want_sampler, list(want_sampler))
    if diff:
        raise ValueError(f"its sampler.{diff[0]} {diff[1]!r} is not this sweep's {diff[2]!r}: "
                         "not the same search (set it on the command line)")
    trials = study.get_trials(deepcopy=False)
    if done(trials) < sweep.cfg.n_trials:
        raise ValueError(f"it has {done(trials)} finished trials of n_trials={sweep.cfg.n_trials}: resume it first")
    if not pruned and any(t.state == optuna.trial.TrialState.PRUNED for t in trials):
        raise ValueError("it has pruned trials: not a run without a pruner")
    times = [t for t in trials if t.datetime_start and t.datetime_complete]
    wall = (max(t.datetime_complete for t in times) - min(t.datetime_start for t in times)).total_seconds() if times else 0.0
    return dataclasses.replace(summarize(study, sweep, wall), storage=spec)


if __name__ == "__main__":
    sys.exit(main())
