"""Optimizers over stacked parameters (member axis first), with a step count per member.

Adam, RMSprop and SGD are elementwise, so one step over ``(K, ...)`` tensors is K independent
optimizers' steps; the formulas are torch.optim's (single-tensor form). What is not elementwise is
computed per member: Adam's bias correction from each member's own step count, and gradient-norm
clipping from each member's own norm. ``step(members)`` updates only the
given members (their parameters and state), as when only some have finished an episode or some
have stopped their policy updates early; the others are left exactly as they were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from rlexp.config import OptimizerConfig

Members = torch.Tensor | None  # int64 member indices, or None for all


class StackedOptimizer:
    """``optimizer.name`` over one network's stacked parameters, optionally clipping each member's
    gradient norm to ``max_grad_norm`` first; ``lr`` overrides ``cfg.lr`` (a second network's rate).

    The parameters are re-pointed at views of one ``(K, P)`` buffer (their ``.data``; the modules,
    ``state_dict`` and in-place updates all see the same numbers), so a step is a dozen tensor ops
    over that buffer, however many layers the network has.
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
        self.steps = np.zeros(size, dtype=np.int64)  # updates each member has taken
        names = {"adam": ["exp_avg", "exp_avg_sq"], "rmsprop": ["square_avg"], "sgd": []}[cfg.name]
        if cfg.momentum != 0:
            names.append("momentum_buffer")
        self.state = {name: torch.zeros_like(self.flat) for name in names}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, members: Members = None) -> torch.Tensor | None:
        """One update of ``members`` (all by default) from the parameters' ``.grad``; returns the
        members' gradient norms before clipping when ``max_grad_norm`` is set."""
        idx = members
        if idx is not None and len(idx) == self.size:
            idx = None
        if idx is not None and len(idx) == 0:
            return None
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(self.size, -1)
                          for p in self.params], dim=1)
        pick = (lambda t: t) if idx is None else (lambda t: t[idx])  # noqa: E731
        param, grad = pick(self.flat), pick(grad)
        state = {k: pick(v) for k, v in self.state.items()}
        rows = np.arange(self.size) if idx is None else idx.numpy()
        self.steps[rows] += 1
        norms = None
        if self.max_grad_norm is not None:
            norms = torch.linalg.vector_norm(grad, 2.0, dim=1, keepdim=True)
            grad.mul_(torch.clamp(self.max_grad_norm / (norms + 1e-6), max=1.0))
        self._update(param, grad, state, [int(t) for t in self.steps[rows]])
        if idx is not None:  # write the members' new values back
            self.flat[idx] = param
            for k, v in self.state.items():
                v[idx] = state[k]
        return norms

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor],
                steps: list[int]) -> None:
        """torch.optim's update on ``(members, P)`` rows; ``steps``: each row's step count."""
        cfg, lr = self.cfg, self.lr
        if cfg.weight_decay:
            grad = grad.add(param, alpha=cfg.weight_decay)
        if cfg.name == "adam":
            beta1, beta2 = cfg.betas
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # the bias corrections of each member's own step count, as torch.optim computes them
            step_size = torch.tensor([lr / (1 - beta1**t) for t in steps], device=param.device).view(-1, 1)
            bc2_sqrt = torch.tensor([math.sqrt(1 - beta2**t) for t in steps], device=param.device).view(-1, 1)
            denom = (v.sqrt() / bc2_sqrt).add_(cfg.eps)
            param.sub_(m.div(denom).mul_(step_size))
        elif cfg.name == "rmsprop":
            sq = state["square_avg"]
            sq.mul_(cfg.alpha).addcmul_(grad, grad, value=1 - cfg.alpha)
            avg = sq.sqrt().add_(cfg.eps)
            if cfg.momentum > 0:
                buf = state["momentum_buffer"]
                buf.mul_(cfg.momentum).addcdiv_(grad, avg)
                param.add_(buf, alpha=-lr)
            else:
                param.addcdiv_(grad, avg, value=-lr)
        else:
            if cfg.momentum != 0:
                buf = state["momentum_buffer"]
                buf.mul_(cfg.momentum).add_(grad)  # a zero buffer makes the first step grad itself
                grad = grad.add(buf, alpha=cfg.momentum) if cfg.nesterov else buf
            param.add_(grad, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps.copy(), "state": {k: v.clone() for k, v in self.state.items()}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.steps[:] = sd["steps"]
        for k, v in sd["state"].items():
            self.state[k].copy_(v)
