"""The field's refinements of REPA as pure tensor functions (the peer options of ``VRPOAlignment``).

Each is an option of :class:`~vrpo_loss.VRPOAlignment` that composes with ``mode="repa"`` (REPA
becomes the peer method) and with ``mode="vrpo"``. ``docs/algorithm.md`` ("Peer options") gives
each formula, its source and where this package's option differs from the authors' code.

- iREPA (End2End-Diffusion/iREPA, arXiv 2512.10794): targets z-scored over the token axis,
  :func:`zscore_tokens` (its conv projector is in :mod:`vrpo_loss.projector`).
- VA-REPA / Stable Velocity (linYDTHU/StableVelocity, arXiv 2602.05435): per-sample weight ``sigmoid(k * (c - t))``,
  the loss normalised by the sum of weights, :func:`time_weight_factor`.
- HASTE (NUS-HPC-AI-Lab/HASTE, arXiv 2505.16792): alignment terminated at a fixed step,
  :func:`stop_factor` (and :func:`connected_zero` for the terminated loss).
- SARA-style structure term: the token self-similarity matrices matched, :func:`structure_loss`.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "ZSCORE_EPS",
    "zscore_tokens",
    "sigmoid_time_weight",
    "time_weight_factor",
    "stop_factor",
    "structure_loss",
    "peer_terms",
    "connected_zero",
]

ZSCORE_EPS = 1e-6  # iREPA's constant, added to the std
WEIGHT_SUM_FLOOR = 1e-8  # StableVelocity's: a batch whose weights sum to less has a zero loss


def zscore_tokens(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """iREPA's spatial normalisation of encoder tokens: ``(y - alpha * mean_N y) / (std_N y + 1e-6)``.

    The mean and the (unbiased) standard deviation are taken per sample and channel over the token
    axis, as ``spatial_zscore`` in iREPA's ``ldm/utils.py``.

    Shape:
        y: (B, N, C) with N >= 2. Output: (B, N, C).
    """
    if y.dim() != 3 or y.shape[1] < 2:
        raise ValueError(
            f"target_norm: 'zscore' normalises over the token axis and needs targets of shape (B, N, C) with N >= 2, "
            f"got shape {tuple(y.shape)}; use target_norm='none' for a single token"
        )
    return (y - alpha * y.mean(dim=1, keepdim=True)) / (y.std(dim=1, keepdim=True) + ZSCORE_EPS)


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


def stop_factor(step: int, stop_step: Optional[int], ramp: int) -> float:
    """HASTE's termination with an optional linear ramp: ``clamp((stop_step - step) / (ramp + 1), 0, 1)``.

    1 before the ramp, ``ramp / (ramp + 1), ..., 1 / (ramp + 1)`` over the ``ramp`` calls before
    ``stop_step``, 0 from ``stop_step`` on; ``ramp=0`` is HASTE's hard stop (``step >= stop_step``);
    ``stop_step=None`` never stops.

    Shape:
        step, stop_step, ramp: Python ints. Output: a Python float in [0, 1].
    """
    if stop_step is None:
        return 1.0
    return min(1.0, max(0.0, (stop_step - step) / (ramp + 1)))


def structure_loss(mu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SARA-style structure term: ``mean_{i,j} (cos(mu_i, mu_j) - cos(y_i, y_j))^2`` per sample.

    Matches the token self-similarity (cosine) matrix of the projected tokens to the encoder's;
    ``y`` receives no gradient.

    Shape:
        mu, y: (B, N, C). Output: (B,).
    """
    if mu.shape != y.shape:
        raise ValueError(f"structure_coeff: the structure term needs mu and y of one shape, got {tuple(mu.shape)} and {tuple(y.shape)}")
    m = F.normalize(mu, dim=-1)
    u = F.normalize(y.detach(), dim=-1)
    diff = m @ m.transpose(1, 2) - u @ u.transpose(1, 2)
    return diff.square().mean(dim=(1, 2))


def peer_terms(per_sample: torch.Tensor, mus: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], t: Optional[torch.Tensor],
               cfg, scale: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Add the structure term, apply the time weight and the stop ramp, in that order, per sample.

    ``per_sample + structure_coeff * mean_e structure_loss(mu_e, y_e)``, times
    :func:`time_weight_factor` (``time_weight="sigmoid"``, so the batch mean is the normalised
    weighted mean), times ``scale`` (the :func:`stop_factor`, as a tensor, when ``stop_step`` is set).
    Returns the new per-sample loss and the metrics it adds.

    Shape:
        per_sample: (B,); mus[e], ys[e]: (B, N, C_e); t: (B,) or None; scale: () or None.
        Output: (B,) and a dict of detached scalars.
    """
    metrics: Dict[str, torch.Tensor] = {}
    if cfg.structure_coeff > 0:
        structure = torch.stack([structure_loss(m, y) for m, y in zip(mus, ys)]).mean(0)
        per_sample = per_sample + cfg.structure_coeff * structure
        metrics["loss_structure"] = structure.mean().detach()
    if cfg.time_weight == "sigmoid":
        w = time_weight_factor(t, cfg.time_weight_center, cfg.time_weight_sharpness)
        per_sample = w * per_sample
        metrics["weight/time_min"] = w.min().detach()
    if scale is not None:
        per_sample = scale * per_sample
        metrics["stop_scale"] = scale.detach()
    return per_sample, metrics


def connected_zero(features: Sequence[torch.Tensor], params: Iterable[torch.Tensor]) -> torch.Tensor:
    """An exact per-sample zero that is still connected to ``features`` and ``params``.

    The terminated loss: backward gives every input and parameter a zero gradient (not ``None``),
    so DDP sees the projector's parameters, at the cost of a few sums. Inputs must be finite (the
    value check of ``validate=True`` ensures it: ``0 * inf`` is NaN).

    Shape:
        features[e]: (B, ...). Output: (B,) zeros.
    """
    zero = torch.stack([h.float().flatten(1).sum(1) for h in features]).sum(0) * 0.0
    for p in params:
        if p.requires_grad:
            zero = zero + p.float().sum() * 0.0
    return zero
