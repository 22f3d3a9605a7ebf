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
    correspondence_log_probs,
    correspondence_surrogate,
    signal_fraction,
    with_gradient,
)
from .base import Metrics, Policy, weighted_rewards

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

    def term(self, mu, ctx, heads, weight, *, diagnostics):
        """The policy term with its gradient on ``mu`` in closed form (one fused pass, no autograd graph).

        Value and gradient equal the surrogate through autograd (``tests/reference.py``). The
        gradient on ``mu`` is at hand, so the signal-fraction diagnostic costs no extra matmul.
        """
        cfg = self.config
        y = ctx.targets.detach()
        need_grad = mu.requires_grad and torch.is_grad_enabled()
        with torch.no_grad():
            logp, u, norm = correspondence_log_probs(mu, y, cfg.tau)
            probs = logp.exp()
            r, each = weighted_rewards(heads, lambda h: h.candidate_reward(ctx))
            adv, zero_std = candidate_advantage(r, probs, scale=cfg.adv_scale, eps=cfg.adv_eps, clip=cfg.adv_clip)
            value, g_mu = correspondence_surrogate(probs, adv, weight, u, norm, y, cfg.tau, gradient=diagnostics or need_grad)
        pg = with_gradient(mu, value, g_mu) if need_grad else value
        metrics: Metrics = {f"rewards/{k}/mean": (probs * v).sum(-1).mean() for k, v in each.items()}
        with torch.no_grad():
            metrics["tau"] = torch.full((), cfg.tau, device=mu.device)
            metrics["adv/std"] = (probs * adv * adv).sum(-1).sqrt().mean()
            metrics["adv/clip_frac"] = (probs * (adv.abs() >= cfg.adv_clip)).sum(-1).mean()
            metrics["frac_zero_std"] = zero_std.float().mean()
            metrics["kl"] = -logp.diagonal(dim1=1, dim2=2).mean()  # KL(one-hot at j = i || pi)
            if diagnostics:
                metrics["signal_frac"] = signal_fraction(g_mu, mu.detach(), y)
        return pg, metrics
