"""The correspondence policy: categorical over the encoder tokens of the same image.

``pi(j | i) = softmax_j(cos(mu_i, y_j) / tau)``. The reward of choosing target ``j`` for token ``i``
comes from the token-level heads (semantic coherence ``cos(y_i, y_j)``, 1 for ``j = i``).
Advantages are group-normalised over the ``N`` candidates with moments taken exactly under ``pi``,
and the surrogate is averaged over the candidates weighted by ``pi_old``: the exact expectation of
the sampled estimator, so there is no sampling variance.
"""

from __future__ import annotations

import torch

from ..config import VRPOConfig
from ..functional import (
    candidate_advantage,
    correspondence_logits,
    correspondence_objective,
    signal_fraction,
    with_gradient,
)
from .base import Metrics, Objective, Policy, weighted_rewards

__all__ = ["CorrespondencePolicy"]


class CorrespondencePolicy(Policy):
    """Categorical policy over the encoder tokens of the same image: ``softmax_j(cos(mu_i, y_j) / tau)``.

    Args:
        config: reads ``tau``, ``adv_scale``, ``adv_eps``, ``adv_clip``.
    """

    def __init__(self, *, config: VRPOConfig):
        super().__init__()
        self.config = config

    @classmethod
    def from_config(cls, cfg: VRPOConfig) -> "CorrespondencePolicy":
        return cls(config=cfg)

    def objective(self, mu, ctx, heads, *, anchor_coeff, policy_coeff, diagnostics, metrics) -> Objective:
        """Anchor and policy term with their gradient on ``mu`` in closed form (one fused pass, no autograd graph).

        One bmm gives the logits and the anchor's cosines (its diagonal); value and gradient equal the
        surrogate and REPA's term through autograd (``tests/reference.py``). The policy gradient is at
        hand, so the signal-fraction diagnostic costs no extra matmul.
        """
        cfg = self.config
        y = ctx.targets.detach() if ctx.targets.requires_grad else ctx.targets
        need_grad = mu.requires_grad and torch.is_grad_enabled()
        with torch.no_grad():
            u, norm, clamped, cos = correspondence_logits(mu, y)
            logits = cos / cfg.tau
            probs = torch.softmax(logits, dim=-1)
            r, each = weighted_rewards(heads, lambda h: h.candidate_reward(ctx))
            mean = (probs * r).sum(-1, keepdim=True)
            adv, zero_std = candidate_advantage(r, probs, scale=cfg.adv_scale, eps=cfg.adv_eps, clip=cfg.adv_clip, mean=mean)
            value, anchor, policy, g_mu, g_pol = correspondence_objective(
                probs, adv, cos, y, u, norm, clamped, cfg.tau, anchor_coeff=anchor_coeff,
                policy_coeff=policy_coeff, gradient=diagnostics or need_grad, split=diagnostics)
            if len(each) == 1 and heads[0].weight == 1:  # E_pi[r] is the head's mean reward
                m: Metrics = {f"rewards/{heads[0].name}/mean": mean.mean()}
            else:
                m = {f"rewards/{k}/mean": (probs * v).sum(-1).mean() for k, v in each.items()}
            if metrics:
                m.update(self._metrics(probs, adv, logits, zero_std, mu.device))
            if diagnostics:
                m["signal_frac"] = signal_fraction(g_pol, mu.detach(), y)
        loss = with_gradient(mu, value, g_mu) if need_grad else value
        return Objective(loss, anchor, policy, m)

    def _metrics(self, probs, adv, logits, zero_std, device) -> Metrics:
        clip = self.config.adv_clip
        return {
            "tau": torch.full((), self.config.tau, device=device),
            "adv/std": (probs * adv * adv).sum(-1).sqrt().mean(),
            "adv/clip_frac": (probs * (adv.abs() >= clip)).sum(-1).mean(),
            "frac_zero_std": zero_std.float().mean(),
            # KL(one-hot at j = i || pi) = logsumexp_j(logits_ij) - logits_ii
            "kl": (torch.logsumexp(logits, dim=-1) - logits.diagonal(dim1=1, dim2=2)).mean(),
        }
