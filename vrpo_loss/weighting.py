"""The sample-level stage: reward -> per-timestep-bin advantage -> bounded per-sample weight.

A sample at t = 0.9 always denoises worse than one at t = 0.1, so a sample-level reward only means
something relative to what is usual at its timestep. :class:`TimeBinnedNormalizer` keeps an EMA of
the mean and variance of each reward head in ``time_bins`` bins of ``t`` (buffers, so they travel
in ``state_dict``), all-reduced across ranks when ``torch.distributed`` is initialised, and
normalises each sample's reward against its bin. Everything is vectorised (``index_add`` into the
bins): no Python loop over bins and no host-device synchronisation. :func:`sample_weight` runs the
stage: the heads' rewards, their normalised advantages (a weighted mean over heads), and
:func:`bounded_sample_weight`. At ``sample_weight=0`` (the default) the weights are one and the stage
feeds only metrics, so :class:`~vrpo_loss.VRPOAlignment` runs it on its metric steps only
(``metrics_every``): the running statistics then take in one batch in ``metrics_every``, an EMA of
the same quantities over a sparser sample (unless a sample head was passed in ``heads=``).

Token-level advantages (group-relative, GRPO) are pure functions: see
:func:`vrpo_loss.functional.group_advantage` and :func:`~vrpo_loss.functional.candidate_advantage`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .config import VRPOConfig
from .distributed import all_reduce_sum
from .rewards import RewardContext, RewardHead

__all__ = ["TimeBinnedNormalizer", "accumulation_dtype", "bin_sums", "bounded_sample_weight", "bounded_unit_mean", "moments", "sample_rewards",
           "sample_weight"]

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
    x = torch.where(valid, values.to(dtype), torch.zeros((), device=values.device, dtype=dtype))
    out = torch.zeros(3, *values.shape[:-1], n_bins, device=values.device, dtype=dtype)
    last = values.dim() - 1
    out[0].index_add_(last, bins, valid.to(dtype))
    out[1].index_add_(last, bins, x)
    out[2].index_add_(last, bins, x * x)
    return out


def moments(sums: torch.Tensor):
    """Count, mean and (population) variance from stacked sums ``(count, sum, sum of squares)``.

    Shape: sums (3, ...). Output: three (...).
    """
    cnt = sums[0]
    mean = sums[1] / cnt.clamp_min(1)
    var = (sums[2] / cnt.clamp_min(1) - mean.pow(2)).clamp_min(0)
    return cnt, mean, var


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
        cnt, b_mean, b_var = cnt.to(acc), b_mean.to(acc), b_var.to(acc)
        mean, var = self.mean.to(acc), self.var.to(acc)
        present = cnt > 0
        beta = torch.where(self.count > 0, torch.full_like(cnt, self.momentum), torch.ones_like(cnt))
        delta = b_mean - mean
        new_mean = torch.where(present, mean + beta * delta, mean).to(self.mean.dtype)
        new_var = torch.where(present, (1 - beta) * (var + beta * delta.pow(2)) + beta * b_var, var).to(self.var.dtype)
        ok = (torch.isfinite(new_mean) & torch.isfinite(new_var)).all()
        if commit is not None:
            ok = ok & commit
        self.mean.copy_(torch.where(ok, new_mean, self.mean))
        self.var.copy_(torch.where(ok, new_var, self.var))
        self.count.add_(torch.where(ok, cnt, torch.zeros_like(cnt)).to(self.count.dtype))
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


def bounded_unit_mean(x: torch.Tensor, *, gain: float, low: float, high: float,
                      weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``clamp(1 + gain * x, low, high)`` divided by its mean, clamped again: bounded factors with mean
    about one (exactly one unless the bounds bite). ``weights`` (counts, >= 0) make the mean a weighted
    one; where they sum to zero the plain mean is used. The one rule of the sample weight
    (:func:`bounded_sample_weight`) and of the adaptive strength's per-bin factors.

    Shape:
        x: (K,); weights: (K,) or None. Output: (K,).
    """
    s = (1.0 + gain * x).clamp(low, high)
    mean = s.mean()
    if weights is not None:
        total = weights.sum()
        mean = torch.where(total > 0, (weights * s).sum() / total.clamp_min(1e-30), mean)
    return (s / mean.clamp_min(1e-12)).clamp(low, high)


def bounded_sample_weight(advantage: torch.Tensor, *, strength: float, w_min: float, w_max: float) -> torch.Tensor:
    """Per-sample weight from a normalised advantage, with batch mean one (:func:`bounded_unit_mean`).

    ``w = clamp(1 + strength * a, w_min, w_max)``, divided by its batch mean, clamped again. The
    division matters: while the model improves, its rewards run ahead of the running statistics, so
    nearly every advantage is positive and undivided weights would average well above one, a hidden
    increase of the alignment coefficient. ``strength > 0`` aligns more strongly the samples that
    earn more reward than is usual at their timestep; ``strength < 0`` the ones that earn less;
    ``strength = 0`` gives weight one.

    Shape:
        advantage: (B,). Output: (B,).
    """
    return bounded_unit_mean(advantage, gain=strength, low=w_min, high=w_max)


def sample_rewards(heads: Sequence[RewardHead], ctx: RewardContext, batch: int, device,
                   metrics: Optional[Dict[str, torch.Tensor]]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Each head's detached reward and mask (zeros and all-False when it has nothing to say); reports the means
    (unless ``metrics`` is None).

    Shape:
        Output: two lists, one (B,) tensor per head.
    """
    rewards, masks = [], []
    for head in heads:
        got = head.sample_reward(ctx)
        if got is None:
            rewards.append(torch.zeros(batch, device=device))
            masks.append(torch.zeros(batch, dtype=torch.bool, device=device))
            continue
        r, m = got
        r = r.detach().float().reshape(batch)
        masked = m is not None
        m = m.reshape(batch) if masked else torch.ones(batch, dtype=torch.bool, device=device)
        if metrics is not None:
            metrics[f"rewards/{head.name}/mean"] = (r * m).sum() / m.sum().clamp_min(1) if masked else r.mean()
        rewards.append(r)
        masks.append(m)
    return rewards, masks


def sample_weight(
    heads: Sequence[RewardHead], normalizer: TimeBinnedNormalizer, ctx: RewardContext, *, batch: int, device,
    strength: float, w_min: float, w_max: float, commit: Optional[torch.Tensor], metrics: Optional[Dict[str, torch.Tensor]],
) -> torch.Tensor:
    """The per-sample weights ``w_b`` (detached); in training mode the running statistics take the batch in.

    Args:
        heads: the sample-level heads; normalizer: their running statistics.
        strength, w_min, w_max: as :func:`bounded_sample_weight` (strength 0: weight one).
        commit: 0-dim bool on the device (the value check's verdict), or None; see
            :meth:`TimeBinnedNormalizer.forward`.
        metrics: where the stage's metrics are written (None: none are computed).

    Shape:
        ctx.t: (B,) or None. Output: (B,).
    """
    if not heads:
        return torch.ones(batch, device=device)
    rewards, masks = sample_rewards(heads, ctx, batch, device, metrics)
    r, m = torch.stack(rewards), torch.stack(masks)
    adv = normalizer(r, m, ctx.t, commit=commit)  # (H, B)
    hw = torch.stack([h.weight * mk.float() for h, mk in zip(heads, m)])
    a = (hw * adv).sum(0) / hw.sum(0).clamp_min(1e-12)
    if metrics is not None:
        metrics["adv/sample_std"] = a.std() if batch > 1 else torch.zeros((), device=device)
    if strength == 0 or batch == 0:  # batch 0: the statistics' all-reduce was entered above, no weights to bound
        return torch.ones(batch, device=device)
    w = bounded_sample_weight(a, strength=strength, w_min=w_min, w_max=w_max)
    if metrics is not None:
        metrics["weight/min"], metrics["weight/max"] = w.min(), w.max()
    return w.detach()
