"""What a reward head is: :class:`RewardHead` and the :class:`RewardContext` it reads."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["RewardContext", "RewardHead"]


@dataclass
class RewardContext:
    """What a head may read. Every tensor is fp32 and detached, except where noted.

    Attributes:
        targets: (B, N, C) unit-normalised tokens of the current encoder (None for sample heads).
        encoder: index of the current encoder.
        t: (B,) time in [0, 1], 0 = clean data, or None.
        denoise_loss: (B,) per-sample denoising loss, or None.
        x0_pred: predicted clean input (B, ...), or None.
        x0: clean input (B, ...), or None.
        step: training steps taken so far by the module; None when not given, and when no head of
            the module declares ``uses_step`` (the step is then not read at all, so ``torch.compile``
            does not recompile the module as it advances).
    """

    targets: Optional[torch.Tensor] = None
    encoder: int = 0
    t: Optional[torch.Tensor] = None
    denoise_loss: Optional[torch.Tensor] = None
    x0_pred: Optional[torch.Tensor] = None
    x0: Optional[torch.Tensor] = None
    step: Optional[int] = None


class RewardHead(nn.Module):
    """Base class of reward heads.

    A token head implements :meth:`reward`, the reward of an action ``z`` for each token. The
    policies need nothing else: the correspondence policy's candidate ``j`` of token ``i`` is the
    action ``z = y_j``. A head may add fast paths that give the same values: :meth:`candidate_reward`
    (all candidates at once) and :meth:`gaussian_reward` (a Gaussian chunk from its noise). A sample
    head implements :meth:`sample_reward`.

    Args:
        weight: the head's weight in the weighted sum of rewards of its level.
        name: key under which its metrics are reported (``rewards/<name>/mean``).

    Class attributes:
        level: ``"token"`` or ``"sample"``.
        uses_step: whether the head reads ``ctx.step``. Keep the default (True) if it does; a head
            that does not may set it False, and when no head of a module reads the step, the
            module's compiled graph does not depend on it (``torch.compile`` would otherwise
            recompile at every step, since the step is a Python int).
    """

    level: str = "token"
    name: str = "head"
    uses_step: bool = True

    def __init__(self, *, weight: float = 1.0, name: Optional[str] = None):
        super().__init__()
        if not (isinstance(weight, numbers.Real) and not isinstance(weight, bool) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight: expected a finite value >= 0, got {weight!r}")
        self.weight = float(weight)
        if name is not None:
            self.name = name
        if self.level not in ("token", "sample"):
            raise ValueError(f"level: expected 'token' or 'sample', got {self.level!r}")

    def reward(self, z: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        """Token level: the reward of action ``z`` for each token (unit vectors in the 'sphere' space).

        Shape:
            z: (G, B, N, C). Output: (G, B, N).
        """
        raise NotImplementedError(f"{type(self).__name__} does not score actions")

    def candidate_reward(self, ctx: RewardContext) -> torch.Tensor:
        """The reward of choosing target ``j`` for token ``i``: :meth:`reward` at ``z = y_j``, in chunks of ``j``.

        Override with a closed form when there is one (same values, less work).

        Shape:
            Output: (B, N, N), indexed [b, i, j].
        """
        y = ctx.targets
        b, n, c = y.shape
        k = max(1, (1 << 26) // max(1, b * n * c))  # candidates per call under a memory bound
        cols = [self.reward(y[:, j : j + k].transpose(0, 1).unsqueeze(2).expand(-1, b, n, c), ctx) for j in range(0, n, k)]
        return torch.cat(cols).permute(1, 2, 0)

    def gaussian_reward(
        self, half: torch.Tensor, m0: torch.Tensor, s0: torch.Tensor, ctx: RewardContext, *, antithetic: bool
    ) -> Optional[torch.Tensor]:
        """Optional fast path: the rewards of actions ``m0 + s0 * eps`` from the noise alone, or None.

        None (the default) tells the Gaussian policy to materialise the actions and call :meth:`reward`.

        Shape:
            half: (K, B, N, C) noise; m0: (B, N, C). Output: (2K, B, N) when antithetic (``half``
            then ``-half``), else (K, B, N).
        """
        return None

    def sample_reward(self, ctx: RewardContext) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """Sample level: ``(reward, mask)`` or None when the head has nothing to say this step.

        Shape:
            reward: (B,); mask: (B,) bool of the samples that were scored, or None for all.
        """
        raise NotImplementedError(f"{type(self).__name__} does not score samples")

    def check_inputs(self, ctx: RewardContext, tokens: int) -> None:
        """Raise a ``ValueError`` when an input this head needs is missing or of the wrong shape.

        Metadata only (no data read). The module calls it on every head before any work, so a
        refused call leaves the running statistics and the step counter as they were.

        Shape:
            tokens: N, the token count of the encoder the head will score.
        """

    def aux_loss(self, mu: torch.Tensor, ctx: RewardContext) -> Optional[torch.Tensor]:
        """A supervised loss of the head's own, per sample, or None.

        Shape:
            mu: (B, N, C) projected tokens (with gradient; detach what must not train).
            Output: (B,).
        """
        return None
