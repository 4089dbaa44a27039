"""Optimizers over stacked parameters (member axis first), with a step count per member.

Adam, RMSprop and SGD are elementwise, so one step over ``(K, ...)`` tensors is K independent
optimizers' steps, computed by torch.optim's own functional optimizers. What is not elementwise is
computed per member: Adam's bias correction from each member's own step count, and gradient-norm
clipping from each member's own norm. ``step(members)`` updates only the
given members (their parameters and state), as when only some have finished an episode or some
have stopped their policy updates early; the others are left exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import adam, rmsprop, sgd

from rlexp.config import OptimizerConfig
from rlexp.nets import load_member_state, member_state

Members = torch.Tensor | None  # int64 member indices, or None for all


class StackedOptimizer:
    """``optimizer.name`` over one network's stacked parameters, optionally clipping each member's
    gradient norm to ``max_grad_norm`` first; ``lr`` overrides ``cfg.lr`` (a second network's rate).

    The parameters are re-pointed at views of one ``(K, P)`` buffer (their ``.data``; the modules,
    ``state_dict`` and in-place updates all see the same numbers). A step hands torch.optim's own
    functional optimizer (``torch.optim.adam.adam``, fused on the CPU; ``rmsprop``; ``sgd``) the
    members' rows as separate tensors, each with its own step count: K independent optimizers in one
    call, and each member's update the same whatever the other rows are.
    """

    def __init__(self, params: Iterable[nn.Parameter], cfg: OptimizerConfig, size: int,
                 lr: float | None = None, max_grad_norm: float | None = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        assert all(p.shape[0] == size for p in self.params), "stacked parameters: (K, ...)"
        rate = lr if lr is not None else cfg.lr
        assert rate is not None, "optimizer.lr is resolved in Config.__post_init__"
        self.cfg, self.lr, self.size, self.max_grad_norm = cfg, float(rate), size, max_grad_norm
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(size, -1) for p in self.params], dim=1)
            offset = 0
            for p in self.params:
                n = p[0].numel()
                p.data = self.flat[:, offset:offset + n].view(p.shape)
                offset += n
        self.step_counts = [torch.zeros((), dtype=torch.float32, device=self.flat.device) for _ in range(size)]
        names = {"adam": ["exp_avg", "exp_avg_sq"], "rmsprop": ["square_avg"], "sgd": []}[cfg.name]
        if cfg.momentum != 0:
            names.append("momentum_buffer")
        self.state = {name: torch.zeros_like(self.flat) for name in names}

    @property
    def steps(self) -> np.ndarray:
        """Updates each member has taken."""
        return np.array([int(t.item()) for t in self.step_counts], dtype=np.int64)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, members: Members = None) -> torch.Tensor | None:
        """One update of ``members`` (all by default) from the parameters' ``.grad``; returns the
        members' gradient norms before clipping when ``max_grad_norm`` is set."""
        rows = list(range(self.size)) if members is None else [int(k) for k in members]
        if not rows:
            return None
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(self.size, -1)
                          for p in self.params], dim=1)
        if len(rows) < self.size:
            grad = grad[rows]
        norms = None
        if self.max_grad_norm is not None:
            norms = torch.linalg.vector_norm(grad, 2.0, dim=1, keepdim=True)
            grad.mul_(torch.clamp(self.max_grad_norm / (norms + 1e-6), max=1.0))
        self._update([self.flat[k] for k in rows], list(grad), {n: [v[k] for k in rows] for n, v in self.state.items()},
                     [self.step_counts[k] for k in rows])
        return norms

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], state: dict[str, list[torch.Tensor]],
                steps: list[torch.Tensor]) -> None:
        """torch.optim's functional update of the members' rows (each row its own tensor and step count)."""
        cfg, lr = self.cfg, self.lr
        if cfg.name == "adam":  # (the functional optimizers count the steps themselves)
            adam.adam(params, grads, state["exp_avg"], state["exp_avg_sq"], [], steps, fused=True,
                                  amsgrad=False, beta1=cfg.betas[0], beta2=cfg.betas[1], lr=lr,
                                  weight_decay=cfg.weight_decay, eps=cfg.eps, maximize=False)
        elif cfg.name == "rmsprop":
            rmsprop.rmsprop(params, grads, state["square_avg"], [], state.get("momentum_buffer", []),
                                        steps, foreach=True, lr=lr, alpha=cfg.alpha, eps=cfg.eps,
                                        weight_decay=cfg.weight_decay, momentum=cfg.momentum, centered=False)
        else:
            for t in steps:
                t += 1
            buffers: list[torch.Tensor | None] = list(state["momentum_buffer"]) if cfg.momentum != 0 else [None] * len(params)
            sgd.sgd(params, grads, buffers, foreach=True, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum, lr=lr, dampening=0.0, nesterov=cfg.nesterov, maximize=False)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": {k: v.clone() for k, v in self.state.items()}}

    def member_state(self, k: int) -> dict[str, Any]:
        """Member ``k``'s step count and state rows (for a checkpoint)."""
        return {"steps": int(self.step_counts[k].item()), "state": {n: v[k].clone() for n, v in self.state.items()}}

    def load_member(self, sd: dict[str, Any], k: int = 0) -> None:
        """Restore member ``k`` from :meth:`member_state`."""
        self.step_counts[k].fill_(float(sd["steps"]))
        for n, v in sd["state"].items():
            self.state[n][k].copy_(v)

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for t, n in zip(self.step_counts, sd["steps"], strict=True):
            t.fill_(float(n))
        for k, v in sd["state"].items():
            self.state[k].copy_(v)


def member_checkpoint(k: int, size: int, nets: Sequence[nn.Module], optimizers: Sequence[StackedOptimizer],
                      rng: np.random.Generator) -> dict[str, Any]:
    """Member ``k``'s networks, optimizer states and random generator: what every agent's checkpoint holds."""
    return {"nets": [member_state(n, k, size) for n in nets], "optimizers": [o.member_state(k) for o in optimizers],
            "rng": rng.bit_generator.state}


def load_member_checkpoint(state: dict[str, Any], nets: Sequence[nn.Module], optimizers: Sequence[StackedOptimizer],
                           rng: np.random.Generator, k: int = 0) -> None:
    """Restore member ``k`` from :func:`member_checkpoint`."""
    for n, s in zip(nets, state["nets"], strict=True):
        load_member_state(n, s, k)
    for o, s in zip(optimizers, state["optimizers"], strict=True):
        o.load_member(s, k)
    rng.bit_generator.state = state["rng"]
