"""Stage 5 of the pipeline, the reduction: per-sample loss, its mean, and the metrics of the terms, in one place."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .output import VRPOOutput

__all__ = ["Metrics", "encoder_mean", "reduce_terms"]

Metrics = Dict[str, torch.Tensor]

# metric name of each term: the mean over the batch of the unscaled per-sample term
TERM_METRICS = {"anchor": "loss_anchor", "policy": "loss_policy", "structure": "loss_structure"}


def reduce_terms(align: torch.Tensor, factor: Optional[torch.Tensor], aux: List[torch.Tensor],
                 terms: Dict[str, torch.Tensor], metrics: Metrics, *, full: bool) -> VRPOOutput:
    """``per_sample = factor * align + heads' losses`` and ``loss = per_sample.mean()``: the one rule.

    ``align`` is the coefficient-weighted sum of the alignment terms per sample, ``factor`` the product
    of the per-sample factors (None: one), ``aux`` the heads' own losses (each (B,)). The metrics of
    the terms mean the same in every mode: ``loss_<term>`` is the batch mean of the unscaled term
    (``loss_anchor = 1 - cos``, ``cos`` its complement); ``weight/mean`` the mean factor.

    Shape:
        align, factor, aux[k], terms[name]: (B,). Output: :class:`VRPOOutput`.
    """
    per_sample = align if factor is None else factor * align
    for x in aux:
        per_sample = per_sample + x
    for name, value in terms.items():
        metrics[TERM_METRICS[name]] = value.mean()
    metrics["cos"] = 1 - metrics["loss_anchor"]
    if aux:
        metrics["loss_heads"] = torch.stack(aux).sum(0).mean()
    if full:
        metrics["weight/mean"] = factor.mean() if factor is not None else torch.ones((), device=per_sample.device)
    return VRPOOutput(loss=per_sample.mean(), per_sample=per_sample, terms=terms,
                      metrics={k: v.detach() if v.requires_grad else v for k, v in metrics.items()})


def encoder_mean(xs: List[torch.Tensor]) -> torch.Tensor:
    """Mean over encoders (no launch for one)."""
    return xs[0] if len(xs) == 1 else torch.stack(xs).mean(0)
