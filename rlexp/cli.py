"""``python -m rlexp [overrides] [-m]``: train one configuration, or many with Hydra's multirun.

Before Hydra starts any job, every job of the command line is composed and validated; a bad key,
value, option or algorithm/env pairing stops everything with one line naming it (exit 2) and
nothing is written to MLflow. With the default launcher (``hydra/launcher=batch``) the jobs of a
multirun that differ only in ``seed`` train together as one batch; each job still gets its own
MLflow run and output directory.

Exit status: 0 when every job finished; 1 when any job failed (after one summary line per failed
job: its overrides, the reason, its MLflow run); 130 after Ctrl-C and 143 after SIGTERM, which stop
the whole command (the running jobs end KILLED with what they recorded, no further job starts).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rlexp.compose import CONF_DIR, SEARCHPATH, budget_warnings, override_key, preflight, to_config
from rlexp.config import ConfigError, register_configs

_HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve",
                     "--shell-completion", "-sc", "--version", "--package", "-p"}
_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
OUTCOME_FILE = "rlexp-job.json"  # a job's outcome, in its output directory

register_configs()


class FailFast(BaseException):
    """A job failed and ``hydra.launcher.fail_fast`` is set: start no further job."""


class Terminated(BaseException):
    """SIGTERM reached the command: stop everything (not an ``Exception``, so no launcher or
    Hydra wrapper records it as one failed job and goes on)."""


_failed: list[str] = []  # summary lines of this process's failed jobs
_experiments: dict[str, list[str]] = {}  # the command's MLflow experiments -> its jobs' algorithms (preflight)


def _outcome(hc: Any, cfg: Any, status: str, reason: str | None, run_id: str | None) -> None:
    """Record a job's outcome (in its output directory, for the multirun summary); a job that did
    not finish also gets its summary line here (for fail_fast)."""
    outcome = {"status": status, "overrides": list(hc.overrides.task), "reason": reason, "run_id": run_id,
               "seed": cfg.seed}
    if status != "FINISHED":
        _failed.append(_summary_line(outcome))
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTCOME_FILE).write_text(json.dumps(outcome))


def _summary_line(o: dict[str, Any]) -> str:
    """One failed job: its status, overrides, reason and MLflow run."""
    from rlexp.train import failure_line

    return "rlexp: " + failure_line(o["status"], o["overrides"], o["reason"], o["run_id"])


def _train(jobs: list[tuple[DictConfig, DictConfig]]) -> list[float | None]:
    """Train a batch of jobs (the same config but the seed) and report each; the return values are
    the jobs' episodes-to-solve (None when unsolved or failed)."""
    from hydra.types import RunMode

    from rlexp.algos.registry import get_algorithm
    from rlexp.parent import ARM_TAG, arm, parent_of
    from rlexp.train import by_sigterm, experiment_name, run_batch

    cfgs = [to_config(c) for c, _ in jobs]
    hcs = [h.hydra for _, h in jobs]
    hc = hcs[0]
    multirun = hc.mode == RunMode.MULTIRUN
    group = hc.sweep.dir if multirun else None
    label = hc.runtime.choices.get("experiment") or hc.runtime.choices.get("algo")  # a preset names its runs
    cfg = cfgs[0]
    # an algorithm without a seed axis (sb3_*) trains its jobs one after another
    parts = [list(range(len(cfgs)))] if get_algorithm(cfg.algo.name).batched else [[i] for i in range(len(cfgs))]
    out: list[float | None] = [None] * len(cfgs)
    parent = parent_of(Path(group), experiment_name(cfg)) if group else None  # the launch's parent run
    tags = {ARM_TAG: arm(hc.overrides.task)} if multirun else None
    for part in parts:
        try:
            results = run_batch([cfgs[i] for i in part], label=label, group=group, parent_run_id=parent, tags=tags,
                                workdirs=[Path(hcs[i].runtime.output_dir) for i in part], progress=cfg.train.progress)
        except KeyboardInterrupt as e:
            if by_sigterm(e):
                raise Terminated() from None
            raise
        except Exception as e:  # the batch could not run: every job of it failed
            for i in part:
                _outcome(hcs[i], cfgs[i], "FAILED", f"{type(e).__name__}: {e}", None)
                print(f"rlexp: {label} seed={cfgs[i].seed} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        for i, r in zip(part, results, strict=True):
            _outcome(hcs[i], cfgs[i], r.status, r.error, r.run_id)
            name = f"{label} seed={cfgs[i].seed}"
            if r.status != "FINISHED":
                print(f"rlexp: {name} {r.status}: {r.error} (run {r.run_id})", file=sys.stderr)
                continue
            verdict = f"solved at episode {r.episodes_to_solve}" if r.solved else "not solved"
            print(f"rlexp: {name}: {verdict} ({r.episodes} episodes, {r.env_steps} env steps, "
                  f"{r.wall_time_s:.1f} s, {r.sps:.0f} steps/s, run {r.run_id})", file=sys.stderr)
            out[i] = float(r.episodes_to_solve) if r.episodes_to_solve is not None else None
    if _failed and multirun and hc.launcher.get("fail_fast", False):
        raise FailFast()
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _job(dcfg: DictConfig) -> float | None:
    """One job (a single run, or a multirun job under a launcher that does not batch)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(hc)})
    # resolved in place: the live node shares the launch's resolver cache, so ``${now:...}`` in the
    # sweep folder (the runs' ``group`` tag) is the launch's time, not this job's
    hydra_cfg.hydra.sweep.dir = str(hc.sweep.dir)
    return _train([(dcfg, hydra_cfg)])[0]


_job.__wrapped__.batch = _train  # type: ignore[attr-defined]  # what the batch launcher calls


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM between or around runs. Jobs that a launcher runs in worker processes (joblib) get it
    too, and up to ``SIGTERM_GRACE_S`` to end their runs KILLED with what they logged."""
    workers = worker_processes()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if workers:
        from rlexp.parent import wait_for_children

        with contextlib.suppress(Exception):  # the store is gone: nothing more to wait for
            wait_for_children(SIGTERM_GRACE_S)
    raise Terminated()


SIGTERM_GRACE_S = 30.0


def worker_processes(pid: int | str = "self") -> list[int]:
    """The child processes of ``pid`` (this process by default; from /proc), but multiprocessing's
    resource trackers, which outlive their parent by design."""
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(c) for c in task.read_text().split()]
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


class MultirunSummary(Callback):
    """A multirun's parent MLflow runs (:mod:`rlexp.parent`: opened at the start, the jobs' runs
    their children, the aggregate logged at the end) and, at the end, one line per failed job (from
    the jobs' outcome files, so jobs run by any launcher, in any process, count) and the command's
    exit status."""

    status = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Pin the sweep folder (``${now:...}``) before any job starts: jobs run in other processes
        (joblib, submitit) would otherwise each resolve it at their own time, and the launch's
        jobs would not share one folder and one ``group`` tag."""
        from omegaconf import read_write

        with read_write(config.hydra.sweep):
            config.hydra.sweep.dir = str(config.hydra.sweep.dir)
        if _experiments:
            from rlexp.parent import open_parents

            open_parents(Path(config.hydra.sweep.dir), _experiments, ["rlexp", *sys.argv[1:]])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        lines = []
        for path in sorted(Path(str(config.hydra.sweep.dir)).glob(f"*/{OUTCOME_FILE}")):
            o = json.loads(path.read_text())
            if o["status"] != "FINISHED":
                lines.append(_summary_line(o))
        if lines:
            print(f"rlexp: {len(lines)} job(s) did not finish:", file=sys.stderr)
            for line in lines:
                print(line, file=sys.stderr)
            MultirunSummary.status = 1
        _end_parents("FAILED" if lines else "FINISHED")


def _end_parents(status: str, summarize: bool = True) -> None:
    from rlexp import parent

    if parent._open:
        parent.end_parents(status, summarize)


def main() -> None:
    argv = sys.argv[1:]
    if any(a.startswith("resume=") for a in argv):  # continue a run from its checkpoint (rlexp.resume)
        from rlexp.resume import main as resume

        sys.exit(resume(argv))
    if {"-m", "--multirun"}.intersection(argv):  # argparse refuses overrides on both sides of -m: move it last
        argv = [a for a in argv if a not in ("-m", "--multirun")] + ["-m"]
        sys.argv[1:] = argv
    multirun = "-m" in argv
    if os.getcwd() not in sys.path and "" not in sys.path:  # as under ``python -m rlexp``: the working
        sys.path.insert(0, os.getcwd())  # directory's modules import (``env.id=my_envs:MyEnv-v0``)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)  # between runs; a run turns it into KILLED
    try:
        if not _HYDRA_INFO_FLAGS.intersection(argv):
            _preflight(argv)
        _job()
    except KeyboardInterrupt:
        print("\nrlexp: interrupted; the running jobs are recorded as KILLED with all they logged; "
              "no further job started", file=sys.stderr)
        sys.exit(130)
    except FailFast:
        _end_parents("FAILED")
        for line in _failed:
            print(line, file=sys.stderr)
        print("rlexp: hydra.launcher.fail_fast: a job failed, no further job started", file=sys.stderr)
        sys.exit(1)
    except Terminated:
        print("rlexp: terminated (SIGTERM); the running jobs are recorded as KILLED with all they logged; "
              "no further job started", file=sys.stderr)
        sys.exit(143)
    finally:
        _end_parents("KILLED", summarize=False)  # interrupted: the multirun's end never came
        signal.signal(signal.SIGTERM, previous)
    if multirun:
        sys.exit(MultirunSummary.status)
    if _failed:
        sys.exit(1)


def _overrides(argv: list[str]) -> list[str]:
    """The overrides of a command line, ``--config-dir DIR`` as the ``hydra.searchpath`` entry it
    becomes (Hydra puts it first); ConfigError when DIR is no folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out, dirs, entries = [], [], []
    args = iter(argv)
    for a in args:
        flag, eq, value = a.partition("=")
        if flag in _CONFIG_DIR_FLAGS:
            folder = value if eq else next(args, "")
            if not Path(folder).is_dir():
                raise ConfigError(f"{flag} {folder!r}: no such folder (from {Path.cwd()})")
            dirs.append(f"file://{Path(folder).resolve()}")
        elif override_key(a) == SEARCHPATH:
            entries.append(a)
        elif not a.startswith("-"):
            out.append(a)
    if not dirs:
        return out + entries
    for a in entries:
        parsed = OverridesParser.create().parse_override(a).value()
        dirs += [str(v) for v in (parsed if isinstance(parsed, list) else [parsed])]
    return [*out, f"{SEARCHPATH}=[{','.join(repr(d) for d in dirs)}]"]


def _preflight(argv: list[str]) -> None:
    """Compose and check every job of the command line ``argv``, the tracking store and the
    experiments before any job starts."""
    from rlexp.tracking import check_tracking, open_experiment

    try:
        configs = preflight(_overrides(argv))
        if any(c.tracking.enabled for c in configs):
            check_tracking()  # an unwritable store or a silent server: refused in seconds
    except ConfigError as e:
        print(f"rlexp: error: {e}", file=sys.stderr)
        sys.exit(2)
    for warning in budget_warnings(configs):  # after the refusals, which print one line only
        print(f"rlexp: warning: {warning}", file=sys.stderr)
    # create the store and the experiments once, here, before parallel jobs race to do it
    from rlexp.runs import note_stale
    from rlexp.train import experiment_name

    _experiments.clear()  # this command's (main may run several commands in one process: tests)
    for c in configs:
        if c.tracking.enabled:
            _experiments.setdefault(experiment_name(c), []).append(c.algo.name)
    for name in sorted(_experiments):
        if note := note_stale(*open_experiment(name), name):
            print(note, file=sys.stderr)
