"""``python -m rlexp [overrides] [-m]``: train one configuration, or many with Hydra's multirun.

Before Hydra starts any job, every job of the command line is composed and validated; a bad key,
value, option or algorithm/env pairing stops everything with one line naming it (exit 2) and
nothing is written to MLflow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlexp.compose import CONF_DIR, preflight, to_config
from rlexp.config import ConfigError, register_configs

_HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve",
                     "--shell-completion", "-sc", "--version", "--package", "-p"}

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _job(dcfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from rlexp.train import run

    hc = HydraConfig.get()
    cfg = to_config(dcfg)
    multirun = hc.mode == RunMode.MULTIRUN
    group = hc.sweep.dir if multirun else None
    progress = cfg.train.progress if cfg.train.progress is not None else sys.stderr.isatty()
    name = f"{hc.runtime.choices.get('algo')} seed={cfg.seed}"
    try:
        result = run(cfg, label=hc.runtime.choices.get("algo"), group=group,
                     workdir=Path(hc.runtime.output_dir), progress=progress)
    except Exception as e:
        if not multirun:
            raise
        # one failed job (e.g. a diverged seed) is recorded FAILED and the sweep goes on
        print(f"rlexp: {name} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    verdict = f"solved at episode {result.episodes_to_solve}" if result.solved else "not solved"
    print(f"rlexp: {name}: {verdict} ({result.episodes} episodes, {result.env_steps} env steps, "
          f"{result.wall_time_s:.1f} s, {result.sps:.0f} steps/s, run {result.run_id})", file=sys.stderr)
    return float(result.episodes_to_solve) if result.episodes_to_solve is not None else None


def main() -> None:
    argv = sys.argv[1:]
    if not _HYDRA_INFO_FLAGS.intersection(argv):
        overrides = [a for a in argv if not a.startswith("-")]
        from rlexp.tracking import check_tracking, open_experiment

        try:
            configs = preflight(overrides)
            if any(c.tracking.enabled for c in configs):
                check_tracking()  # an unwritable store or a silent server: refused in seconds
        except ConfigError as e:
            print(f"rlexp: error: {e}", file=sys.stderr)
            sys.exit(2)
        # create the store and the experiments once, here, before parallel jobs race to do it
        from rlexp.runs import note_stale
        from rlexp.train import experiment_name

        for name in sorted({experiment_name(c) for c in configs if c.tracking.enabled}):
            if note := note_stale(*open_experiment(name), name):
                print(note, file=sys.stderr)
    try:
        _job()
    except KeyboardInterrupt:
        print("\nrlexp: interrupted; the current run is recorded as KILLED with all it logged",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
