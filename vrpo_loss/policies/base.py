"""The interface of a policy family, and the weighted sum of token rewards that both families use."""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn as nn

from ..rewards import RewardContext, RewardHead

__all__ = ["Policy", "Metrics", "weighted_rewards"]

Metrics = Dict[str, torch.Tensor]


class Policy(nn.Module):
    """Interface of a policy family: the policy-gradient term it contributes, per sample.

    A policy is built from the config (``from_config``); a call reads everything else from its
    arguments (the step, when it needs one, from ``ctx.step``).
    """

    #: whether :meth:`term` reads ``ctx.step`` (the owner then passes it; see ``RewardHead.uses_step``)
    uses_step: bool = False

    def term(
        self, mu: torch.Tensor, ctx: RewardContext, heads: Sequence[RewardHead], weight: torch.Tensor, *, diagnostics: bool
    ) -> Tuple[torch.Tensor, Metrics]:
        """Per-sample policy loss (the group-normalised policy gradient at ``rho == 1``) and detached metrics.

        Args:
            mu: (B, N, C) fp32 projected tokens, with gradient.
            ctx: reward context; ``ctx.targets`` are the unit encoder tokens (B, N, C).
            heads: the token-level reward heads, each with its ``weight``.
            weight: (B,) per-sample weights w_b (detached).
            diagnostics: also compute the signal-fraction diagnostic.

        Shape:
            Output: (B,) and a dict of scalars.
        """
        raise NotImplementedError


def weighted_rewards(
    heads: Sequence[RewardHead], reward: Callable[[RewardHead], torch.Tensor], *, cast: bool = True
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``sum_h weight_h * reward(h)`` and each head's reward (fp32 when ``cast``), keyed by name.

    Shape:
        each reward: any shape, the same for every head. Output: that shape, and a dict of them.
    """
    total, each = None, {}
    for head in heads:
        r = reward(head)
        r = r.float() if cast else r
        each[head.name] = r
        total = head.weight * r if total is None else total + head.weight * r
    if total is None:
        raise ValueError("heads: the policy term needs at least one token-level reward head with weight > 0 (e.g. semantic_weight=1)")
    return total, each
