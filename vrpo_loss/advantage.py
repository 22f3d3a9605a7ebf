"""Sample-level advantage: rewards normalised against running statistics per timestep bin.

A sample at t = 0.9 always denoises worse than one at t = 0.1, so a sample-level reward only means
something relative to what is usual at its timestep. :class:`TimeBinnedNormalizer` keeps an EMA of
the mean and variance of each reward head in ``time_bins`` bins of ``t`` (buffers, so they travel
in ``state_dict``), all-reduced across ranks when ``torch.distributed`` is initialised, and
normalises each sample's reward against its bin. Everything is vectorised (``index_add`` into the
bins): no Python loop over bins and no host-device synchronisation.

Token-level advantages (group-relative, GRPO) are pure functions: see
:func:`vrpo_loss.functional.group_advantage` and :func:`~vrpo_loss.functional.candidate_advantage`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["TimeBinnedNormalizer", "all_reduce_sum", "moments", "world_rank"]


def world_rank() -> int:
    """This process's rank, 0 when ``torch.distributed`` is not initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def moments(sums: torch.Tensor):
    """Count, mean and (population) variance from stacked sums ``(count, sum, sum of squares)``.

    Shape: sums (3, ...). Output: three (...).
    """
    cnt = sums[0]
    mean = sums[1] / cnt.clamp_min(1)
    var = (sums[2] / cnt.clamp_min(1) - mean.pow(2)).clamp_min(0)
    return cnt, mean, var


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks in place when ``torch.distributed`` runs with more than one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class TimeBinnedNormalizer(nn.Module):
    """Running per-timestep-bin statistics of ``heads`` sample-level rewards, and normalisation.

    Args:
        heads: number of reward heads H (one row of statistics each).
        time_bins: number K of equal bins of ``t`` in [0, 1].
        momentum: EMA momentum; a bin's first batch initialises it.
        eps: added to the std.
        clip: normalised rewards are clamped to ``[-clip, clip]``.

    Buffers:
        mean, var, count: (H, K).

    Shape:
        rewards: (H, B); mask: (H, B) bool of valid entries; t: (B,) or None. Output: (H, B).
    """

    def __init__(self, *, heads: int, time_bins: int = 10, momentum: float = 0.01, eps: float = 1e-4, clip: float = 5.0):
        super().__init__()
        self.time_bins = time_bins
        self.momentum = momentum
        self.eps = eps
        self.clip = clip
        self.register_buffer("mean", torch.zeros(heads, time_bins))
        self.register_buffer("var", torch.ones(heads, time_bins))
        self.register_buffer("count", torch.zeros(heads, time_bins))

    def bins(self, t: torch.Tensor) -> torch.Tensor:
        """Bin index of each ``t``. Shape: (B,) -> (B,) long."""
        return (t.float() * self.time_bins).long().clamp(0, self.time_bins - 1)

    def batch_moments(self, rewards: torch.Tensor, valid: torch.Tensor, bins: torch.Tensor, n_bins: int):
        """Count, mean and variance of the valid rewards in each bin, summed over ranks.

        Shape: rewards, valid (H, B); bins (B,). Output: three (H, n_bins).
        """
        h = rewards.shape[0]
        r = torch.where(valid, rewards, torch.zeros_like(rewards))
        v = valid.to(rewards.dtype)
        sums = torch.zeros(3, h, n_bins, device=rewards.device, dtype=rewards.dtype)
        sums[0].index_add_(1, bins, v)
        sums[1].index_add_(1, bins, r)
        sums[2].index_add_(1, bins, r * r)
        return moments(all_reduce_sum(sums))

    def update(self, cnt: torch.Tensor, b_mean: torch.Tensor, b_var: torch.Tensor, commit: Optional[torch.Tensor] = None) -> None:
        """Take a batch's per-bin moments into the running statistics (EMA; a bin's first batch sets it).

        Shape: cnt, b_mean, b_var (H, K); commit: 0-dim bool on the device or None (False: no update).
        """
        present = cnt > 0
        if commit is not None:
            present = present & commit
            cnt = torch.where(commit, cnt, torch.zeros_like(cnt))
        beta = torch.where(self.count > 0, torch.full_like(cnt, self.momentum), torch.ones_like(cnt))
        delta = b_mean - self.mean
        new_mean = self.mean + beta * delta
        new_var = (1 - beta) * (self.var + beta * delta.pow(2)) + beta * b_var
        self.mean.copy_(torch.where(present, new_mean, self.mean))
        self.var.copy_(torch.where(present, new_var, self.var))
        self.count.add_(cnt)

    def forward(self, rewards: torch.Tensor, mask: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None,
                commit: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Advantages ``(r - mean_bin) / (std_bin + eps)``, clipped, 0 where masked or non-finite.

        Shape: rewards, mask (H, B); t (B,); commit: 0-dim bool on the device, or None. Output: (H, B).
        In training mode the running statistics take this batch in, unless ``commit`` is False (a
        device-side condition: no synchronisation; the caller refuses the batch afterwards).
        """
        rewards = rewards.to(self.mean.dtype)
        valid = torch.isfinite(rewards)
        if mask is not None:
            valid = valid & mask
        if t is None:
            # no timestep: normalise against this (global) batch alone; running stats untouched
            bins = torch.zeros(rewards.shape[1], dtype=torch.long, device=rewards.device)
            _, mean, var = self.batch_moments(rewards, valid, bins, 1)
        else:
            bins = self.bins(t)
            cnt, b_mean, b_var = self.batch_moments(rewards, valid, bins, self.time_bins)
            if self.training:
                self.update(cnt, b_mean, b_var, commit)
            seen = self.count > 0
            mean = torch.where(seen, self.mean, b_mean)
            var = torch.where(seen, self.var, b_var)
        mu = mean.gather(1, bins.expand(rewards.shape[0], -1))
        sd = var.gather(1, bins.expand(rewards.shape[0], -1)).sqrt()
        adv = (torch.where(valid, rewards, mu) - mu) / (sd + self.eps)
        return adv.clamp(-self.clip, self.clip).masked_fill(~valid, 0.0)
