"""The sample weight (a per-sample factor): sample-level reward -> per-timestep-bin advantage -> bounded weight.

:func:`sample_weight` runs the stage: the sample-level heads' rewards, their advantages against the
running statistics of their timestep bin (:class:`~vrpo_loss.statistics.TimeBinnedNormalizer`; a
weighted mean over heads), and :func:`bounded_sample_weight`. At ``sample_weight=0`` (the default)
the weights are one and the stage feeds only metrics, so :class:`~vrpo_loss.VRPOAlignment` runs it
on its metric steps only (``metrics_every``): the running statistics then take in one batch in
``metrics_every``, an EMA of the same quantities over a sparser sample (unless a sample head was
passed in ``heads=``).

Token-level advantages (group-relative, GRPO) are pure functions: see
:func:`vrpo_loss.functional.group_advantage` and :func:`~vrpo_loss.functional.candidate_advantage`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..rewards import RewardContext, RewardHead
from ..statistics import TimeBinnedNormalizer
from .bounded import bounded_unit_mean

__all__ = ["bounded_sample_weight", "sample_rewards", "sample_weight"]


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
