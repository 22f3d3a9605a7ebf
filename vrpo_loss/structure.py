"""A per-token term beside REPA's cosine and the policy term: the SARA-style structure term.

The token self-similarity (cosine) matrices of the projected tokens and of the targets matched,
:func:`structure_loss` (``structure_coeff``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["structure_loss"]


def structure_loss(mu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SARA-style structure term: ``mean_{i,j} (cos(mu_i, mu_j) - cos(y_i, y_j))^2`` per sample.

    Matches the token self-similarity (cosine) matrix of the projected tokens to the encoder's;
    ``y`` receives no gradient.

    Shape:
        mu, y: (B, N, C). Output: (B,).
    """
    if mu.shape != y.shape:
        raise ValueError(f"structure_coeff: the structure term needs mu and y of one shape, got {tuple(mu.shape)} and {tuple(y.shape)}")
    m = F.normalize(mu, dim=-1)
    u = F.normalize(y.detach(), dim=-1)
    diff = m @ m.transpose(1, 2) - u @ u.transpose(1, 2)
    return diff.square().mean(dim=(1, 2))
