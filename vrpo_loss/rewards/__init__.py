"""Reward heads: what VRPO rewards, at the level of tokens or of whole samples.

A head declares its ``level`` and carries a ``weight``:

- ``"token"`` heads score each action of a token, so they vary within a group and shape the
  direction in which ``mu`` moves. They implement :meth:`RewardHead.reward`; for the
  correspondence policy a candidate target ``y_j`` is the action ``z = y_j``, and a head may
  offer faster closed forms of the same values (:meth:`RewardHead.candidate_reward`,
  :meth:`RewardHead.gaussian_reward`).
- ``"sample"`` heads score a whole sample, the same for every action of its tokens, so they set how
  strongly each sample is aligned (through the per-sample weight). They implement
  :meth:`RewardHead.sample_reward`.

A head may also have a supervised loss of its own (:meth:`RewardHead.aux_loss`, per sample), added
to the objective. To add your own reward, subclass :class:`RewardHead` and pass an instance in
``VRPOAlignment(heads=[...])``; a CPU unit test of a head needs only tensors.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch.nn as nn

from ..config import VRPOConfig
from .base import RewardContext, RewardHead
from .sample import FidelityReward, PerceptualReward
from .token import DecodabilityReward, SemanticReward, patchify

__all__ = [
    "RewardContext",
    "RewardHead",
    "SemanticReward",
    "DecodabilityReward",
    "FidelityReward",
    "PerceptualReward",
    "heads_from_config",
    "patchify",
]


def heads_from_config(
    cfg: VRPOConfig, extra: Sequence[RewardHead] = (), *, decode: Optional[Callable] = None,
    perceptual_net: Optional[nn.Module] = None,
) -> Tuple[List[RewardHead], List[RewardHead]]:
    """The built-in heads whose weight is above zero, then ``extra``, split into (token, sample) heads."""
    token: List[RewardHead] = []
    sample: List[RewardHead] = []
    if cfg.semantic_weight > 0:
        token.append(SemanticReward.from_config(cfg))
    if cfg.decodability_weight > 0:
        token.append(DecodabilityReward.from_config(cfg))
    if cfg.fidelity_weight > 0:
        sample.append(FidelityReward.from_config(cfg))
    if cfg.perceptual_weight > 0:
        sample.append(PerceptualReward.from_config(cfg, decode=decode, net=perceptual_net))
    for h in extra:
        if not isinstance(h, RewardHead):
            raise TypeError(f"heads: expected RewardHead instances, got {type(h).__name__}")
        (token if h.level == "token" else sample).append(h)
    return token, sample
