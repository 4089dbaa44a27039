"""PPO-Clip (seed 004, after Keras' ppo_cartpole and Spinning Up) with separate actor and critic.

Per epoch (one rollout of ``n_steps`` per env), for each member on its own data:

- advantages ``A`` by GAE(lambda), standardised over the member's rollout;
- value targets: the discounted reward-to-go, bootstrapped where the rollout or a truncation cut an
  episode (``value_target=reward_to_go``, the seed), or the lambda-return ``A + V``
  (``value_target=lambda``, as SB3);
- up to ``train_pi_iters`` passes over the rollout maximising
  ``mean(min(r A, clip(r, 1 - eps, 1 + eps) A))``, ``r = pi(a|s) / pi_old(a|s)``, split into
  ``n_minibatches`` gradient steps per pass; before each step the approximate KL
  ``mean(log pi_old - log pi)`` on that batch is checked and the member's policy phase stops once
  it exceeds ``1.5 * target_kl`` (its actor is left as it is; the others go on). With one
  minibatch this is exactly the seed's "step, measure, stop";
- ``train_v_iters`` passes of MSE regression of the critic on the value targets.

Every tensor has the member axis first (``rlexp.nets``): K seeds train at once, each with its own
initialisation, action and minibatch generator, and optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.config import OptimizerConfig, PPOConfig
from rlexp.envs import EnvSpec
from rlexp.metrics import Counters, Metrics
from rlexp.nets import MLP, generators
from rlexp.optim import StackedOptimizer, load_member_checkpoint, member_checkpoint
from rlexp.pg import (
    MemberRandom,
    Rollout,
    categorical_entropy,
    categorical_log_prob,
    discounted_returns,
    gae,
    per_member,
    standardize,
    take,
)


def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                      clip_ratio: float, bound: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-Clip loss ``-mean(min(r A, clip(r, 1 - eps, 1 + eps) A))`` and the fraction of clipped
    ratios, each a mean over the last axis (per member for ``(K, B)`` inputs).

    Computed in the seed's form ``min(r A, g(A))`` with ``g(A) = (1 + eps) A`` where ``A > 0`` and
    ``(1 - eps) A`` elsewhere: the same function (the clip only binds on the side that would raise
    the objective) in fewer ops. ``bound = g(A)`` may be passed precomputed.
    """
    ratio = torch.exp(log_probs - old_log_probs)
    if bound is None:
        bound = torch.where(advantages > 0, (1.0 + clip_ratio) * advantages, (1.0 - clip_ratio) * advantages)
    loss = -torch.minimum(ratio * advantages, bound).mean(-1)
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip_ratio).float().mean(-1)
    return loss, clip_fraction


class PPOAgent:
    """Softmax actor MLP and value MLP of K members, each network with its own optimizer (and lr)."""

    def __init__(self, cfg: PPOConfig, spec: EnvSpec, opt_cfg: OptimizerConfig, seeds: Sequence[int],
                 device: torch.device) -> None:
        self.cfg, self.size, self.device = cfg, len(seeds), device
        gens = generators(seeds)
        self.actor = MLP(spec.obs_dim, cfg.hidden, spec.n_actions, gens, cfg.activation).to(device)
        self.critic = MLP(spec.obs_dim, cfg.hidden, 1, gens, cfg.activation).to(device)
        # two optimizers: a member's policy stops at its KL limit while its critic goes on
        self.pi_optimizer = StackedOptimizer(self.actor.parameters(), opt_cfg, self.size,
                                             max_grad_norm=cfg.max_grad_norm)
        self.v_optimizer = StackedOptimizer(self.critic.parameters(), opt_cfg, self.size, lr=cfg.value_lr,
                                            max_grad_norm=cfg.max_grad_norm)
        self.random = MemberRandom(seeds)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.as_tensor(obs, device=self.device)
        actions, logp = self.random.sample(self.actor(x))
        return actions.cpu().numpy(), logp.cpu().numpy(), self.critic(x).squeeze(-1).cpu().numpy()

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Each member's most probable action for ``(K, B, obs_dim)`` observations: ``(K, B)``."""
        return self.actor(torch.as_tensor(obs, dtype=torch.float32, device=self.device)).argmax(-1).cpu().numpy()

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.critic(torch.as_tensor(obs, device=self.device)).squeeze(-1).cpu().numpy()

    def _minibatches(self, members: torch.Tensor, n: int) -> list[torch.Tensor | None]:
        """Each member's minibatches, ``(K, n / n_minibatches)`` indices from its own generator."""
        k = self.cfg.n_minibatches
        if k == 1:
            return [None]  # the whole batch, no gather
        return list(self.random.permutations(members, n).to(self.device).tensor_split(k, dim=1))

    def update(self, ro: Rollout, members: torch.Tensor, counters: Counters) -> Metrics:
        cfg = self.cfg
        adv, lam_returns = gae(ro.rewards, ro.values, ro.next_values, ro.terminated, ro.dones,
                               cfg.gamma, cfg.gae_lambda)
        if cfg.value_target == "lambda":
            returns = lam_returns
        else:
            returns = discounted_returns(ro.rewards, ro.next_values, ro.terminated, ro.dones, cfg.gamma)
        obs, actions, old_logp, adv, returns = (per_member(x).to(self.device) for x in
                                                (ro.obs, ro.actions, ro.log_probs, adv, returns))
        if cfg.normalize_advantages:
            adv = standardize(adv, dim=-1)
        k, n = adv.shape
        idx = members.to(self.device)
        bound = torch.where(adv > 0, (1.0 + cfg.clip_ratio) * adv, (1.0 - cfg.clip_ratio) * adv)
        with torch.no_grad():  # the entropy of the rollout's policy, for the record
            entropy = categorical_entropy(self.actor(obs, idx)).mean(-1)

        # The policy and value passes run side by side on the same minibatches: the networks are
        # disjoint, so one backward through both losses gives each its own gradient. A member's
        # policy stops after train_pi_iters passes or at its KL limit, the critics after train_v_iters.
        live = torch.ones(k, dtype=torch.bool, device=self.device)  # members whose policy still learns
        kl = torch.zeros(k, device=self.device)  # each member's last measured approximate KL
        pi_steps, pi_loss, clip = (torch.zeros(k, device=self.device) for _ in range(3))
        v_losses: list[torch.Tensor] = []
        for it in range(max(cfg.train_pi_iters, cfg.train_v_iters)):
            if it == cfg.train_pi_iters:
                live[:] = False
            v_on = it < cfg.train_v_iters
            if not (v_on or live.any()):
                break
            for mb in self._minibatches(members, n):
                terms: list[torch.Tensor] = []
                stepping = None
                if live.any():
                    o, a, lp_old, ad, bd = ((obs, actions, old_logp, adv, bound) if mb is None else
                                            (take(x, mb) for x in (obs, actions, old_logp, adv, bound)))
                    logits = self.actor(o, idx)
                    logp = categorical_log_prob(logits, a)
                    kl_mb = (lp_old - logp).mean(-1).detach()
                    kl = torch.where(live, kl_mb, kl)
                    if cfg.target_kl is not None:
                        live &= ~(kl_mb > 1.5 * cfg.target_kl)
                    if live.any():
                        loss, clip_frac = clipped_surrogate(logp, lp_old, ad, cfg.clip_ratio, bd)
                        if cfg.ent_coef:
                            loss = loss - cfg.ent_coef * categorical_entropy(logits).mean(-1)
                        terms.append(loss[live].sum())  # the stopped members' gradients stay unused
                        pi_steps += live
                        pi_loss += torch.where(live, loss.detach(), 0.0)
                        clip += torch.where(live, clip_frac, 0.0)
                        stepping = members[live.cpu()]
                if v_on:
                    o, ret = (obs, returns) if mb is None else (take(obs, mb), take(returns, mb))
                    v_loss = F.mse_loss(self.critic(o, idx).squeeze(-1), ret, reduction="none").mean(-1)
                    terms.append(v_loss.sum())
                    v_losses.append(v_loss.detach())
                if not terms:
                    break
                self.pi_optimizer.zero_grad()
                self.v_optimizer.zero_grad()
                sum(terms).backward()  # type: ignore[union-attr]
                if stepping is not None:
                    self.pi_optimizer.step(stepping)
                if v_on:
                    self.v_optimizer.step(members)

        steps = pi_steps.clamp(min=1)  # a member without a policy step reports 0 loss and clipping
        out = {"train/approx_kl": kl, "train/pi_iters": pi_steps / cfg.n_minibatches, "train/entropy": entropy,
               "train/policy_loss": pi_loss / steps, "train/clip_fraction": clip / steps}
        if v_losses:
            out["train/value_loss"] = torch.stack(v_losses).mean(0)
        return {key: v.cpu().numpy() for key, v in out.items()}

    def member_state(self, k: int) -> dict[str, Any]:
        """Everything member ``k`` needs to continue exactly (a checkpoint)."""
        return member_checkpoint(k, self.size, [self.actor, self.critic], [self.pi_optimizer, self.v_optimizer], self.random.rngs[k])

    def load_member(self, state: dict[str, Any], k: int = 0) -> None:
        load_member_checkpoint(state, [self.actor, self.critic], [self.pi_optimizer, self.v_optimizer], self.random.rngs[k], k)

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "actor", self.actor
        yield "critic", self.critic
