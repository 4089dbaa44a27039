"""``hydra/launcher=batch`` (rlexp's default): the jobs of a multirun that differ only in their
``seed`` override run as one batch in this process; other groups run one after another.

Each job keeps what Hydra gives it with the basic launcher: its config, its output directory (with
``.hydra/``), its callbacks and its own :class:`JobReturn`. A task function that can train several
jobs at once says so with a ``batch`` attribute: ``batch(jobs) -> outcomes``, ``jobs`` a list of
``(task_cfg, hydra_cfg)`` and each outcome the job's return value or the exception that failed
it; without one each job runs through Hydra's ``run_job``.
"""


import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    _save_config,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class BatchLauncherConf:
    _target_: str = "hydra_plugins.rlexp_batch_launcher.batch_launcher.BatchLauncher"
    max_batch: int = 16  # most jobs (seeds) trained together in one batch; 1: one job at a time
    fail_fast: bool = False  # stop launching further batches once a job has failed


ConfigStore.instance().store(group="hydra/launcher", name="batch", node=BatchLauncherConf,
                             provider="rlexp_batch_launcher")


def _key(overrides: Sequence[str]) -> tuple[str, ...]:
    """What a job is apart from its seed: its overrides without ``seed=``."""
    return tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed")


def batches(job_overrides: Sequence[Sequence[str]], max_batch: int) -> list[list[int]]:
    """Job indices grouped by everything but their seed, in order of first appearance, each group
    cut into batches of at most ``max_batch``."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, ov in enumerate(job_overrides):
        groups.setdefault(_key(ov), []).append(i)
    return [g[j:j + max_batch] for g in groups.values() for j in range(0, len(g), max_batch)]


class BatchLauncher(Launcher):
    def __init__(self, max_batch: int = 16, fail_fast: bool = False) -> None:
        if max_batch < 1:
            raise ValueError(f"hydra.launcher.max_batch={max_batch} must be >= 1")
        self.max_batch, self.fail_fast = max_batch, fail_fast
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        batch_fn: Callable[..., list[Any]] | None = getattr(self.task_function, "batch", None)
        groups = batches(job_overrides, self.max_batch)
        log.info(f"Launching {len(job_overrides)} jobs locally in {len(groups)} batch(es)")
        returns: dict[int, JobReturn] = {}
        for group in groups:
            configs = [self._job_config(list(job_overrides[i]), initial_job_idx + i) for i in group]
            if batch_fn is None:
                for i, cfg in zip(group, configs, strict=True):
                    returns[i] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                         config=cfg, job_dir_key="hydra.sweep.dir",
                                         job_subdir_key="hydra.sweep.subdir")
            else:
                returns.update(zip(group, self._run_batch(configs, batch_fn), strict=True))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            if self.fail_fast and any(returns[i].status == JobStatus.FAILED for i in group):
                log.info("hydra.launcher.fail_fast: a job failed, no further batch starts")
                break
        return [returns[i] for i in sorted(returns)]

    def _job_config(self, overrides: list[str], idx: int) -> DictConfig:
        assert self.config is not None and self.hydra_context is not None
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def _run_batch(self, configs: list[DictConfig], batch_fn: Callable[..., list[Any]]) -> list[JobReturn]:
        """What ``run_job`` does for one job, for every job of the batch, around one ``batch_fn`` call."""
        assert self.hydra_context is not None
        callbacks = self.hydra_context.callbacks
        original = HydraConfig.instance().cfg
        jobs, rets = [], []
        try:
            for cfg in configs:
                with read_write(cfg.hydra.sweep):  # resolved now, with the launch's ${now}: copies would re-read the clock
                    cfg.hydra.sweep.dir = str(cfg.hydra.sweep.dir)
                HydraConfig.instance().set_config(cfg)
                out = os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                   str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
                with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                    cfg.hydra.runtime.output_dir = os.path.abspath(out)
                HydraConfig.instance().set_config(cfg)
                task_cfg = copy.deepcopy(cfg)
                with read_write(task_cfg), open_dict(task_cfg):
                    del task_cfg["hydra"]
                hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
                Path(out).mkdir(parents=True, exist_ok=True)
                if cfg.hydra.output_subdir is not None:
                    sub = Path(cfg.hydra.runtime.output_dir) / str(cfg.hydra.output_subdir)
                    _save_config(task_cfg, "config.yaml", sub)
                    _save_config(hydra_cfg, "hydra.yaml", sub)
                    _save_config(cfg.hydra.overrides.task, "overrides.yaml", sub)
                ret = JobReturn(overrides=OmegaConf.to_container(cfg.hydra.overrides.task), cfg=task_cfg,
                                hydra_cfg=hydra_cfg, working_dir=os.getcwd(), task_name=str(cfg.hydra.job.name))
                callbacks.on_job_start(config=cfg, task_function=self.task_function)
                jobs.append((task_cfg, hydra_cfg))
                rets.append(ret)
            HydraConfig.instance().set_config(configs[0])
            outcomes = batch_fn(jobs)
            for cfg, ret, value in zip(configs, rets, outcomes, strict=True):
                ret.return_value = value
                ret.status = JobStatus.FAILED if isinstance(value, BaseException) else JobStatus.COMPLETED
                callbacks.on_job_end(config=cfg, job_return=ret)
            return rets
        finally:
            HydraConfig.instance().cfg = original
