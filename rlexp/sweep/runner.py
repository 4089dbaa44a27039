"""Run a sweep: create or resume the study, run trials in worker processes (``workers=N``, each
``study.optimize`` on the shared storage) until ``n_trials`` count, then finalize: validate the top
trials on held-out seeds, re-evaluate the pick on fresh ones and write it as a preset."""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from rlexp.compose import compose_config
from rlexp.config import ConfigError
from rlexp.sweep import objective as ob
from rlexp.sweep import preset
from rlexp.sweep import study as st
from rlexp.sweep.load import Sweep, start_points
from rlexp.sweep.preset import EvalSummary, Validated
from rlexp.sweep.study import say
from rlexp.sweep.tracking import end_run, open_parent
from rlexp.train import experiment_name, failure_line, sigterm_as_interrupt, worker_pool

OUTPUTS = Path("outputs") / "sweeps"
COMPARABLE = ("base", "seeds", "seed_stride", "objective")  # what trial values depend on


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
    evaluation: EvalSummary | None = None
    preset: Path | None = None
    parent_run_id: str | None = None
    picked: Validated | None = None  # the trial re-evaluated and written, after validation (None: the best)
    validated: list[Validated] = field(default_factory=list)  # the validated trials, best first
    failed: list[str] = field(default_factory=list)  # a line per failed trial of the study, in trial order

    @property
    def finished(self) -> bool:
        """``n_trials`` trials count."""
        return self.tally["complete"] + self.tally["pruned"] + self.tally["failed"] >= self.n_trials

    @property
    def all_started(self) -> bool:
        """Nothing left to start: the rest are running on other workers."""
        return sum(self.tally[k] for k in ("complete", "pruned", "failed", "running")) >= self.n_trials


def summarize(study: optuna.Study, sweep: Sweep, wall_time_s: float) -> SweepResult:
    trials = study.get_trials(deepcopy=False)
    b = st.best(trials)
    failed = [failure_line(f"FAILED trial {t.number}", t.user_attrs.get("overrides", []),
                           t.user_attrs["fail_reason"], t.user_attrs.get("mlflow_run_id"))
              for t in trials if st.outcome(t) == "failed"]
    env_steps = sum(int(t.user_attrs.get("env_steps", 0)) for t in trials)
    return SweepResult(study.study_name, st.redact(st.storage_url(sweep.cfg.storage)), sweep.cfg.n_trials,
                       st.tally(trials), env_steps, wall_time_s, b.number if b else None,
                       b.value if b else None, failed=failed)


# --------------------------------------------------------------------------- workers
def _load_study(sweep: Sweep) -> optuna.Study:
    """The study with the definition's storage, sampler and pruner (created if new)."""
    cfg = sweep.cfg
    return optuna.create_study(
        study_name=sweep.study_name, storage=st.make_storage(cfg.storage, cfg.heartbeat_interval),
        sampler=st.make_sampler(cfg), pruner=st.make_pruner(cfg, compose_config(cfg.base).train.max_episodes),
        direction="minimize", load_if_exists=True)


def work(sweep: Sweep, parent_run_id: str | None, experiment: str | None, spawned: bool = False) -> None:
    """One worker: run trials of the shared study until ``n_trials`` count (module-level: spawnable)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress lines say it
    study = _load_study(sweep)
    try:
        while st.done(study.get_trials(deepcopy=False)) < sweep.cfg.n_trials:
            try:
                study.optimize(ob.Objective(sweep, parent_run_id, experiment), catch=(Exception,),
                               callbacks=[st.Progress(sweep.study_name, sweep.cfg.n_trials)])
                break
            except ValueError as e:  # SQLite can hand one queued trial to two workers; the other told it
                if not str(e).startswith("Cannot tell a"):
                    raise
                say(sweep.study_name, f"a trial this worker ran was finished by another worker ({e}); going on")
    except KeyboardInterrupt:
        if not spawned:
            raise
        sys.exit(130)


def _run_workers(sweep: Sweep, n: int, parent_run_id: str | None, experiment: str | None) -> None:
    if n == 1:
        return work(sweep, parent_run_id, experiment)
    procs = [mp.get_context("spawn").Process(target=work, args=(sweep, parent_run_id, experiment, True),
                                             name=f"sweep-worker-{i}") for i in range(n)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # SIGTERM: each worker's runs end KILLED, its trial lost
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=30)
        raise
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        say(sweep.study_name, f"{len(bad)} worker(s) exited with codes {bad}")


def _drive(study: optuna.Study, sweep: Sweep, parent: str | None, experiment: str | None) -> None:
    """Run workers until ``n_trials`` count; the finalizing command also waits for other machines'."""
    cfg, idle_rounds = sweep.cfg, 0
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
            st.fail_lost(study)


# --------------------------------------------------------------------------- the command
def definition(sweep: Sweep) -> dict[str, Any]:
    """What makes trial values comparable; stored on the study and checked on every resume."""
    c = sweep.cfg
    return {"base": list(c.base), "seeds": list(c.seeds), "seed_stride": c.seed_stride,
            "objective": asdict(c.objective), "report_every": c.pruner.report_every, "space": c.space,
            "groups": c.groups}


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
            raise ConfigError(f"{key}={want[key]!r} differs from {have.get(key)!r}, with which study "
                              f"{name!r} was created: its values would not be comparable; use another "
                              "study_name (or the original settings)")
    if have.get("space") != want["space"] or have.get("groups", {}) != want["groups"]:
        say(name, "note: the search space differs from the study's first run")


def run_sweep(sweep: Sweep) -> SweepResult:
    """Start, resume or extend the sweep's study; finalize when ``n_trials`` count."""
    cfg, name, t0 = sweep.cfg, sweep.study_name, time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress lines say it
    base_cfg = compose_config(cfg.base)
    experiment = experiment_name(base_cfg) if base_cfg.tracking.enabled else None
    study = _load_study(sweep)
    _check_definition(study, sweep)
    url = st.redact(st.storage_url(cfg.storage))
    parent = None
    if experiment is not None:
        known = study.user_attrs.get("mlflow_parent_run_id")
        parent = open_parent(name, experiment, url, definition(sweep), known)
        if known != parent:
            study.set_user_attr("mlflow_parent_run_id", parent)
    say(name, f"study in {url}: {st.done(study.get_trials(deepcopy=False))}/{cfg.n_trials} trials done; "
        f"{cfg.workers} worker(s), seeds per trial {len(cfg.seeds)}, pruner {cfg.pruner.name}")
    owned = parent if cfg.finalize else None  # helpers (finalize=false) leave the parent run alone
    try:
        with sigterm_as_interrupt():  # Ctrl-C or SIGTERM: the parent run ends KILLED
            st.wait_for_stale(study, cfg.heartbeat_interval)  # so a dead worker's start point runs again
            if cfg.start_from_default:
                for label in st.enqueue_start_points(study, start_points(sweep), cfg.n_trials):
                    say(name, f"enqueued the {label} values")
            _drive(study, sweep, parent, experiment)
            result = summarize(study, sweep, time.perf_counter() - t0)
            result.parent_run_id = parent
            if not result.all_started:
                say(name, f"{result.tally}: n_trials={cfg.n_trials} not reached (no progress: see the errors "
                    "above); run the same command again to finish")
            elif not result.finished:
                say(name, f"{result.tally['running']} trial(s) still running elsewhere; the finalizing "
                    "command re-evaluates and writes the preset")
            artifacts: list[Path] = []
            if result.finished and cfg.finalize:
                st.withdraw(study, cfg.n_trials)  # nothing may stay queued once n_trials count
                artifacts = finalize(study, sweep, result)  # interrupted: the same command finalizes again
                result.wall_time_s = time.perf_counter() - t0  # the validation and re-evaluation too
    except KeyboardInterrupt:
        if owned:
            end_run(owned, "KILLED")
        raise
    if owned:
        pk, ev = result.picked, result.evaluation
        m = {f"trials_{k}": v for k, v in result.tally.items()} | {
            "env_steps": result.env_steps, "best_value": result.best_value,
            "picked_trial": pk.number if pk else None, "picked_value": pk.value if pk else None,
            "eval_solved": ev.solved if ev else None,
            "eval_median_episodes_to_solve": ev.median_episodes_to_solve if ev else None}
        metrics = {k: float(v) for k, v in m.items() if v is not None and math.isfinite(v)}
        end_run(owned, "FINISHED" if result.finished else "KILLED", metrics, artifacts=tuple(artifacts))
    return result


# --------------------------------------------------------------------------- the end
def validate_top(study: optuna.Study, sweep: Sweep, parent_run_id: str | None) -> list[Validated]:
    """Run the ``validation.top`` best complete trials on the held-out seeds (the trials' budget and
    censoring rule), a batch per trial (``workers`` at once), each recorded on the study as it ends,
    so a stopped validation resumes with what is left; then rank them (:func:`preset.pick`). Empty
    when validation is off or fewer than 2 trials are complete."""
    cfg, seeds, name = sweep.cfg, sweep.cfg.validation.seed_list(), sweep.study_name
    complete = st.ranked(study.get_trials(deepcopy=False))
    if not seeds or len(complete) < 2:
        return []
    candidates = complete[:cfg.validation.top]
    records: dict[str, Any] = {k: dict(r) for k, r in study.user_attrs.get("validation", {}).items()}
    jobs = []
    for t in candidates:
        left = [s for s in seeds if str(s) not in records.get(str(t.number), {})]
        if left:
            overrides = [*cfg.base, *t.user_attrs.get("overrides", [])]
            tags = {"sweep": name, "sweep_role": "validate", "trial": t.number}
            jobs.append((t.number, overrides, left, cfg.objective.penalty, parent_run_id, tags))
    if jobs:
        say(name, f"validating trials {[t.number for t in candidates]} on held-out seeds {seeds}")
    with worker_pool(len(jobs), cfg.workers) if cfg.workers > 1 and len(jobs) > 1 else nullcontext() as pool:
        for number, runs in (pool.imap_unordered if pool else map)(preset.validation_runs, jobs):
            records.setdefault(str(number), {}).update(runs)
            for seed, r in runs.items():
                solved = "unsolved" if r["solved_at"] is None else f"solved at {r['solved_at']}"
                say(name, f"validation: trial {number} seed {seed}: {solved} (value {r['value']:g})"
                    + (f" {r['error']}" if r["error"] else ""))
            study.set_user_attr("validation", records)
    return preset.pick(candidates, records, seeds, cfg.objective.aggregate)


def finalize(study: optuna.Study, sweep: Sweep, result: SweepResult) -> list[Path]:
    """Top table, validation, re-evaluation of the pick on fresh seeds, preset; fills ``result`` and
    returns the files written (the parent run's artifacts)."""
    cfg, v, name = sweep.cfg, sweep.cfg.validation, sweep.study_name
    trials = study.get_trials(deepcopy=False)
    path = preset.preset_path(name, cfg.preset_dir)
    out = OUTPUTS / path.stem
    out.mkdir(parents=True, exist_ok=True)
    table = preset.top_table(st.ranked(trials)[:cfg.top])
    print(f"\n[{name}] top trials ({result.tally}):\n{table}\n", file=sys.stderr)
    (out / "top_trials.md").write_text(table + "\n")
    artifacts = [out / "top_trials.md"]
    b = st.best(trials)
    if b is None:
        say(name, "no complete trial: nothing to re-evaluate or write")
        return artifacts
    if not any(e is not None for t in trials for e in t.user_attrs.get("episodes_to_solve") or []):
        say(name, "no trial solved any of its seeds: the ranking only orders unsolved runs; "
            + ("validating and writing the best anyway (preset_unsolved=true)" if cfg.preset_unsolved else
               "no preset written (a longer train.max_episodes or another space may solve; "
               "preset_unsolved=true writes the best anyway)"))
        if not cfg.preset_unsolved:
            return artifacts
    result.validated = validate_top(study, sweep, result.parent_run_id)
    chosen = "the best trial"
    if result.validated:
        pk = result.picked = result.validated[0]
        b = next(t for t in trials if t.number == pk.number)
        vtable = preset.validation_table(result.validated)
        print(f"\n[{name}] validated on held-out seeds {v.seed_list()}; the pick is trial {b.number}:\n"
              f"{vtable}\n", file=sys.stderr)
        (out / "validation.md").write_text(vtable + "\n")
        artifacts.append(out / "validation.md")
        chosen = (f"picked from the top {len(result.validated)} by validation on held-out seeds "
                  f"{v.seed_list()}: {pk.value:.2f} over {pk.seeds} seeds, {pk.solved} solved")
    overrides = [*cfg.base, *b.user_attrs.get("overrides", []), *v.eval_overrides]
    if v.eval_seeds:
        say(name, f"re-evaluating trial {b.number} on fresh seeds {v.fresh_seeds()}")
        result.evaluation = preset.evaluate(overrides, v.fresh_seeds(), parent_run_id=result.parent_run_id,
                                            tags={"sweep": name, "sweep_role": "eval", "trial": b.number})
        say(name, f"trial {b.number} re-evaluated: {result.evaluation.line()}")
    reproduce = f"python -m rlexp +experiment={path.stem} seed=1,2,3 -m"
    preset.write(path, overrides, [
        f"Best configuration of Optuna study '{name}' (storage {result.storage}),",
        f"trial {b.number} of {len(trials)}, objective {b.value:.2f} ({cfg.objective.aggregate} "
        f"episodes-to-solve over seeds {b.user_attrs.get('seeds')}); {chosen},",
        f"written {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by `python -m rlexp.sweep sweep={sweep.name} "
        "...`.",
        f"Re-evaluation: {result.evaluation.line()}." if result.evaluation else "Not re-evaluated.",
        f"Reproduce: {reproduce}"])
    result.preset = path
    say(name, f"preset written: {path} ({reproduce})")
    return [*artifacts, path]
