"""PPO-Clip (seed 004, after Keras' ppo_cartpole and Spinning Up) with separate actor and critic.

Per epoch (one rollout of ``n_steps`` per env):

- advantages ``A`` by GAE(lambda), standardised over the rollout;
- value targets: the discounted reward-to-go, bootstrapped where the rollout or a truncation cut an
  episode (``value_target=reward_to_go``, the seed), or the lambda-return ``A + V``
  (``value_target=lambda``, as SB3);
- up to ``train_pi_iters`` passes over the rollout maximising
  ``mean(min(r A, clip(r, 1 - eps, 1 + eps) A))``, ``r = pi(a|s) / pi_old(a|s)``, split into
  ``n_minibatches`` gradient steps per pass; before each step the approximate KL
  ``mean(log pi_old - log pi)`` on that batch is checked and the policy phase stops once it exceeds
  ``1.5 * target_kl``. With one minibatch this is exactly the seed's "step, measure, stop";
- ``train_v_iters`` passes of MSE regression of the critic on the value targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlexp.config import OptimizerConfig, PPOConfig
from rlexp.envs import EnvSpec
from rlexp.loops import Counters
from rlexp.nets import mlp
from rlexp.onpolicy import (
    Rollout,
    categorical_entropy,
    categorical_log_prob,
    discounted_returns,
    gae,
    sample_categorical,
    standardize,
)
from rlexp.optim import make_optimizer


def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                      clip_ratio: float, bound: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-Clip loss ``-mean(min(r A, clip(r, 1 - eps, 1 + eps) A))`` and the fraction of clipped ratios.

    Computed in the seed's form ``min(r A, g(A))`` with ``g(A) = (1 + eps) A`` where ``A > 0`` and
    ``(1 - eps) A`` elsewhere: the same function (the clip only binds on the side that would raise
    the objective) in fewer ops. ``bound = g(A)`` may be passed precomputed.
    """
    ratio = torch.exp(log_probs - old_log_probs)
    if bound is None:
        bound = torch.where(advantages > 0, (1.0 + clip_ratio) * advantages, (1.0 - clip_ratio) * advantages)
    loss = -torch.minimum(ratio * advantages, bound).mean()
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip_ratio).float().mean()
    return loss, clip_fraction


class PPOAgent:
    """Softmax actor MLP and value MLP; one optimizer with a parameter group (and lr) for each."""

    def __init__(self, cfg: PPOConfig, spec: EnvSpec, opt_cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        self.actor = mlp(spec.obs_dim, cfg.hidden, spec.n_actions, cfg.activation)
        self.critic = mlp(spec.obs_dim, cfg.hidden, 1, cfg.activation)
        self.pi_params, self.v_params = list(self.actor.parameters()), list(self.critic.parameters())
        # one optimizer, two groups: one step() per minibatch; a group whose gradients are None (the
        # policy after its early stop) is left untouched, as if it had its own optimizer
        groups = [{"params": self.pi_params}, {"params": self.v_params, "lr": cfg.value_lr}]
        self.optimizer = make_optimizer(cast(list[nn.Parameter], groups), opt_cfg)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(obs)
        actions, logp = sample_categorical(self.actor(x))
        return actions.numpy(), logp.numpy(), self.critic(x).squeeze(-1).numpy()

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.critic(torch.from_numpy(obs)).squeeze(-1).numpy()

    def _minibatches(self, n: int) -> list[torch.Tensor | None]:
        k = self.cfg.n_minibatches
        if k == 1:
            return [None]  # the whole batch, no gather
        return list(torch.randperm(n).tensor_split(k))

    def update(self, ro: Rollout, counters: Counters) -> dict[str, float]:
        cfg = self.cfg
        adv, lam_returns = gae(ro.rewards, ro.values, ro.next_values, ro.terminated, ro.dones,
                               cfg.gamma, cfg.gae_lambda)
        if cfg.value_target == "lambda":
            returns = lam_returns
        else:
            returns = discounted_returns(ro.rewards, ro.next_values, ro.terminated, ro.dones, cfg.gamma)
        obs, actions, old_logp = ro.obs.flatten(0, 1), ro.actions.flatten(), ro.log_probs.flatten()
        adv, returns = adv.flatten(), returns.flatten()
        if cfg.normalize_advantages:
            adv = standardize(adv)
        n = len(obs)
        bound = torch.where(adv > 0, (1.0 + cfg.clip_ratio) * adv, (1.0 - cfg.clip_ratio) * adv)
        with torch.no_grad():  # the entropy of the rollout's policy, for the record
            entropy = categorical_entropy(self.actor(obs)).mean().item()

        # The policy and value passes run side by side on the same minibatches: the networks are
        # disjoint, so one backward through both losses gives each its own gradient. The policy
        # stops after train_pi_iters passes or at the KL limit, the critic after train_v_iters.
        pi_steps, pi_done, kl = 0, False, torch.zeros(())
        pi_stats: list[torch.Tensor] = []  # (loss, clip fraction) per policy step
        v_losses: list[torch.Tensor] = []
        for it in range(max(cfg.train_pi_iters, cfg.train_v_iters)):
            pi_on = not pi_done and it < cfg.train_pi_iters
            v_on = it < cfg.train_v_iters
            if not (pi_on or v_on):
                break
            for idx in self._minibatches(n):
                terms: list[torch.Tensor] = []
                pi_step = False
                if pi_on and not pi_done:
                    o, a, lp_old, ad, bd = ((obs, actions, old_logp, adv, bound) if idx is None else
                                            (obs[idx], actions[idx], old_logp[idx], adv[idx], bound[idx]))
                    logits = self.actor(o)
                    logp = categorical_log_prob(logits, a)
                    kl = (lp_old - logp).mean().detach()
                    if cfg.target_kl is not None and kl.item() > 1.5 * cfg.target_kl:
                        pi_done = True
                    else:
                        pi_loss, clip_frac = clipped_surrogate(logp, lp_old, ad, cfg.clip_ratio, bd)
                        if cfg.ent_coef:
                            pi_loss = pi_loss - cfg.ent_coef * categorical_entropy(logits).mean()
                        terms.append(pi_loss)
                        pi_stats.append(torch.stack([pi_loss.detach(), clip_frac]))
                        pi_step = True
                if v_on:
                    o, ret = (obs, returns) if idx is None else (obs[idx], returns[idx])
                    v_loss = F.mse_loss(self.critic(o).squeeze(-1), ret)
                    terms.append(v_loss)
                    v_losses.append(v_loss.detach())
                if not terms:
                    break
                self.optimizer.zero_grad(set_to_none=True)
                sum(terms).backward()  # type: ignore[union-attr]
                if cfg.max_grad_norm is not None:  # each network's gradient norm on its own
                    if pi_step:
                        nn.utils.clip_grad_norm_(self.pi_params, cfg.max_grad_norm, foreach=True)
                    if v_on:
                        nn.utils.clip_grad_norm_(self.v_params, cfg.max_grad_norm, foreach=True)
                self.optimizer.step()
                pi_steps += pi_step

        out = {"train/approx_kl": kl.item(), "train/pi_iters": pi_steps / cfg.n_minibatches,
               "train/entropy": entropy}
        if v_losses:
            out["train/value_loss"] = torch.stack(v_losses).mean().item()
        if pi_stats:
            loss, clip = torch.stack(pi_stats).mean(0).tolist()
            out |= {"train/policy_loss": loss, "train/clip_fraction": clip}
        return out

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "actor", self.actor
        yield "critic", self.critic
