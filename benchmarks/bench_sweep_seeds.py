"""Does a sweep's answer hold on fresh seeds? One sweep run at several sampler seeds, its pick on fresh seeds.

    python -m benchmarks.bench_sweep_seeds sweep=dqn_cartpole workers=2 sampler_seeds=[0,1,2]   # ~40 min each
    python -m benchmarks.bench_sweep_seeds sweep=dqn_cartpole take=DB:STUDY take=DB:STUDY default=TAG

Each sampler seed runs the sweep as ``python -m rlexp.sweep`` does, in a fresh study (storage under
``outputs/bench_sweep_seeds/<stamp>/``): trials, the validation of the top trials, the re-evaluation
of the pick on the ``validation.eval_seeds`` fresh seeds. ``take=DB:STUDY`` (repeatable) takes a
finished sweep's study instead: its re-evaluation is read from MLflow (the runs tagged ``sweep=<study>``,
``sweep_role=eval``, of the trial the sweep picked), and it must have this sweep's definition and
sampler but for the seed. The command's wall time is the sweep's own (trials, validation and
re-evaluation) when this command runs it, and its MLflow parent run's start to end when taken (for
a study finished by several commands that spans the time between them too); the trials' is the
first trial's start to the last one's end. The default configuration (the base overrides and
``validation.eval_overrides``) is run on the same fresh seeds, or read from MLflow with ``default=TAG`` (runs tagged ``sweep=TAG``,
as ``bench_sweep`` tags its default row). A sweep *holds* when its pick solves every fresh seed
with a median episodes-to-solve at least 25% below the default's (issue 4's first figure; a
censored median counts as infinite). The Markdown table is printed and written with date, command
and versions to ``benchmarks/results/sweep-seeds-<date>.md``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_sweep import RESULTS, open_study, versions

FASTER = 0.25  # the pick's median must be at least this much below the default's


def holds(ev: Any, default: Any) -> bool:
    """Issue 4's first figure: every fresh seed solved, median >= 25% below the default's."""
    if ev is None or default is None or ev.solved < len(ev.runs):
        return False
    return ev.median_episodes_to_solve <= (1 - FASTER) * default.median_episodes_to_solve


def eval_from_mlflow(client: Any, tag: str, seeds: Sequence[int], budget: int, trial: int | None = None) -> Any:
    """The re-evaluation recorded in MLflow for ``seeds``: the latest finished run per seed tagged
    ``sweep=tag``, ``sweep_role=eval`` (and ``trial``); ValueError when one is missing or ran
    another budget."""
    from rlexp.sweep.preset import EvalSummary
    from rlexp.train import TrainResult

    flt = f"tags.sweep = '{tag}' and tags.sweep_role = 'eval' and attributes.status = 'FINISHED'"
    if trial is not None:
        flt += f" and tags.trial = '{trial}'"
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string=flt,
                              order_by=["attributes.start_time DESC"])
    latest: dict[int, Any] = {}
    for r in runs:
        latest.setdefault(int(r.data.params["seed"]), r)
    missing = [s for s in seeds if s not in latest]
    if missing:
        raise ValueError(f"no finished re-evaluation run tagged sweep={tag}" + (f", trial={trial}" if trial is not None else "")
                         + f" for seeds {missing}")
    out = []
    for s in seeds:
        r = latest[s]
        if int(r.data.params["train.max_episodes"]) != budget:
            raise ValueError(f"its run for seed {s} had train.max_episodes={r.data.params['train.max_episodes']}, "
                             f"not the re-evaluation's {budget}")
        m = r.data.metrics
        solved = int(m["episodes_to_solve"]) if "episodes_to_solve" in m else None
        out.append(TrainResult(solved is not None, solved, int(m.get("episodes", 0)), int(m.get("env_steps", 0)),
                               m.get("wall_time_s", 0.0), []))
    return EvalSummary(list(seeds), out)


def taken_row(client: Any, study: Any, spec: str, sweep: Any, fresh: Sequence[int], budget: int) -> dict[str, Any]:
    """A finished sweep's row from its study and MLflow; ValueError if it is not this sweep's."""
    from benchmarks.bench_sweep import differing
    from rlexp.sweep.runner import COMPARABLE, definition, sampler_record
    from rlexp.sweep.study import best, done, tally

    diff = differing(study.user_attrs.get("definition", {}), definition(sweep), (*COMPARABLE, "space", "groups"))
    if diff:
        raise ValueError(f"its {diff[0]} {diff[1]!r} is not this sweep's {diff[2]!r}")
    recorded, want = study.user_attrs.get("sampler") or {}, sampler_record(sweep)
    diff = differing(recorded, want, [k for k in want if k != "seed"])
    if diff:
        raise ValueError(f"its sampler.{diff[0]} {diff[1]!r} is not this sweep's {diff[2]!r}")
    trials = study.get_trials(deepcopy=False)
    if done(trials) < sweep.cfg.n_trials:
        raise ValueError(f"it has {done(trials)} finished trials of n_trials={sweep.cfg.n_trials}: resume it first")
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if not parent_id:
        raise ValueError("it has no MLflow parent run: its re-evaluation cannot be found")
    parent = client.get_run(parent_id)
    b = best(trials)
    picked = parent.data.metrics.get("picked_trial")
    number = int(picked) if picked is not None else (b.number if b else None)
    info = parent.info
    wall = ((info.end_time - info.start_time) / 1000 if info.end_time else math.nan, _trials_span(trials))
    return {"study": f"{study.study_name} in {spec}", "seed": recorded.get("seed", "not recorded"),
            "tally": tally(trials), "env_steps": _steps(trials, study), "wall_s": wall,
            "best": (b.number, b.value) if b else None, "picked": _picked(study, number, sweep),
            "eval": eval_from_mlflow(client, study.study_name, fresh, budget, number)}


def _trials_span(trials: Sequence[Any]) -> float:
    """Seconds from the first trial's start to the last one's end."""
    times = [t for t in trials if t.datetime_start and t.datetime_complete]
    if not times:
        return math.nan
    return (max(t.datetime_complete for t in times) - min(t.datetime_start for t in times)).total_seconds()


def _steps(trials: Sequence[Any], study: Any) -> tuple[int, int]:
    """Env steps of the trials and of the validation runs."""
    val = sum(int(r.get("env_steps", 0)) for rec in (study.user_attrs.get("validation") or {}).values()
              for r in rec.values())
    return sum(int(t.user_attrs.get("env_steps", 0)) for t in trials), val


def _picked(study: Any, number: int | None, sweep: Any) -> str:
    from rlexp.sweep.preset import pick

    if number is None:
        return "–"
    trials = study.get_trials(deepcopy=False)
    rows = pick([trials[number]], study.user_attrs.get("validation") or {}, sweep.cfg.validation.seed_list(),
                sweep.cfg.objective.aggregate)
    if not rows or not sweep.cfg.validation.seed_list():
        return f"{number} (not validated)"
    return f"{number} ({rows[0].value:.1f} over {rows[0].seeds} seeds, {rows[0].solved} solved)"


def run_row(result: Any, study: Any, sweep: Any) -> dict[str, Any]:
    from rlexp.sweep.study import best

    b = best(study.get_trials(deepcopy=False))
    return {"study": f"{result.study_name} in {result.storage}", "seed": sweep.cfg.sampler.seed,
            "tally": result.tally, "env_steps": _steps(study.get_trials(deepcopy=False), study),
            "wall_s": (result.wall_time_s, _trials_span(study.get_trials(deepcopy=False))), "best": (b.number, b.value) if b else None,
            "picked": _picked(study, result.picked.number if result.picked else result.best_number, sweep),
            "eval": result.evaluation}


def table(rows: Sequence[dict[str, Any]], default: Any, fresh: Sequence[int]) -> tuple[str, str]:
    """The Markdown table and its one-line summary."""
    def cells(ev: Any) -> str:
        if ev is None:
            return "– | – | –"
        med = ev.median_episodes_to_solve
        ets = ", ".join("unsolved" if r.episodes_to_solve is None else str(r.episodes_to_solve) for r in ev.runs)
        return f"{ets} | {ev.solved}/{len(ev.runs)} | {'censored' if math.isinf(med) else f'{med:g}'}"

    def minutes(s: float) -> str:
        return "–" if math.isnan(s) else f"{s / 60:.1f}"

    out = ["| sampler seed | complete / pruned / failed | env steps: trials + validation | wall time, min: "
           "command (trials) | "
           "best value (trial) | re-evaluated trial (validated) | on fresh seeds " + ", ".join(map(str, fresh))
           + " | solved | median | holds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, (steps, val) = r["tally"], r["env_steps"]
        best = f"{r['best'][1]:.1f} ({r['best'][0]})" if r["best"] else "–"
        wall = f"{minutes(r['wall_s'][0])} ({minutes(r['wall_s'][1])})"
        out.append(f"| {r['seed']} | {t['complete']} / {t['pruned']} / {t['failed']} | {steps:,} + {val:,} | {wall} | "
                   f"{best} | {r['picked']} | {cells(r['eval'])} | {'**yes**' if holds(r['eval'], default) else 'no'} |")
    out.append(f"| default config | – | – | – | – | – | {cells(default)} | – |")
    n = sum(holds(r["eval"], default) for r in rows)
    return "\n".join(out), f"The pick holds on fresh seeds in **{n} of {len(rows)}** sweeps."


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a in ("-h", "--help") for a in args) or not any(a.startswith("sweep=") for a in args):
        print(__doc__)
        return 0 if args else 2
    from mlflow import MlflowClient

    from rlexp.compose import compose_config
    from rlexp.config import ConfigError
    from rlexp.sweep import evaluate, load, run_sweep
    from rlexp.sweep.runner import _load_study

    bench_keys = ("sweep=", "take=", "default=", "sampler_seeds=")
    name = next(a for a in args if a.startswith("sweep=")).split("=", 1)[1]
    takes = [a.split("=", 1)[1] for a in args if a.startswith("take=")]
    default_tag = next((a.split("=", 1)[1] for a in args if a.startswith("default=")), None)
    seeds_arg = next((a.split("=", 1)[1] for a in args if a.startswith("sampler_seeds=")), "[]")
    overrides = [a for a in args if not a.startswith(bench_keys)]
    try:
        seeds = [int(s) for s in seeds_arg.strip("[]").split(",") if s.strip()]
    except ValueError:
        print(f"bench_sweep_seeds: error: sampler_seeds={seeds_arg!r} must be a list of integers, e.g. [0,1,2]",
              file=sys.stderr)
        return 2
    if not seeds and not takes:
        print("bench_sweep_seeds: error: give sampler_seeds=[...] to run, or take=DB:STUDY", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M%S")
    work = Path("outputs") / "bench_sweep_seeds" / stamp
    try:
        sweep = load(name, overrides)
        runs = [load(name, [*overrides, f"sampler.seed={k}", f"storage=sqlite:///{work.resolve() / 'optuna.db'}",
                            f"preset_dir={work / 'presets'}", f"study_name=bench-{name}-s{k}-{stamp}"]) for k in seeds]
    except ConfigError as e:
        print(f"bench_sweep_seeds: error: {e}", file=sys.stderr)
        return 2
    cfg = sweep.cfg
    fresh = cfg.validation.fresh_seeds()
    if not fresh:
        print("bench_sweep_seeds: error: validation.eval_seeds=0: the figure needs fresh seeds", file=sys.stderr)
        return 2
    budget = compose_config([*cfg.base, *cfg.validation.eval_overrides]).train.max_episodes
    client = MlflowClient()
    rows: list[dict[str, Any]] = []
    default = None
    what = ""
    try:  # everything taken is checked before any work
        if default_tag is not None:
            what = f"default={default_tag}"
            default = eval_from_mlflow(client, default_tag, fresh, budget)
        for spec in takes:
            what = f"take={spec}"
            rows.append(taken_row(client, open_study(spec), spec, sweep, fresh, budget))
    except ValueError as e:
        print(f"bench_sweep_seeds: error: {what}: {e}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.bench_sweep_seeds " + " ".join(args)
    out = RESULTS / f"sweep-seeds-{datetime.now(UTC):%Y-%m-%d-%H%M}.md"

    def write() -> None:
        text, summary = table(rows, default, fresh)
        print(f"\n{text}\n\n{summary}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# bench_sweep_seeds\n\ndate: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}\n\ncommand: `{command}`\n\n"
                       f"versions: {versions()}\n\nsweep: {name}, {cfg.n_trials} trials x {len(cfg.seeds)} seeds, "
                       f"{cfg.workers} worker(s), sampler {cfg.sampler.name}, validation top {cfg.validation.top} on "
                       f"{cfg.validation.seeds} seeds, base `{' '.join(cfg.base)}`, re-evaluations with "
                       f"`{' '.join(cfg.validation.eval_overrides) or '(nothing more)'}` on fresh seeds {fresh}; default: "
                       f"{'MLflow runs tagged sweep=' + default_tag if default_tag else 'run by this command'}\n\n"
                       f"{text}\n\n{summary}\n")
        print(f"\nbench_sweep_seeds: written {out}", file=sys.stderr)

    if default is None:
        print(f"bench_sweep_seeds: default config on fresh seeds {fresh}", file=sys.stderr, flush=True)
        default = evaluate([*cfg.base, *cfg.validation.eval_overrides], fresh,
                           tags={"sweep": f"bench-{name}-default-{stamp}", "sweep_role": "eval"})
    write()
    for s in runs:
        print(f"bench_sweep_seeds: sampler seed {s.cfg.sampler.seed}: study {s.study_name}", file=sys.stderr, flush=True)
        work.mkdir(parents=True, exist_ok=True)
        result = run_sweep(s)
        rows.append(run_row(result, _load_study(s), s))
        write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
