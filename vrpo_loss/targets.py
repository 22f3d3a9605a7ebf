"""Stage 1 of the pipeline, the targets: what the alignment aligns to.

The encoder tokens are detached, taken to fp32, optionally normalised over the token axis
(``target_norm="zscore"``: iREPA, End2End-Diffusion/iREPA, arXiv 2512.10794, :func:`zscore_tokens`),
then unit-normalised per token (:func:`prepare_targets`).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F

__all__ = ["ZSCORE_EPS", "prepare_targets", "zscore_tokens"]

ZSCORE_EPS = 1e-6  # iREPA's constant, added to the std


def zscore_tokens(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """iREPA's spatial normalisation of encoder tokens: ``(y - alpha * mean_N y) / (std_N y + 1e-6)``.

    The mean and the (unbiased) standard deviation are taken per sample and channel over the token
    axis, as ``spatial_zscore`` in iREPA's ``ldm/utils.py``.

    Shape:
        y: (B, N, C) with N >= 2. Output: (B, N, C).
    """
    if y.dim() != 3 or y.shape[1] < 2:
        raise ValueError(
            f"target_norm: 'zscore' normalises over the token axis and needs targets of shape (B, N, C) with N >= 2, "
            f"got shape {tuple(y.shape)}; use target_norm='none' for a single token"
        )
    return (y - alpha * y.mean(dim=1, keepdim=True)) / (y.std(dim=1, keepdim=True) + ZSCORE_EPS)


def prepare_targets(targets: Sequence[torch.Tensor], *, norm: str, alpha: float) -> List[torch.Tensor]:
    """The targets as every term sees them: detached, fp32, z-scored over the tokens with
    ``norm="zscore"`` (iREPA, before everything else), unit-normalised per token.

    Shape:
        targets[e]: (B, N, C_e). Output: a list of (B, N, C_e) fp32 unit vectors.
    """
    ys = [y.detach().float() for y in targets]
    if norm == "zscore":
        ys = [zscore_tokens(y, alpha) for y in ys]
    return [F.normalize(y, dim=-1) for y in ys]
