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
    categorical_log_prob,
    discounted_returns,
    gae,
    sample_categorical,
    standardize,
)
from rlexp.optim import make_optimizer


def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                      clip_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-Clip loss ``-mean(min(r A, clip(r) A))`` and the fraction of clipped ratios."""
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = -torch.minimum(ratio * advantages, clipped * advantages).mean()
    clip_fraction = ((ratio - 1.0).abs() > clip_ratio).float().mean()
    return loss, clip_fraction


class PPOAgent:
    """Softmax actor MLP and value MLP, each with its own optimizer."""

    def __init__(self, cfg: PPOConfig, spec: EnvSpec, opt_cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        self.actor = mlp(spec.obs_dim, cfg.hidden, spec.n_actions, cfg.activation)
        self.critic = mlp(spec.obs_dim, cfg.hidden, 1, cfg.activation)
        self.pi_optimizer = make_optimizer(self.actor.parameters(), opt_cfg)
        self.v_optimizer = make_optimizer(self.critic.parameters(), opt_cfg, lr=cfg.value_lr)

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

        steps, kl, stop = 0, 0.0, False
        pi_losses, clip_fracs, entropies = [], [], []
        for _ in range(cfg.train_pi_iters):
            for idx in self._minibatches(n):
                o, a, lp_old, ad = ((obs, actions, old_logp, adv) if idx is None else
                                    (obs[idx], actions[idx], old_logp[idx], adv[idx]))
                logp, entropy = categorical_log_prob(self.actor(o), a)
                kl = (lp_old - logp).mean().item()
                if cfg.target_kl is not None and kl > 1.5 * cfg.target_kl:
                    stop = True
                    break
                loss, clip_frac = clipped_surrogate(logp, lp_old, ad, cfg.clip_ratio)
                ent = entropy.mean()
                if cfg.ent_coef:
                    loss = loss - cfg.ent_coef * ent
                self.pi_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm, foreach=True)
                self.pi_optimizer.step()
                steps += 1
                pi_losses.append(loss.item())
                clip_fracs.append(clip_frac.item())
                entropies.append(ent.item())
            if stop:
                break

        v_losses = []
        for _ in range(cfg.train_v_iters):
            for idx in self._minibatches(n):
                o, ret = (obs, returns) if idx is None else (obs[idx], returns[idx])
                v_loss = F.mse_loss(self.critic(o).squeeze(-1), ret)
                self.v_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm, foreach=True)
                self.v_optimizer.step()
                v_losses.append(v_loss.item())

        out = {"train/value_loss": float(np.mean(v_losses)), "train/approx_kl": kl,
               "train/pi_iters": steps / cfg.n_minibatches}
        if steps:
            out |= {"train/policy_loss": float(np.mean(pi_losses)), "train/entropy": float(np.mean(entropies)),
                    "train/clip_fraction": float(np.mean(clip_fracs))}
        return out

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield "actor", self.actor
        yield "critic", self.critic
