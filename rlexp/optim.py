"""Optimizer construction from :class:`OptimizerConfig`."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlexp.config import OptimizerConfig


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig,
                   lr: float | None = None) -> torch.optim.Optimizer:
    """Build the configured optimizer; ``lr`` overrides ``cfg.lr`` (second networks' own rates).

    Adam uses the fused CPU kernel: one call per step instead of a dozen small tensor ops.
    """
    rate = lr if lr is not None else cfg.lr
    assert rate is not None, "optimizer.lr is resolved in Config.__post_init__"
    params = list(params)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=rate, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
                                weight_decay=cfg.weight_decay, fused=True)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=rate, alpha=cfg.alpha, eps=cfg.eps,
                                   weight_decay=cfg.weight_decay, momentum=cfg.momentum, foreach=True)
    return torch.optim.SGD(params, lr=rate, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, foreach=True)
