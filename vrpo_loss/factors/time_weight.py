"""The time weight (a per-sample factor): VA-REPA's timestep gate.

VA-REPA / Stable Velocity (linYDTHU/StableVelocity, arXiv 2602.05435): per-sample weight
``sigmoid(k * (c - t))``, the loss normalised by the sum of weights (``time_weight="sigmoid"``).
"""

from __future__ import annotations

import torch

__all__ = ["WEIGHT_SUM_FLOOR", "sigmoid_time_weight", "time_weight_factor"]

WEIGHT_SUM_FLOOR = 1e-8  # StableVelocity's: a batch whose weights sum to less has a zero loss


def sigmoid_time_weight(t: torch.Tensor, center: float, sharpness: float) -> torch.Tensor:
    """VA-REPA's weight ``sigmoid(sharpness * (center - t))``, t in [0, 1] with 1 = noise.

    StableVelocity's ``proj_weight_sigmoid`` uses the same convention (0 = data, 1 = noise), so its
    ``tau`` is ``center`` and its ``k`` is ``sharpness`` unchanged.

    Shape:
        t: (B,). Output: (B,), in (0, 1).
    """
    return torch.sigmoid(sharpness * (center - t))


def time_weight_factor(t: torch.Tensor, center: float, sharpness: float) -> torch.Tensor:
    """Per-sample factor ``B * w_b / sum_b w_b`` of the sigmoid time weight ``w``.

    Multiplying a per-sample loss by it makes its batch mean ``sum_b w_b loss_b / sum_b w_b``
    (VA-REPA's normalisation); a batch whose weights sum to less than 1e-8 gets a zero factor, as in
    StableVelocity, without a host-device synchronisation.

    Shape:
        t: (B,). Output: (B,), mean 1 (or all zeros).
    """
    w = sigmoid_time_weight(t, center, sharpness)
    total = w.sum()
    factor = w * (w.numel() / total.clamp_min(WEIGHT_SUM_FLOOR))
    return torch.where(total > WEIGHT_SUM_FLOOR, factor, torch.zeros_like(factor))
