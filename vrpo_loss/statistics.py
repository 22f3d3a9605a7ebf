"""Running statistics per timestep bin: the normaliser of sample-level rewards and of the adaptive strength.

A sample at t = 0.9 always denoises worse than one at t = 0.1, so a per-sample quantity only means
something relative to what is usual at its timestep. :class:`TimeBinnedNormalizer` keeps an EMA of
the mean and variance of each of ``heads`` quantities in ``time_bins`` bins of ``t`` (buffers, so
they travel in ``state_dict``), all-reduced across ranks when ``torch.distributed`` is initialised,
and normalises each sample's value against its bin. Everything is vectorised (``index_add`` into
the bins): no Python loop over bins and no host-device synchronisation. Its users are two per-sample
factors: the sample weight (:mod:`vrpo_loss.factors.sample_weight`) and the adaptive strength
(:mod:`vrpo_loss.factors.adaptive`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .config import VRPOConfig
from .distributed import all_reduce_sum

__all__ = ["TimeBinnedNormalizer", "accumulation_dtype", "bin_sums", "moments"]

_D = VRPOConfig.default


def accumulation_dtype(device) -> torch.dtype:
    """The dtype of the running statistics' arithmetic: float64 (MPS has none: float32 there).

    A finite fp32 reward of 1e20 has a square of 1e40, past fp32's range: its moments overflow in fp32.
    """
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def bin_sums(values: torch.Tensor, valid: torch.Tensor, bins: torch.Tensor, n_bins: int,
             dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Per-bin count, sum and sum of squares of the valid values (invalid ones count as absent), in
    ``dtype`` (default :func:`accumulation_dtype`); the one binning of the sample-level stage and of
    the adaptive strength (the sums, all-reduced, give :func:`moments`).

    Shape:
        values, valid: (..., B); bins: (B,). Output: (3, ..., n_bins).
    """
    dtype = dtype or accumulation_dtype(values.device)
    x = torch.where(valid, values.to(dtype), 0.0)
    out = torch.zeros(3, *values.shape[:-1], n_bins, device=values.device, dtype=dtype)
    return out.index_add_(values.dim(), bins, torch.stack([valid.to(dtype), x, x * x]))  # one launch for the three


def moments(sums: torch.Tensor):
    """Count, mean and (population) variance from stacked sums ``(count, sum, sum of squares)``.

    Shape: sums (3, ...). Output: three (...).
    """
    cnt = sums[0]
    mean, square = sums[1:] / cnt.clamp_min(1)
    return cnt, mean, (square - mean.pow(2)).clamp_min(0)


class TimeBinnedNormalizer(nn.Module):
    """Running per-timestep-bin statistics of ``heads`` sample-level rewards, and normalisation.

    Args:
        heads: number of reward heads H (one row of statistics each).
        time_bins: number K of equal bins of ``t`` in [0, 1].
        momentum: EMA momentum; a bin's first batch initialises it.
        eps: added to the std.
        clip: normalised rewards are clamped to ``[-clip, clip]``.
        (Defaults: ``VRPOConfig``'s ``time_bins``, ``stats_momentum``, ``adv_eps``, ``adv_clip``.)

    Buffers:
        mean, var, count: (H, K) (float32; the arithmetic on them is float64, see :func:`accumulation_dtype`).

    An update whose new statistics would not all be finite in the buffers' dtype (a reward of 1e20 has a
    variance past fp32's range) is refused as a whole, as a batch that fails the value check is: the
    running statistics keep their values and the batch is normalised against them.

    Shape:
        rewards: (H, B); mask: (H, B) bool of valid entries; t: (B,) or None. Output: (H, B).
    """

    def __init__(self, *, heads: int, time_bins: int = _D("time_bins"), momentum: float = _D("stats_momentum"),
                 eps: float = _D("adv_eps"), clip: float = _D("adv_clip")):
        super().__init__()
        self.time_bins = time_bins
        self.momentum = momentum
        self.eps = eps
        self.clip = clip
        self.register_buffer("mean", torch.zeros(heads, time_bins))
        self.register_buffer("var", torch.ones(heads, time_bins))
        self.register_buffer("count", torch.zeros(heads, time_bins))

    @classmethod
    def from_config(cls, cfg: VRPOConfig, *, heads: int) -> "TimeBinnedNormalizer":
        return cls(heads=heads, time_bins=cfg.time_bins, momentum=cfg.stats_momentum, eps=cfg.adv_eps, clip=cfg.adv_clip)

    def bins(self, t: torch.Tensor) -> torch.Tensor:
        """Bin index of each ``t``. Shape: (B,) -> (B,) long."""
        return (t.float() * self.time_bins).long().clamp(0, self.time_bins - 1)

    def batch_moments(self, rewards: torch.Tensor, valid: torch.Tensor, bins: torch.Tensor, n_bins: int):
        """Count, mean and variance of the valid rewards in each bin, summed over ranks.

        Shape: rewards, valid (H, B); bins (B,). Output: three (H, n_bins), in :func:`accumulation_dtype`.
        """
        return moments(all_reduce_sum(bin_sums(rewards, valid, bins, n_bins)))

    def update(self, cnt: torch.Tensor, b_mean: torch.Tensor, b_var: torch.Tensor,
               commit: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Take a batch's per-bin moments into the running statistics (EMA; a bin's first batch sets it).

        Computed in :func:`accumulation_dtype`; the update is committed only where ``commit`` holds and
        every new statistic is finite in the buffers' dtype (else no buffer changes).

        Shape: cnt, b_mean, b_var (H, K); commit: 0-dim bool on the device or None (False: no update).
        Returns: the 0-dim bool on the device saying whether the update was committed (no synchronisation).
        """
        acc = accumulation_dtype(cnt.device)
        cnt, b_mean, b_var = (x if x.dtype == acc else x.to(acc) for x in (cnt, b_mean, b_var))
        mean, var = self.mean.to(acc), self.var.to(acc)
        present = cnt > 0
        beta = torch.full_like(cnt, self.momentum).masked_fill_(self.count == 0, 1.0)  # a bin's first batch sets it
        delta = b_mean - mean
        new_mean = torch.where(present, mean + beta * delta, mean).to(self.mean.dtype)
        new_var = torch.where(present, (1 - beta) * (var + beta * delta.pow(2)) + beta * b_var, var).to(self.var.dtype)
        ok = torch.isfinite(torch.stack([new_mean, new_var])).all()
        if commit is not None:
            ok = ok & commit
        self.mean.copy_(torch.where(ok, new_mean, self.mean))
        self.var.copy_(torch.where(ok, new_var, self.var))
        self.count.add_(torch.where(ok, cnt, 0.0).to(self.count.dtype))
        return ok

    def forward(self, rewards: torch.Tensor, mask: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None,
                commit: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Advantages ``(r - mean_bin) / (std_bin + eps)``, clipped, 0 where masked or non-finite.

        Shape: rewards, mask (H, B); t (B,); commit: 0-dim bool on the device, or None. Output: (H, B).
        In training mode the running statistics take this batch in, unless ``commit`` is False (a
        device-side condition: no synchronisation; the caller refuses the batch afterwards).
        """
        out_dtype = self.mean.dtype
        rewards = rewards.to(out_dtype)
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
            mean = torch.where(seen, self.mean.to(b_mean.dtype), b_mean)
            var = torch.where(seen, self.var.to(b_var.dtype), b_var)
        mu = mean.gather(1, bins.expand(rewards.shape[0], -1))
        sd = var.gather(1, bins.expand(rewards.shape[0], -1)).sqrt()
        adv = (torch.where(valid, rewards.to(mu.dtype), mu) - mu) / (sd + self.eps)
        return adv.clamp(-self.clip, self.clip).masked_fill(~valid, 0.0).to(out_dtype)
