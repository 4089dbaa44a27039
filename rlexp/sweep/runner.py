"""Run a sweep: create or resume the study, run trials in worker processes, then finalize.

Workers are processes (``workers=N``, spawned) each running ``study.optimize`` on the shared
storage until ``n_trials`` trials count; other machines pointing at the same database join the
same study. At the end the top trials run again on held-out validation seeds, the one best over
its own and those seeds is re-evaluated on fresh seeds and written as a preset (``finalize=true``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rlexp.algos.registry import check_compatible
from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.envs import solve_threshold
from rlexp.sweep import objective as ob
from rlexp.sweep import preset
from rlexp.sweep import study as st
from rlexp.sweep.load import Sweep, start_points
from rlexp.train import experiment_name, run_batch

OUTPUTS = Path("outputs") / "sweeps"


@dataclass
class EvalRun:
    """One run of a configuration on a held-out or fresh seed."""

    seed: int
    solved_at: int | None
    episodes: int
    env_steps: int
    wall_time_s: float
    error: str | None = None
    last_mean: float | None = None  # mean return of the last solve.window episodes (the censoring rule's)


@dataclass
class EvalSummary:
    seeds: list[int]
    runs: list[EvalRun]

    @property
    def solved(self) -> int:
        return sum(r.solved_at is not None for r in self.runs)

    @property
    def median_episodes_to_solve(self) -> float:
        """Median with unsolved runs counted as infinitely slow (censored)."""
        values = [math.inf if r.solved_at is None else float(r.solved_at) for r in self.runs]
        return float(statistics.median(values)) if values else math.nan

    def line(self) -> str:
        med = self.median_episodes_to_solve
        return (f"{self.solved}/{len(self.runs)} solved, median episodes-to-solve "
                f"{'unsolved' if math.isinf(med) else f'{med:g}'} on fresh seeds {self.seeds}")


@dataclass
class Validated:
    """A top trial judged on its own seeds and the held-out validation seeds (:func:`pick`)."""

    number: int
    trial_value: float  # the trial's objective, over its own seeds
    seed_values: list[float]  # its own seeds' values
    validation: dict[int, float]  # validation seed -> value (the same censoring rule and budget)
    solved: int  # seeds solved, own and validation
    value: float  # the objective's aggregate over all of them: what the pick ranks by

    @property
    def seeds(self) -> int:
        return len(self.seed_values) + len(self.validation)


def pick(candidates: Sequence[FrozenTrial], records: dict[str, Any], seeds: Sequence[int],
         how: str) -> list[Validated]:
    """The candidates ranked by the objective over their own seeds and the validation ``seeds``
    (``records``: trial number -> seed -> ``{"value", "solved_at"}``, as the study stores them),
    best first, ties to the lower number; a trial whose validation is not all recorded is left out."""
    out = []
    for t in candidates:
        rec = records.get(str(t.number), {})
        if any(str(s) not in rec for s in seeds) or t.value is None:
            continue
        own = [float(v) for v in t.user_attrs.get("seed_values") or [t.value]]
        solved = sum(e is not None for e in t.user_attrs.get("episodes_to_solve") or [])
        solved += sum(rec[str(s)].get("solved_at") is not None for s in seeds)
        val = {s: float(rec[str(s)]["value"]) for s in seeds}
        out.append(Validated(t.number, float(t.value), own, val, solved, ob.aggregate([*own, *val.values()], how)))
    return sorted(out, key=lambda v: (v.value, v.number))


def validation_table(rows: Sequence[Validated]) -> str:
    """Markdown table of the validated trials, the pick first."""
    lines = ["| rank | trial | value (own + validation seeds) | solved | own seeds' value | own seeds | "
             "validation seeds |", "|---|---|---|---|---|---|---|"]
    for i, v in enumerate(rows, 1):
        own = ", ".join(f"{x:g}" for x in v.seed_values)
        val = ", ".join(f"{s}: {x:g}" for s, x in v.validation.items())
        lines.append(f"| {i} | {v.number} | {v.value:.1f} | {v.solved}/{v.seeds} | {v.trial_value:.1f} | {own} | {val} |")
    return "\n".join(lines)


@dataclass
class SweepResult:
    """What a sweep command leaves: the study's tally and best trial, the re-evaluation, the preset."""

    study_name: str
    storage: str  # redacted
    n_trials: int
    tally: dict[str, int]
    env_steps: int  # summed over the study's trials (each records its own when it ends: lost ones none)
    wall_time_s: float  # of this command
    best_number: int | None = None
    best_value: float | None = None
    best_overrides: list[str] = field(default_factory=list)
    evaluation: EvalSummary | None = None
    preset: Path | None = None
    parent_run_id: str | None = None
    pruner: str | None = None  # the pruner the study was started with
    sampler: dict[str, Any] | None = None  # the sampler it was started with (:func:`sampler_record`)
    picked: Validated | None = None  # the trial re-evaluated and written, after validation (None: the best)
    validated: list[Validated] = field(default_factory=list)  # the validated trials, best first

    @property
    def finished(self) -> bool:
        """``n_trials`` trials count."""
        return self.tally["complete"] + self.tally["pruned"] + self.tally["failed"] >= self.n_trials

    @property
    def all_started(self) -> bool:
        """Nothing left to start: the rest are running on other workers."""
        return sum(self.tally[k] for k in ("complete", "pruned", "failed", "running")) >= self.n_trials


# --------------------------------------------------------------------------- workers
def _load_study(sweep: Sweep) -> optuna.Study:
    cfg = sweep.cfg
    return optuna.load_study(study_name=sweep.study_name, storage=st.make_storage(cfg.storage, cfg.heartbeat_interval),
                             sampler=st.make_sampler(cfg),
                             pruner=st.make_pruner(cfg, compose_config(cfg.base).train.max_episodes))


def work(sweep: Sweep, parent_run_id: str | None, experiment: str | None, spawned: bool = False) -> None:
    """One worker: run trials of the shared study until ``n_trials`` count (module-level: spawnable)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress lines say it
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = _load_study(sweep)
    try:
        if st.done(study.get_trials(deepcopy=False)) < sweep.cfg.n_trials:
            study.optimize(ob.Objective(sweep, parent_run_id, experiment), catch=(Exception,),
                           callbacks=[st.Progress(sweep.study_name, sweep.cfg.n_trials, sweep.cfg.workers)])
    except KeyboardInterrupt:
        if not spawned:
            raise
        sys.exit(130)


@contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def worker_pool(jobs: int, workers: int) -> Iterator[Any]:
    """A spawn pool of ``min(workers, jobs)`` processes. On Ctrl-C or SIGTERM it is terminated: each
    worker gets SIGTERM, its runs end KILLED, and no queued job starts."""
    with sigterm_as_keyboard_interrupt(), mp.get_context("spawn").Pool(min(workers, jobs)) as pool:
        yield pool


@contextmanager
def _interruptible(parent: str | None) -> Iterator[None]:
    """Ctrl-C or SIGTERM stops the block; the study's ``parent`` run (if this command owns it) ends KILLED."""
    try:
        with sigterm_as_keyboard_interrupt():
            yield
    except KeyboardInterrupt:
        if parent:
            from rlexp.sweep.tracking import finish_parent

            finish_parent(parent, "KILLED")
        raise


def _run_workers(sweep: Sweep, n: int, parent_run_id: str | None, experiment: str | None) -> None:
    if n == 1:
        work(sweep, parent_run_id, experiment)
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=work, args=(sweep, parent_run_id, experiment, True), name=f"sweep-worker-{i}")
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # SIGTERM: each worker's runs end KILLED, its trial lost
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=30)
        raise
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        print(f"[{sweep.study_name}] {len(bad)} worker(s) exited with codes {bad}", file=sys.stderr)


# --------------------------------------------------------------------------- the command
COMPARABLE = ("base", "seeds", "seed_stride", "objective")  # what trial values depend on
STEPS = "episode"  # intermediate values: step = episode e, over all of a trial's seeds


def definition(sweep: Sweep) -> dict[str, Any]:
    """What makes trial values comparable; stored on the study and checked on every resume."""
    c = sweep.cfg
    return {"base": list(c.base), "seeds": list(c.seeds), "seed_stride": c.seed_stride,
            "objective": asdict(c.objective), "report_every": c.pruner.report_every, "space": c.space,
            "groups": c.groups, "steps": STEPS}


def sampler_record(sweep: Sweep) -> dict[str, Any]:
    """The sampler settings that decide which trials a study draws (recorded when it is created)."""
    s = sweep.cfg.sampler
    return {"name": s.name, "seed": s.seed, "args": dict(s.args)}


def _check_definition(study: optuna.Study, sweep: Sweep) -> None:
    have, want, name = study.user_attrs.get("definition"), definition(sweep), sweep.study_name
    if have is None:
        study.set_user_attr("definition", want)
        study.set_user_attr("pruner", sweep.cfg.pruner.name)  # what the study was started with
        study.set_user_attr("sampler", sampler_record(sweep))
        return
    for key in COMPARABLE:
        if have.get(key) != want[key]:
            raise ConfigError(f"{key}={want[key]!r} differs from {have.get(key)!r}, with which study {name!r} was "
                              "created: its values would not be comparable; use another study_name (or the original settings)")
    if have.get("steps") != STEPS and not have.get("lockstep") and sweep.cfg.pruner.name != "none":
        raise ConfigError(f"study {name!r} was created by an older rlexp whose trials reported one seed after "
                          "the other (step = seed index x budget + episode): a pruner would compare them with "
                          "steps = episodes over all seeds; resume it with pruner.name=none or use another study_name")
    old = sorted(set(have) - set(want))
    if old:
        print(f"[{name}] note: ignoring keys an older rlexp recorded with the study: {', '.join(old)}", file=sys.stderr)
    if have.get("space") != want["space"] or have.get("groups", {}) != want["groups"]:
        print(f"[{name}] note: the search space differs from the study's first run", file=sys.stderr)


def _drive(study: optuna.Study, sweep: Sweep, parent: str | None, experiment: str | None) -> None:
    """Run workers until ``n_trials`` count; the finalizing command also waits for other machines'."""
    cfg = sweep.cfg
    idle_rounds = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        n_done = st.done(trials)
        todo = cfg.n_trials - n_done - sum(t.state == TrialState.RUNNING for t in trials)
        if todo > 0:
            if idle_rounds >= 2:
                return  # workers stop without finishing trials (e.g. the storage fails): don't spin
            _run_workers(sweep, min(cfg.workers, todo), parent, experiment)
            idle_rounds = idle_rounds + 1 if st.done(study.get_trials(deepcopy=False)) == n_done else 0
        elif n_done >= cfg.n_trials or not cfg.finalize:
            return  # done; or a helper with nothing left to start
        else:  # trials of other workers still running: wait for them (or for their heartbeat to stop)
            time.sleep(cfg.heartbeat_interval)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)


def run_sweep(sweep: Sweep) -> SweepResult:
    """Start, resume or extend the sweep's study; finalize when ``n_trials`` count."""
    cfg = sweep.cfg
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress lines say it
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    base_cfg = compose_config(cfg.base)
    experiment = experiment_name(base_cfg) if base_cfg.tracking.enabled else None
    storage = st.make_storage(cfg.storage, cfg.heartbeat_interval)
    st.make_pruner(cfg, base_cfg.train.max_episodes)  # refuse bad pruner args before anything runs
    st.make_sampler(cfg)
    study = optuna.create_study(storage=storage, study_name=sweep.study_name, direction="minimize",
                                load_if_exists=True)
    _check_definition(study, sweep)
    url = st.redact(st.storage_url(cfg.storage))
    parent = None
    if experiment is not None:
        from rlexp.sweep.tracking import open_parent

        parent = open_parent(sweep.study_name, experiment, url, definition(sweep),
                             study.user_attrs.get("mlflow_parent_run_id"))
        if study.user_attrs.get("mlflow_parent_run_id") != parent:
            study.set_user_attr("mlflow_parent_run_id", parent)
    print(f"[{sweep.study_name}] study in {url}: {st.done(study.get_trials(deepcopy=False))}/{cfg.n_trials} trials "
          f"done; {cfg.workers} worker(s), seeds per trial {len(cfg.seeds)}, pruner {cfg.pruner.name}",
          file=sys.stderr, flush=True)
    owned = parent if cfg.finalize else None  # helpers (finalize=false) leave the parent run alone
    with _interruptible(owned):
        st.wait_for_stale(study, cfg.heartbeat_interval)  # a dead worker's start point is enqueued again
        if cfg.start_from_default:
            for label in st.enqueue_start_points(study, start_points(sweep), cfg.n_trials):
                print(f"[{sweep.study_name}] enqueued the {label} values", file=sys.stderr, flush=True)
        _drive(study, sweep, parent, experiment)
    result = summarize(study, sweep, time.perf_counter() - t0)
    result.parent_run_id = parent
    if not result.all_started:
        print(f"[{sweep.study_name}] {result.tally}: n_trials={cfg.n_trials} not reached (no progress: see "
              "the errors above); run the same command again to finish", file=sys.stderr)
    elif not result.finished:
        print(f"[{sweep.study_name}] {result.tally['running']} trial(s) still running elsewhere; the "
              "finalizing command re-evaluates and writes the preset", file=sys.stderr)
    elif cfg.finalize:
        st.withdraw(study, cfg.n_trials)  # nothing may stay queued once n_trials count
        with _interruptible(owned):  # the trials are all recorded: the same command finalizes again
            finalize(study, sweep, result)
        result.wall_time_s = time.perf_counter() - t0  # the validation and re-evaluation too
    if parent and cfg.finalize:
        from rlexp.sweep.tracking import finish_parent

        finish_parent(parent, "FINISHED" if result.finished else "KILLED", _parent_metrics(result))
    return result


def summarize(study: optuna.Study, sweep: Sweep, wall_time_s: float) -> SweepResult:
    trials = study.get_trials(deepcopy=False)
    b = st.best(trials)
    return SweepResult(study.study_name, st.redact(st.storage_url(sweep.cfg.storage)), sweep.cfg.n_trials,
                       st.tally(trials), sum(int(t.user_attrs.get("env_steps", 0)) for t in trials),
                       wall_time_s, b.number if b else None, b.value if b else None,
                       list(b.user_attrs.get("overrides", [])) if b else [],
                       pruner=study.user_attrs.get("pruner"), sampler=study.user_attrs.get("sampler"))


def _parent_metrics(r: SweepResult) -> dict[str, float]:
    m = {f"trials_{k}": float(v) for k, v in r.tally.items()}
    m["env_steps"] = float(r.env_steps)
    if r.best_value is not None:
        m["best_value"] = r.best_value
    if r.picked is not None:
        m["picked_trial"], m["picked_value"] = float(r.picked.number), r.picked.value
    if r.evaluation is not None:
        m["eval_solved"] = float(r.evaluation.solved)
        if math.isfinite(med := r.evaluation.median_episodes_to_solve):
            m["eval_median_episodes_to_solve"] = med
    return m


# --------------------------------------------------------------------------- the end
def top_table(trials: Sequence[FrozenTrial], k: int) -> str:
    """Markdown table of the ``k`` best complete trials."""
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                      key=lambda t: (t.value, t.number))[:k]
    rows = ["| rank | trial | value | solved seeds | episodes-to-solve | env steps | params |",
            "|---|---|---|---|---|---|---|"]
    for i, t in enumerate(complete, 1):
        ets = t.user_attrs.get("episodes_to_solve", [])
        ets_s = ", ".join("-" if e is None else str(e) for e in ets)
        rows.append(f"| {i} | {t.number} | {t.value:.1f} | {sum(e is not None for e in ets)}/{len(ets)} | {ets_s} | "
                    f"{t.user_attrs.get('env_steps', 0)} | {ob.describe_trial(t.params)} |")
    return "\n".join(rows)


def eval_batch(overrides: Sequence[str], seeds: Sequence[int], label: str | None, parent_run_id: str | None,
               tags: dict[str, Any]) -> list[EvalRun]:
    """Train ``overrides`` on ``seeds`` as one batch (tracked as configured); a failed seed is a result."""
    cfg = compose_config(list(overrides))
    group = f"{tags['sweep']}/{tags.get('sweep_role', 'eval')}" if "sweep" in tags else None
    results = run_batch([replace(cfg, seed=s) for s in seeds], label=label, group=group,
                        tags=tags, parent_run_id=parent_run_id)  # SIGTERM: KeyboardInterrupt, runs KILLED
    return [EvalRun(s, r.episodes_to_solve, r.episodes, r.env_steps, r.wall_time_s, r.error,
                    ob.tail_mean(r.returns, cfg.solve.window)) for s, r in zip(seeds, results, strict=True)]


def _eval_job(job: tuple[Any, ...]) -> tuple[Any, list[EvalRun]]:
    return job[0], eval_batch(*job[1:])


def evaluate(overrides: Sequence[str], seeds: Sequence[int], workers: int = 1, *, label: str | None = None,
             parent_run_id: str | None = None, tags: dict[str, Any] | None = None) -> EvalSummary:
    """Train ``overrides`` on each seed, as one batch; ``workers`` is kept for the callers' sake."""
    return EvalSummary(list(seeds), eval_batch(overrides, seeds, label, parent_run_id, dict(tags or {})))


def _check_unused(trials: Sequence[FrozenTrial], seeds: Sequence[int], key: str, value: int) -> None:
    clash = sorted({s for t in trials for s in t.user_attrs.get("seeds", [])}.intersection(seeds))
    if clash:
        raise ConfigError(f"{key}={value} gives seeds {clash} that trials used; raise {key}")


def validate_top(study: optuna.Study, sweep: Sweep, parent_run_id: str | None) -> list[Validated]:
    """Run the ``validation.top`` best complete trials on the validation seeds (the trials' budget
    and censoring rule), a batch per trial (``workers`` at once), each recorded on the study as it
    ends, so a stopped validation resumes with what is left; then rank them (:func:`pick`). Empty
    when validation is off or fewer than 2 trials are complete."""
    cfg, v = sweep.cfg, sweep.cfg.validation
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                      key=lambda t: (t.value, t.number))
    if not v.enabled or len(complete) < 2:
        return []
    seeds = v.seed_list()
    _check_unused(trials, seeds, "validation.seed_base", v.seed_base)
    candidates = complete[:v.top]
    records: dict[str, Any] = {k: dict(r) for k, r in study.user_attrs.get("validation", {}).items()}
    jobs = []
    for t in candidates:
        overrides = [*cfg.base, *t.user_attrs.get("overrides", [])]
        left = [s for s in seeds if str(s) not in records.get(str(t.number), {})]
        tags = {"sweep": sweep.study_name, "sweep_role": "validate", "trial": t.number}
        if left:
            jobs.append(((t.number, overrides), overrides, left, ob.algo_label(overrides), parent_run_id, tags))
    if jobs:
        print(f"[{sweep.study_name}] validating trials {[t.number for t in candidates]} on held-out seeds {seeds}",
              file=sys.stderr, flush=True)
    with worker_pool(len(jobs), cfg.workers) if cfg.workers > 1 and len(jobs) > 1 else nullcontext() as pool:
        for (number, overrides), runs in (pool.imap_unordered(_eval_job, jobs) if pool else map(_eval_job, jobs)):
            rcfg = compose_config(overrides)
            budget, threshold = rcfg.train.max_episodes, solve_threshold(rcfg, check_compatible(rcfg))
            for r in runs:
                value = ob.final_value(r.solved_at, r.last_mean, threshold, budget,
                                    ob.censor_penalty(cfg.objective.penalty, budget))
                records.setdefault(str(number), {})[str(r.seed)] = {
                    "value": value, "solved_at": r.solved_at, "env_steps": r.env_steps,
                    "wall_time_s": r.wall_time_s, "error": r.error}
                print(f"[{sweep.study_name}] validation: trial {number} seed {r.seed}: "
                      f"{'solved at ' + str(r.solved_at) if r.solved_at is not None else 'unsolved'} "
                      f"(value {value:g})" + (f" {r.error}" if r.error else ""), file=sys.stderr, flush=True)
            study.set_user_attr("validation", records)
    return pick(candidates, records, seeds, cfg.objective.aggregate)


def finalize(study: optuna.Study, sweep: Sweep, result: SweepResult) -> None:
    """Top table, validation, re-evaluation of the pick on fresh seeds, preset; fills ``result``."""
    cfg, v = sweep.cfg, sweep.cfg.validation
    trials = study.get_trials(deepcopy=False)
    out = OUTPUTS / preset.preset_name(sweep.study_name)
    out.mkdir(parents=True, exist_ok=True)
    table = top_table(trials, cfg.top)
    print(f"\n[{sweep.study_name}] top trials ({result.tally}):\n{table}\n", file=sys.stderr)
    (out / "top_trials.md").write_text(table + "\n")
    artifacts = [out / "top_trials.md"]
    b = st.best(trials)
    if b is None:
        print(f"[{sweep.study_name}] no complete trial: nothing to re-evaluate or write", file=sys.stderr)
        _log_artifacts(result.parent_run_id, artifacts)
        return
    if v.eval_seeds:  # before any work: the fresh seeds must be unused
        _check_unused(trials, v.fresh_seeds(), "validation.eval_seed_base", v.eval_seed_base)
    result.validated = validate_top(study, sweep, result.parent_run_id)
    chosen = "the best trial"
    if result.validated:
        result.picked = result.validated[0]
        b = next(t for t in trials if t.number == result.picked.number)
        vtable = validation_table(result.validated)
        print(f"\n[{sweep.study_name}] validated on held-out seeds {v.seed_list()}; the pick is trial {b.number}:"
              f"\n{vtable}\n", file=sys.stderr)
        (out / "validation.md").write_text(vtable + "\n")
        artifacts.append(out / "validation.md")
        chosen = (f"picked from the top {len(result.validated)} by validation on held-out seeds {v.seed_list()}: "
                  f"{result.picked.value:.2f} over {result.picked.seeds} seeds, {result.picked.solved} solved")
    overrides = [*cfg.base, *b.user_attrs.get("overrides", []), *v.eval_overrides]
    if v.eval_seeds:
        print(f"[{sweep.study_name}] re-evaluating trial {b.number} on fresh seeds {v.fresh_seeds()}", file=sys.stderr)
        result.evaluation = evaluate(overrides, v.fresh_seeds(), label=ob.algo_label(overrides),
                                     parent_run_id=result.parent_run_id,
                                     tags={"sweep": sweep.study_name, "sweep_role": "eval", "trial": b.number})
        print(f"[{sweep.study_name}] trial {b.number} re-evaluated: {result.evaluation.line()}", file=sys.stderr)
    path = preset.preset_path(sweep.study_name, cfg.preset_dir)
    preset.write(path, overrides, [
        f"Best configuration of Optuna study '{sweep.study_name}' (storage {result.storage}),",
        f"trial {b.number} of {len(trials)}, objective {b.value:.2f} ({cfg.objective.aggregate} episodes-to-solve over "
        f"seeds {b.user_attrs.get('seeds')}); {chosen},",
        f"written {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by `python -m rlexp.sweep sweep={sweep.name} ...`.",
        f"Re-evaluation: {result.evaluation.line()}." if result.evaluation else "Not re-evaluated.",
        f"Reproduce: python -m rlexp +experiment={path.stem} seed=1,2,3 -m"])
    result.preset = path
    print(f"[{sweep.study_name}] preset written: {path} (python -m rlexp +experiment={path.stem} seed=1,2,3 -m)",
          file=sys.stderr)
    _log_artifacts(result.parent_run_id, [*artifacts, path])


def _log_artifacts(run_id: str | None, paths: list[Path]) -> None:
    from rlexp.sweep.tracking import log_artifacts

    if run_id:
        log_artifacts(run_id, paths)
