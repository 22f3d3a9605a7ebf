"""Group-relative advantages (GRPO): over sampled groups of actions, or over enumerated candidates."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["group_advantage", "candidate_advantage"]


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
    mean: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantage over enumerated candidates, with moments taken exactly under ``probs``.

    The group of a token is the set of its candidates; its mean and std are expectations under the
    policy, so no sampling is involved. ``mean``: ``E_pi[r]`` (keepdim) when the caller has it.

    Shape:
        rewards, probs: (..., K) with ``probs`` summing to 1 over K; mean: (..., 1). Output: (..., K) and (...).
    """
    if mean is None:
        mean = (probs * rewards).sum(-1, keepdim=True)
    centred = rewards - mean
    var = (probs * centred.pow(2)).sum(-1, keepdim=True)
    std = var.clamp_min(0).sqrt()
    zero = std <= zero_std_atol

    def batch_std():
        return (probs * (rewards - mean.mean()).pow(2)).sum(-1).mean().clamp_min(0).sqrt()

    return _scaled(centred, std, batch_std, zero, scale, eps, clip), zero.squeeze(-1)
