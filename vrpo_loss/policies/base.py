"""The interface of a policy family, and the weighted sum of token rewards that both families use."""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Sequence, Tuple

import torch
import torch.nn as nn

from ..functional import token_cosine
from ..rewards import RewardContext, RewardHead

__all__ = ["Policy", "Metrics", "Objective", "anchored", "weighted_rewards", "every_step_metrics"]

Metrics = Dict[str, torch.Tensor]


class Objective(NamedTuple):
    """What :meth:`Policy.objective` returns for one encoder.

    Attributes:
        loss: (B,) ``anchor_coeff * anchor_b + policy_coeff * policy_b``, with gradient on ``mu``.
        anchor: (B,) detached ``mean_i (1 - cos(mu_i, y_i))``; policy: (B,) detached policy term.
        metrics: detached scalars.
    """

    loss: torch.Tensor
    anchor: torch.Tensor
    policy: torch.Tensor
    metrics: Dict[str, torch.Tensor]


def every_step_metrics(metrics: Metrics) -> Metrics:
    """The policy metrics reported on every call: ``rewards/<token head>/mean`` (and ``signal_frac`` when computed)."""
    return {k: v for k, v in metrics.items() if k.startswith("rewards/") or k == "signal_frac"}


class Policy(nn.Module):
    """Interface of a policy family: the policy-gradient term it contributes, per sample.

    A policy is built from the config (``from_config``); a call reads everything else from its
    arguments (the step, when it needs one, from ``ctx.step``).
    """

    #: whether :meth:`objective` reads ``ctx.step`` (the owner then passes it; see ``RewardHead.uses_step``)
    uses_step: bool = False

    def objective(
        self, mu: torch.Tensor, ctx: RewardContext, heads: Sequence[RewardHead], *,
        anchor_coeff: float, policy_coeff: float, diagnostics: bool, metrics: bool,
    ) -> Objective:
        """The one entry point of a policy family: the anchor and the policy term of one encoder, per
        sample (a family may fuse the two; :func:`anchored` adds the anchor to a policy term). The
        per-sample factors (sample weight, time weight, ...) are applied by the pipeline, outside.

        Args:
            mu: (B, N, C) fp32 projected tokens, with gradient.
            ctx: reward context; ``ctx.targets`` are the unit encoder tokens (B, N, C).
            heads: the token-level reward heads, each with its ``weight``.
            anchor_coeff, policy_coeff: the coefficients of the two terms.
            diagnostics: also compute the signal-fraction diagnostic.
            metrics: compute every metric; False: only :func:`every_step_metrics`' keys.

        Shape:
            Output: :class:`Objective` of (B,) tensors (the policy term: the group-normalised policy
            gradient at ``rho == 1``) and a dict of detached scalars.
        """
        raise NotImplementedError



def anchored(pg: torch.Tensor, m: Metrics, mu: torch.Tensor, targets: torch.Tensor, *,
             anchor_coeff: float, policy_coeff: float, metrics: bool) -> Objective:
    """A policy term ``pg`` (B,) with REPA's anchor ``mean_n (1 - cos(mu, y))`` added."""
    anchor = (1 - token_cosine(mu, targets)).mean(-1)
    loss = anchor_coeff * anchor + policy_coeff * pg
    return Objective(loss, anchor.detach(), pg.detach(), m if metrics else every_step_metrics(m))


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
        r = r.float() if cast and r.dtype != torch.float32 else r
        each[head.name] = r
        term = r if head.weight == 1 else head.weight * r  # no launch for a multiplication by one
        total = term if total is None else total + term
    if total is None:
        raise ValueError("heads: the policy term needs at least one token-level reward head with weight > 0 (e.g. semantic_weight=1)")
    return total, each
