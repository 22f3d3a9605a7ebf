"""Pure tensor functions: the math of VRPO, free of state and configuration.

Every function here is differentiable where it makes sense, computes in the dtype it is given
(callers upcast to fp32), and documents its shapes. The modules in this package only store
configuration and state and call these functions.

Paper: "Improving Visual Representation Alignment Generation with GRPO", arXiv 2606.00583.
REPA: Yu et al., "Representation Alignment for Generation", ICLR 2025 (github sihyun-yu/REPA).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "repa_projection_loss",
    "token_cosine",
    "group_advantage",
    "candidate_advantage",
    "clipped_surrogate",
    "gaussian_log_prob",
    "bounded_sample_weight",
    "tangent",
]


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


def _scaled(centred, std, batch_std, zero_std, scale, eps, clip):
    """Shared tail of the advantage functions: scale, zero the zero-variance groups, clamp."""
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        adv = centred / (batch_std() + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale: expected one of 'group', 'batch', 'none', got {scale!r}")
    adv = adv.masked_fill(zero_std, 0.0)
    return adv if clip is None else adv.clamp(-clip, clip)


def group_advantage(
    rewards: torch.Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    clip: Optional[float] = None,
    dim: int = 0,
    zero_std_atol: float = 1e-8,
    std: Optional[torch.Tensor] = None,
    batch_std: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantage (GRPO): ``(r - mean_G r) / (std_G r + eps)``.

    Args:
        rewards: rewards of the ``G`` actions of each group, the group along ``dim``.
        scale: ``"group"`` divides by the std of each group, ``"batch"`` by the std of all
            rewards together (the mean is still per group), ``"none"`` only centres (TRL's
            ``scale_rewards`` values and meanings).
        eps: added to the std.
        clip: clamp the advantage to ``[-clip, clip]`` when given.
        dim: the group dimension.
        zero_std_atol: groups whose std is below this get a zero advantage.
        std: the std of each group, if known better than from the samples (keepdim shape; with a
            control variate, ``rewards`` are residuals and ``std`` is the full reward's spread).
        batch_std: the std used by ``scale="batch"`` (default: of all ``rewards``).

    Returns:
        ``(advantage, zero_std)``: the advantage, same shape as ``rewards``, and a bool tensor that
        marks the zero-variance groups (``rewards`` with ``dim`` removed).

    Shape:
        rewards: (G, ...) for ``dim=0``. Output: (G, ...) and (...).
    """
    if rewards.shape[dim] < 2:
        raise ValueError(
            f"rewards: a group needs at least 2 actions along dim {dim}, got shape {tuple(rewards.shape)}; "
            "a group of one has no relative advantage"
        )
    centred = rewards - rewards.mean(dim=dim, keepdim=True)
    if std is None:
        std = rewards.std(dim=dim, keepdim=True, unbiased=False)
    zero_std = std.squeeze(dim) <= zero_std_atol
    whole = (lambda: rewards.std(unbiased=False)) if batch_std is None else (lambda: batch_std)
    return _scaled(centred, std, whole, zero_std.unsqueeze(dim), scale, eps, clip), zero_std


def candidate_advantage(
    rewards: torch.Tensor,
    probs: torch.Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    clip: Optional[float] = None,
    zero_std_atol: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantage over enumerated candidates, with moments taken exactly under ``probs``.

    The group of a token is the set of its candidates; its mean and std are expectations under the
    policy, so no sampling is involved.

    Shape:
        rewards, probs: (..., K) with ``probs`` summing to 1 over K. Output: (..., K) and (...).
    """
    mean = (probs * rewards).sum(-1, keepdim=True)
    centred = rewards - mean
    var = (probs * centred.pow(2)).sum(-1, keepdim=True)
    std = var.clamp_min(0).sqrt()
    zero_std = std.squeeze(-1) <= zero_std_atol

    def batch_std():
        return (probs * (rewards - mean.mean()).pow(2)).sum(-1).mean().clamp_min(0).sqrt()

    return _scaled(centred, std, batch_std, zero_std.unsqueeze(-1), scale, eps, clip), zero_std


def clipped_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    *,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, negated to be minimised: ``-min(rho A, clip(rho, 1-e, 1+e) A)``.

    With ``old_log_prob = log_prob.detach()`` (one on-policy update) ``rho == 1`` in value and the
    gradient is the plain policy gradient ``-A grad log pi``.

    Returns:
        ``(loss, clipped)``: the elementwise loss and a bool tensor of where the clip was active.

    Shape:
        all inputs broadcast to a common shape (...). Output: (...), (...).
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = ratio * advantage
    clipped_ratio = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    clipped = clipped_ratio * advantage
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, averaged over the channel dimension.

    Shape:
        x, mean: (..., C); std: (C,) or broadcastable. Output: (...).
    """
    z = (x - mean) / std
    return (-0.5 * z.pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).mean(-1)


def bounded_sample_weight(
    advantage: torch.Tensor, *, strength: float, w_min: float, w_max: float
) -> torch.Tensor:
    """Per-sample weight from a normalised advantage, with batch mean one.

    ``w = clamp(1 + strength * a, w_min, w_max)``, divided by its batch mean, clamped again. The
    division matters: while the model improves, its rewards run ahead of the running statistics, so
    nearly every advantage is positive and undivided weights would average well above one (1.4 at
    ``strength=0.5`` on the toy benchmark), a hidden increase of the alignment coefficient.
    ``strength > 0`` aligns more strongly the samples that earn more reward than is usual at their
    timestep; ``strength < 0`` the ones that earn less; ``strength = 0`` gives weight one.

    Shape:
        advantage: (B,). Output: (B,).
    """
    w = (1.0 + strength * advantage).clamp(w_min, w_max)
    return (w / w.mean().clamp_min(1e-12)).clamp(w_min, w_max)
