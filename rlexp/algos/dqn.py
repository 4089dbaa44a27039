"""The DQN family in one module: plain, target-network, double, clipped double and dueling DQN.

The variants differ by a formula, so they are flags on one agent (see ``DQNConfig``):

- target: ``y = r + gamma * (1 - terminated) * max_a' Q_tgt(s', a')`` with ``Q_tgt`` the online net
  itself (``target_update=none``), a hard copy every N env steps, or a soft (tau) average;
- double: ``a* = argmax_a' Q(s', a')`` from the online net, evaluated by the target net;
- clipped: two online nets, both trained on ``y = r + gamma * min(max Q1(s'), max Q2(s'))``;
- dueling: ``Q = V + A - mean_a A`` with the mean per state;
- blending (seed Q-agent): regress on ``q + alpha * (y - q)`` instead of ``y``.

Truncated transitions are stored as non-terminal and bootstrap like any other.

The clipped form's two Q-networks (and their targets) are trained as one ``StackedMLP`` when they
are plain ReLU/Tanh MLPs: one batched pass for both instead of one per network, 1.2-1.3x the env
steps per second at batch 64-256 (benchmarks/results/clipped-pair-*.md) and the same parameters
bit for bit (tests/test_fastpaths.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.buffer import Batch
from rlexp.config import DQNConfig, OptimizerConfig
from rlexp.envs import EnvSpec
from rlexp.loops import Counters
from rlexp.nets import ManualMLP, NumpyForward, StackedMLP, mlp, out_features
from rlexp.optim import make_optimizer
from rlexp.schedules import epsilon


class QNetwork(nn.Module):
    """MLP Q-function; with ``dueling`` the trunk feeds a value and an advantage head."""

    def __init__(self, obs_dim: int, n_actions: int, cfg: DQNConfig) -> None:
        super().__init__()
        self.dueling = cfg.dueling
        if cfg.dueling:
            self.trunk = mlp(obs_dim, cfg.hidden, None, cfg.activation, cfg.layer_norm)
            width = out_features(self.trunk, obs_dim)
            self.value = mlp(width, [cfg.dueling_hidden], 1, cfg.activation)
            self.advantage = mlp(width, [cfg.dueling_hidden], n_actions, cfg.activation)
        else:
            self.q = mlp(obs_dim, cfg.hidden, n_actions, cfg.activation, cfg.layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.q(obs)
        h = self.trunk(obs)
        adv = self.advantage(h)
        return self.value(h) + adv - adv.mean(dim=1, keepdim=True)

    def mlps(self) -> tuple[nn.Sequential, ...]:
        """Its MLPs: ``(q,)``, or dueling ``(trunk, value, advantage)``."""
        return (self.trunk, self.value, self.advantage) if self.dueling else (self.q,)


class ManualQ:
    """A QNetwork's batch forward pass and hand-written backward (see ``ManualMLP``), plain or dueling.

    Dueling: ``Q = V + A - mean_a A``, so ``dV = sum_a dQ`` and ``dA = dQ - mean_a dQ``, and the
    trunk gets the sum of both heads' input gradients.
    """

    def __init__(self, q: QNetwork) -> None:
        self.dueling = q.dueling
        self.parts = [ManualMLP(m) for m in q.mlps()]

    @staticmethod
    def supported(q: QNetwork) -> bool:
        return all(ManualMLP.supported(m) for m in q.mlps())

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        if not self.dueling:
            out, saved = self.parts[0].forward(obs)
            return out, [saved]
        trunk, value, advantage = self.parts
        h, st = trunk.forward(obs)
        v, sv = value.forward(h)
        a, sa = advantage.forward(h)
        return v + a - a.mean(dim=1, keepdim=True), [st, sv, sa]

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return self.forward(obs)[0]

    def backward(self, saved: list[list[torch.Tensor]], grad_out: torch.Tensor) -> None:
        if not self.dueling:
            self.parts[0].backward(saved[0], grad_out)
            return
        trunk, value, advantage = self.parts
        dv = value.backward(saved[1], grad_out.sum(dim=1, keepdim=True), input_grad=True)
        da = advantage.backward(saved[2], grad_out - grad_out.mean(dim=1, keepdim=True), input_grad=True)
        assert dv is not None and da is not None
        trunk.backward(saved[0], dv.add_(da))


class GreedyPolicy:
    """argmax_a Q(s, a) for one observation, in numpy when the network allows it (see NumpyForward,
    whose copies and unpickled instances rebuild their views of the copied network)."""

    def __init__(self, q: QNetwork) -> None:
        self.q = q
        self.plain: NumpyForward | None = None
        self.heads: tuple[NumpyForward, NumpyForward, NumpyForward] | None = None
        if all(NumpyForward.supported(m) for m in q.mlps()):
            if q.dueling:
                self.heads = (NumpyForward(q.trunk), NumpyForward(q.value), NumpyForward(q.advantage))
            else:
                self.plain = NumpyForward(q.q)

    @property
    def fast(self) -> bool:
        return self.plain is not None or self.heads is not None

    def __call__(self, obs: np.ndarray) -> int:
        if self.plain is not None:
            return int(self.plain(obs).argmax())
        if self.heads is not None:  # one observation: the mean over its actions
            trunk, value, advantage = self.heads
            h = trunk(obs)
            a = advantage(h)
            return int((value(h) + a - a.mean()).argmax())
        with torch.no_grad():
            return int(self.q(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).argmax())


QFunction = Callable[[torch.Tensor], torch.Tensor]  # a QNetwork, or its ManualQ


def td_target(cfg: DQNConfig, batch: Batch, online: QFunction, target: QFunction,
              second: QFunction | None = None) -> torch.Tensor:
    """The bootstrapped target ``r + gamma * (1 - terminated) * next_value`` (no gradient).

    ``second`` is the other network of the clipped form; ``target`` is ``online`` when there is no
    target network. ``terminal_reward`` replaces the reward of terminating transitions.
    """
    with torch.no_grad():
        q_next = target(batch.next_obs)
        if cfg.clipped:
            assert second is not None
            next_v = torch.minimum(q_next.max(dim=1).values, second(batch.next_obs).max(dim=1).values)
        elif cfg.double:
            a_star = online(batch.next_obs).argmax(dim=1, keepdim=True)
            next_v = q_next.gather(1, a_star).squeeze(1)
        else:
            next_v = q_next.max(dim=1).values
        return bootstrap(cfg, batch, next_v)


def bootstrap(cfg: DQNConfig, batch: Batch, next_v: torch.Tensor) -> torch.Tensor:
    """``r + gamma * (1 - terminated) * next_v``, with ``terminal_reward`` (when set) as the reward
    of terminating transitions."""
    rewards = batch.rewards
    if cfg.terminal_reward is not None:
        rewards = torch.where(batch.terminated > 0, torch.full_like(rewards, cfg.terminal_reward), rewards)
    return rewards + cfg.gamma * (1.0 - batch.terminated) * next_v


def loss_grad(cfg: DQNConfig, diff: torch.Tensor) -> torch.Tensor:
    """d loss / d Q(s, a) from ``diff = q - goal`` over the last dimension's ``n`` samples:
    ``clamp(diff, -1, 1) / n`` (Huber, delta 1) or ``2 diff / n`` (MSE)."""
    n = diff.shape[-1]
    return diff.clamp(-1.0, 1.0).div_(n) if cfg.loss == "huber" else diff.mul(2.0 / n)


def update_metrics(q_means: list[torch.Tensor], losses: list[float]) -> dict[str, float]:
    """An update's metrics: the first net's mean Q, and each net's loss (``train/loss``,
    ``train/loss2``, ...)."""
    out = {"train/q_mean": torch.stack(q_means).mean().item()}
    for i, v in enumerate(losses):
        out["train/loss" if i == 0 else f"train/loss{i + 1}"] = v
    return out


class DQNAgent:
    """Epsilon-greedy agent over one (or, clipped, two) Q-networks."""

    stack_clipped = True  # run the clipped form's two nets as one StackedMLP where they allow it

    def __setstate__(self, state: dict[str, object]) -> None:
        """A copy or an unpickled agent: its nets point at its own stacks again, and acts with them."""
        self.__dict__.update(state)
        for stack in (self.pair, self.pair_targets):
            if stack is not None:
                stack.rebind()
        self._greedy = GreedyPolicy(self.q)

    def __init__(self, cfg: DQNConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seed: int) -> None:
        self.cfg = cfg
        self.n_actions = spec.n_actions
        self.rng = np.random.default_rng(seed + 1)
        self.q = QNetwork(spec.obs_dim, spec.n_actions, cfg)
        self.q_nets: list[QNetwork] = [self.q]
        if cfg.clipped:
            self.q_nets.append(QNetwork(spec.obs_dim, spec.n_actions, cfg))
        self.nets: list[nn.Module] = list(self.q_nets)
        self.targets: list[QNetwork] = []
        if cfg.target_update != "none":
            self.targets = [copy.deepcopy(n).requires_grad_(False) for n in self.q_nets]
        # clipped: the two Q-nets (and their targets) as one stacked MLP, half the kernel calls per
        # update and the same numbers; its stacks are then the tensors the optimizer and syncs see
        self.pair: StackedMLP | None = None
        self.pair_targets: StackedMLP | None = None
        if cfg.clipped and self.stack_clipped and not cfg.dueling and StackedMLP.supported(self.q.q):
            self.pair = StackedMLP([n.q for n in self.q_nets])
            self.pair_targets = StackedMLP([t.q for t in self.targets]) if self.targets else None
            self.params: list[list[torch.Tensor]] = [list(self.pair.params)]
            self.target_params: list[list[torch.Tensor]] = [list(self.pair_targets.params)] if self.pair_targets else []
        else:
            self.params = [list(n.parameters()) for n in self.nets]
            self.target_params = [list(n.parameters()) for n in self.targets]
        self.optimizers = [make_optimizer(p, opt_cfg) for p in self.params]
        self._greedy = GreedyPolicy(self.q)
        # hand-written backward (autograd's gradients with less overhead) for ReLU/Tanh MLP Q-nets
        self.manual: list[ManualQ] | None = None
        self.manual_targets: list[ManualQ] = []
        if all(ManualQ.supported(n) for n in self.q_nets):
            self.manual = [ManualQ(n) for n in self.q_nets]
            self.manual_targets = [ManualQ(t) for t in self.targets]
        self.updates = 0
        self._last_sync = 0
        self.eps = cfg.exploration.start

    # ------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, counters: Counters) -> int:
        self.eps = epsilon(self.cfg.exploration, counters.step, counters.episode, self.updates)
        if self.rng.random() < self.eps:
            return int(self.rng.integers(self.n_actions))
        return self.greedy(obs)

    def greedy(self, obs: np.ndarray) -> int:
        return self._greedy(obs)

    def on_episode_start(self) -> None:
        pass

    # ------------------------------------------------------------------ learning
    def update(self, batch: Batch, counters: Counters) -> dict[str, float]:
        """One gradient step on ``batch`` (see :meth:`update_batches`)."""
        return self.update_batches([batch], counters)

    def update_batches(self, batches: Sequence[Batch], counters: Counters) -> dict[str, float]:
        """One gradient step per minibatch; returns the metrics averaged over them.

        A due hard copy of the target network happens first (it is scheduled in env steps, which
        do not advance during the minibatches). When the targets cannot change during the
        minibatches (hard copy, single or clipped form, not double) the TD targets of all
        of them are computed in one forward pass of the target network(s) instead of one per step.
        """
        cfg = self.cfg
        self._hard_sync(counters.step)
        if self.pair is not None:
            return self._pair_update(batches)
        # the same networks, called without autograd's module overhead when the manual path applies
        nets: Sequence[QFunction] = self.nets
        targets: Sequence[QFunction] = self.targets
        if self.manual is not None:
            nets, targets = self.manual, self.manual_targets
        targets = targets or nets  # no target network: the online nets bootstrap from themselves
        second = targets[1] if cfg.clipped else None

        def target_of(b: Batch) -> torch.Tensor:
            return td_target(cfg, b, nets[0], targets[0], second)

        ys = self._fixed_targets(batches, target_of)
        losses: list[list[torch.Tensor]] = [[] for _ in self.nets]
        q_means: list[torch.Tensor] = []
        for k, batch in enumerate(batches):
            y = ys[k] if ys is not None else target_of(batch)
            for i, (net, opt) in enumerate(zip(self.nets, self.optimizers, strict=True)):
                if self.manual is not None:
                    q, loss = self._manual_grad(self.manual[i], batch, y)
                else:
                    q = net(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
                    goal = y if cfg.target_alpha == 1.0 else q.detach() + cfg.target_alpha * (y - q.detach())
                    loss = F.smooth_l1_loss(q, goal) if cfg.loss == "huber" else F.mse_loss(q, goal)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.params[i], cfg.max_grad_norm, foreach=True)
                opt.step()
                losses[i].append(loss.detach())
                if i == 0:
                    q_means.append(q.detach().mean())
            self.updates += 1
            self._soft_sync()
        return update_metrics(q_means, [torch.stack(ls).mean().item() for ls in losses])

    def _fixed_targets(self, batches: Sequence[Batch],
                       target_of: Callable[[Batch], torch.Tensor]) -> Sequence[torch.Tensor] | None:
        """Every minibatch's TD target from one pass over them joined, when the targets cannot
        change during the minibatches (hard copy, not double); None when each is computed in turn."""
        if not (self.cfg.target_update == "hard" and not self.cfg.double and len(batches) > 1):
            return None
        joined = Batch(*(torch.cat(parts) for parts in zip(*batches, strict=True)))
        return target_of(joined).split(len(batches[0].rewards))

    @torch.no_grad()
    def _pair_update(self, batches: Sequence[Batch]) -> dict[str, float]:
        """The clipped form's update with its two nets (and targets) stacked: per minibatch one
        target pass for both target nets, one forward and backward for both online nets, one
        optimizer step; the same numbers as the per-net path (tested)."""
        cfg, pair = self.cfg, self.pair
        assert pair is not None
        targets = self.pair_targets or pair

        def target_of(b: Batch) -> torch.Tensor:  # td_target's clipped form from the stacked targets
            best = targets.forward(b.next_obs)[0].max(dim=2).values
            return bootstrap(cfg, b, torch.minimum(best[0], best[1]))

        ys = self._fixed_targets(batches, target_of)
        losses, q_means = [], []
        for k, batch in enumerate(batches):
            y = ys[k] if ys is not None else target_of(batch)
            out, saved = pair.forward(batch.obs)
            idx = batch.actions.view(1, -1, 1).expand(out.shape[0], -1, 1)
            q = out.gather(2, idx).squeeze(2)
            goal = y.expand_as(q) if cfg.target_alpha == 1.0 else q + cfg.target_alpha * (y - q)
            loss_fn = F.smooth_l1_loss if cfg.loss == "huber" else F.mse_loss
            loss = loss_fn(q, goal, reduction="none").mean(dim=1)
            grad_q = loss_grad(cfg, q - goal)
            pair.backward(saved, torch.zeros_like(out).scatter_(2, idx, grad_q.unsqueeze(2)))
            if cfg.max_grad_norm is not None:
                pair.clip_grad_norm_(cfg.max_grad_norm)
            self.optimizers[0].step()
            losses.append(loss)
            q_means.append(q[0].mean())
            self.updates += 1
            self._soft_sync()
        return update_metrics(q_means, torch.stack(losses).mean(dim=0).tolist())

    @torch.no_grad()
    def _manual_grad(self, net: ManualQ, batch: Batch, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one minibatch and its gradients in ``.grad``, without autograd: the
        gradient wrt Q(s, a) (:func:`loss_grad`) scattered into the taken actions' column."""
        out, saved = net.forward(batch.obs)
        idx = batch.actions.unsqueeze(1)
        q = out.gather(1, idx).squeeze(1)
        goal = y if self.cfg.target_alpha == 1.0 else q + self.cfg.target_alpha * (y - q)
        loss = F.smooth_l1_loss(q, goal) if self.cfg.loss == "huber" else F.mse_loss(q, goal)
        grad_q = loss_grad(self.cfg, q - goal)
        net.backward(saved, torch.zeros_like(out).scatter_(1, idx, grad_q.unsqueeze(1)))
        return q, loss

    def _soft_sync(self) -> None:
        if self.cfg.target_update == "soft":
            with torch.no_grad():
                for tgt, net in zip(self.target_params, self.params, strict=True):
                    torch._foreach_lerp_(tgt, net, self.cfg.tau)

    def _hard_sync(self, step: int) -> None:
        if self.cfg.target_update == "hard" and step - self._last_sync >= self.cfg.target_update_interval:
            self._last_sync = step
            with torch.no_grad():
                for tgt, net in zip(self.target_params, self.params, strict=True):
                    torch._foreach_copy_(tgt, net)

    def diagnostics(self) -> dict[str, float]:
        return {"train/epsilon": self.eps, "train/updates": float(self.updates)}

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        for i, n in enumerate(self.nets):
            yield ("q" if i == 0 else f"q{i + 1}"), n
