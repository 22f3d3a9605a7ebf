"""``VRPOOutput``: what :class:`~vrpo_loss.VRPOAlignment` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import torch

__all__ = ["VRPOOutput"]


@dataclass
class VRPOOutput:
    """What :class:`VRPOAlignment` returns.

    Attributes:
        loss: scalar, what replaces REPA's ``proj_loss`` (equals ``per_sample.mean()``).
        per_sample: (B,), for hosts that reduce per sample (SiT/DiT ``terms["loss"]``).
        terms: the per-token terms, each reduced to a detached per-sample value (B,) before its
            coefficient and the per-sample factors: ``anchor`` (``1 - mean_n cos(mu, y)``), ``policy``
            (mode "vrpo" with ``policy_coeff > 0``), ``structure`` (``structure_coeff > 0``).
        metrics: detached scalars for logging (``loss_policy``, ``loss_anchor``, ``rewards/<head>/mean``,
            ``adv/std``, ``frac_zero_std``, ``kl``, ``signal_frac``, ``weight/*`` ...).
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)
    terms: Dict[str, torch.Tensor] = field(default_factory=dict)
