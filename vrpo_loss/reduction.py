"""The loss of ``mode="vrpo"`` in one place: the per-encoder terms reduced to ``per_sample``, and its metrics."""

from __future__ import annotations

from typing import Dict, List

import torch

from .output import VRPOOutput

__all__ = ["Metrics", "encoder_mean", "reduce_terms"]

Metrics = Dict[str, torch.Tensor]


def reduce_terms(w, loss, anchor, policy, aux, per_encoder, metrics: Metrics, *, full: bool) -> VRPOOutput:
    """The loss in one place: ``anchor_coeff * w * anchor + policy_coeff * policy + head losses``, per sample."""
    per_sample = encoder_mean(loss)
    if policy:
        metrics["loss_policy"] = encoder_mean(policy).mean()
        for key in per_encoder[0]:
            metrics[key] = encoder_mean([m[key] for m in per_encoder])
    if aux:
        loss_heads = torch.stack(aux).sum(0) / len(anchor)
        per_sample = per_sample + loss_heads
        metrics["loss_heads"] = loss_heads.mean()
    metrics["loss_anchor"] = encoder_mean(anchor).mean()
    metrics["cos"] = 1 - metrics["loss_anchor"]
    if full:
        metrics["weight/mean"] = w.mean() if w is not None else torch.ones((), device=per_sample.device)
    return VRPOOutput(loss=per_sample.mean(), per_sample=per_sample,
                      metrics={k: v.detach() if v.requires_grad else v for k, v in metrics.items()})


def encoder_mean(xs: List[torch.Tensor]) -> torch.Tensor:
    """Mean over encoders (no launch for one)."""
    return xs[0] if len(xs) == 1 else torch.stack(xs).mean(0)
