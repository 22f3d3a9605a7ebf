"""Small shared tensor functions: cosine per token, REPA's projection loss, tangent projection, resampling."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["token_cosine", "repa_projection_loss", "tangent", "resample_grid"]


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per token, exactly as REPA computes it (``F.normalize`` with eps 1e-12).

    Shape:
        a, b: (..., C). Output: (...).
    """
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)


def repa_projection_loss(
    features: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], reduction: str = "mean"
) -> torch.Tensor:
    """REPA's projection loss: ``-mean cos(z_tilde, z)`` over encoders, samples and tokens.

    Matches ``loss.py`` of REPA (lines 81-88 at 67f7145), including its order of reduction: a mean
    over tokens per sample, then an average over encoders and samples.

    Shape:
        features[e]: (B, N, C_e) projected tokens; targets[e]: (B, N, C_e) encoder tokens.
        Output: scalar for ``reduction="mean"``, (B,) for ``reduction="none"``.
    """
    per_sample = torch.stack([-token_cosine(f, y).mean(dim=-1) for f, y in zip(features, targets)]).mean(0)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def tangent(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Component of ``g`` orthogonal to the unit vector ``u`` (the tangent space of the sphere).

    Shape:
        g, u: (..., C). Output: (..., C).
    """
    return g - (g * u).sum(-1, keepdim=True) * u


def resample_grid(y: torch.Tensor, n: int, name: str = "targets") -> torch.Tensor:
    """Bilinearly resample square token grids from ``y.shape[1]`` tokens to ``n`` tokens.

    Shape:
        y: (B, M, C) with M a square; output (B, n, C) with n a square.
    """
    b, m, c = y.shape
    sm, sn = math.isqrt(m), math.isqrt(n)
    if sm * sm != m or sn * sn != n:
        raise ValueError(
            f"{name}: can only resample square token grids, got {m} tokens for {n} features tokens; run the encoder at "
            "the resolution whose patch grid matches the diffusion model's, or at one whose grid is square like the features'"
        )
    grid = y.transpose(1, 2).reshape(b, c, sm, sm)
    grid = F.interpolate(grid.float(), size=(sn, sn), mode="bilinear", align_corners=False)
    return grid.reshape(b, c, n).transpose(1, 2).to(y.dtype)
