"""The one rule of bounded per-sample factors with mean one (the sample weight, the adaptive strength)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["bounded_unit_mean"]


def bounded_unit_mean(x: torch.Tensor, *, gain: float, low: float, high: float,
                      weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``clamp(1 + gain * x, low, high)`` divided by its mean, clamped again: bounded factors with mean
    about one (exactly one unless the bounds bite). ``weights`` (counts, >= 0) make the mean a weighted
    one; where they sum to zero the plain mean is used. The one rule of the sample weight
    (:func:`~vrpo_loss.factors.sample_weight.bounded_sample_weight`) and of the adaptive strength's per-bin factors.

    Shape:
        x: (K,); weights: (K,) or None. Output: (K,).
    """
    s = (1.0 + gain * x).clamp(low, high)
    mean = s.mean()
    if weights is not None:
        total = weights.sum()
        mean = torch.where(total > 0, (weights * s).sum() / total.clamp_min(1e-30), mean)
    return (s / mean.clamp_min(1e-12)).clamp(low, high)
