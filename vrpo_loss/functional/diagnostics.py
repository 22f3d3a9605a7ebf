"""The signal fraction: how much of a gradient on ``mu`` points along REPA's."""

from __future__ import annotations

import torch

__all__ = ["signal_fraction"]


def signal_fraction(policy_grad_mu: torch.Tensor, mu: torch.Tensor, y_unit: torch.Tensor) -> torch.Tensor:
    """Cosine between the policy term's gradient on ``mu`` and REPA's gradient ``d(-cos(mu, y))/d mu``.

    Near 1: the policy term pushes along REPA's direction; near 0: it adds mostly noise.

    Shape:
        policy_grad_mu, mu, y_unit: (B, N, C). Output: scalar.
    """
    # REPA's gradient per token is r = -(y - (y.u) u) / |mu| with u = mu / |mu|; the cosine needs only
    # per-token dot products (no (B, N, C) temporaries beyond them): g.r, |g|^2 and |r|^2.
    raw = torch.linalg.vector_norm(mu, dim=-1)
    norm = raw.clamp_min(1e-12)
    g = policy_grad_mu
    yu = torch.linalg.vecdot(y_unit, mu) / norm
    gu = torch.linalg.vecdot(g, mu) / norm
    uu = (raw / norm).square()
    dot = (-(torch.linalg.vecdot(g, y_unit) - yu * gu) / norm).sum()
    yy = torch.linalg.vector_norm(y_unit, dim=-1).square()
    rr = ((yy - 2 * yu.square() + yu.square() * uu).clamp_min(0) / norm.square()).sum()
    gg = torch.linalg.vector_norm(g).square()
    return dot / (gg.sqrt() * rr.sqrt()).clamp_min(1e-20)  # a product of roots: no fp32 overflow
