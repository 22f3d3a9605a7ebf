"""Token-level reward heads: semantic coherence with the encoder, and decodability of the clean patch."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VRPOConfig
from ..functional import gaussian_semantic_cosine, token_cosine
from .base import RewardContext, RewardHead

__all__ = ["SemanticReward", "DecodabilityReward", "patchify"]


class SemanticReward(RewardHead):
    """Semantic coherence with the encoder: ``cos(z, y)`` per action (``cos(y_i, y_j)`` per candidate)."""

    level = "token"
    name = "semantic"
    uses_step = False

    @classmethod
    def from_config(cls, cfg: VRPOConfig) -> "SemanticReward":
        return cls(weight=cfg.semantic_weight)

    def reward(self, z: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        return token_cosine(z, ctx.targets)

    def candidate_reward(self, ctx: RewardContext) -> torch.Tensor:
        y = ctx.targets
        return torch.bmm(y, y.transpose(1, 2))

    def gaussian_reward(self, half, m0, s0, ctx, *, antithetic) -> Optional[torch.Tensor]:
        """``cos(m0 + s0 eps, y)`` from three reductions of the noise (scalar ``s0`` only)."""
        if s0.dim() != 0:
            return None
        return gaussian_semantic_cosine(half, m0, s0, F.normalize(ctx.targets, dim=-1), antithetic=antithetic)


def patch_grid(shape: Sequence[int], patch: int) -> Tuple[int, int]:
    """``(tokens, values per patch)`` of an x0 of ``shape`` (B, C, H, W) cut by ``patch``; a ValueError
    naming x0 if it is not 4-d or its height and width are not multiples of ``patch``."""
    if len(shape) != 4:
        raise ValueError(f"x0: expected (B, C, H, W), got shape {tuple(shape)}")
    c, h, w = shape[1:]
    if h % patch or w % patch:
        raise ValueError(f"x0: height and width {h}x{w} must be multiples of decodability_patch={patch}")
    return (h // patch) * (w // patch), c * patch * patch


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut an image or latent into non-overlapping patches, in raster order (as SiT/DiT tokens).

    Shape:
        x: (B, C, H, W) -> (B, (H/p) * (W/p), C * p * p).
    """
    patch_grid(x.shape, patch)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


class DecodabilityReward(RewardHead):
    """Fidelity that depends on the action: can the token's clean patch be decoded from ``z``?

    A small MLP per encoder predicts each token's clean patch of ``x0`` from the unit vector of
    ``z``; the reward is minus its mean squared error. The MLP trains on its own supervised loss,
    fitted on ``normalize(mu).detach()`` so that it never pushes the diffusion model.

    Args:
        target_dims: token width of each encoder.
        patch_dim: channels * patch * patch of x0's patches.
        patch: patch size that maps x0's grid to the token grid.
        hidden: hidden width (default: ``VRPOConfig``'s ``decodability_hidden``).
    """

    level = "token"
    name = "decodability"
    uses_step = False

    def __init__(self, *, target_dims: Sequence[int], patch_dim: int, patch: int,
                 hidden: int = VRPOConfig.default("decodability_hidden"), weight: float = 1.0):
        super().__init__(weight=weight)
        self.patch = patch
        self.patch_dim = patch_dim
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, patch_dim)) for c in target_dims
        )

    @classmethod
    def from_config(cls, cfg: VRPOConfig) -> "DecodabilityReward":
        patch_dim = cfg.decodability_channels * cfg.decodability_patch**2
        return cls(target_dims=cfg.target_dims, patch_dim=patch_dim, patch=cfg.decodability_patch,
                   hidden=cfg.decodability_hidden, weight=cfg.decodability_weight)

    def check_inputs(self, ctx: RewardContext, tokens: int) -> None:
        """x0 given, (B, C, H, W), and cut by ``patch`` into ``tokens`` patches of ``patch_dim`` values."""
        x0, p = ctx.x0, self.patch
        if x0 is None:
            raise ValueError("x0: the decodability reward needs the clean input x0 (B, C, H, W); pass x0=... or set decodability_weight=0")
        got = patch_grid(x0.shape, p)
        if got != (tokens, self.patch_dim):
            raise ValueError(
                f"x0: its patches have shape {got} but the heads expect ({tokens}, {self.patch_dim}); "
                "set decodability_patch and decodability_channels so that x0's grid / patch equals the token grid"
            )

    def _patches(self, ctx: RewardContext, n: int) -> torch.Tensor:
        self.check_inputs(ctx, n)
        return patchify(ctx.x0.float(), self.patch)

    def _predict(self, z: torch.Tensor, encoder: int) -> torch.Tensor:
        return self.mlps[encoder](F.normalize(z, dim=-1))

    def reward(self, z: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        target = self._patches(ctx, z.shape[-2])
        return -(self._predict(z, ctx.encoder) - target).pow(2).mean(-1)  # differentiable in z (control variate)

    def candidate_reward(self, ctx: RewardContext) -> torch.Tensor:
        target = self._patches(ctx, ctx.targets.shape[1])
        with torch.no_grad():
            pred = self._predict(ctx.targets, ctx.encoder)  # (B, N, P): prediction from candidate j
            cross = torch.bmm(target, pred.transpose(1, 2))  # [b, i, j] = x_i . pred_j
            sq = target.pow(2).sum(-1, keepdim=True) + pred.pow(2).sum(-1).unsqueeze(1) - 2 * cross
            return -sq / self.patch_dim

    def aux_loss(self, mu: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        target = self._patches(ctx, mu.shape[1])
        return (self._predict(mu.detach(), ctx.encoder) - target).pow(2).mean(dim=(1, 2))
