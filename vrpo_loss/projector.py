"""Projectors: map diffusion tokens to an encoder's token space.

- ``"mlp"``: REPA's projector, the layout of ``build_mlp`` in REPA's ``models/sit.py``: Linear D->P,
  SiLU, Linear P->P, SiLU, Linear P->C, so a REPA checkpoint's projector weights load into it unchanged.
- ``"conv"``: iREPA's projector (arXiv 2512.10794; ``ProjectionLayer`` in End2End-Diffusion/iREPA's
  ``jit/projectors.py`` and ``ldm/models/sit.py``): one ``Conv2d(D, C, k, padding=k // 2)`` over the
  row-major token grid, so each projected token sees its neighbours. (The first release's three-layer
  variant with the MLP's widths is retired: see CHANGELOG.md.)
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .config import VRPOConfig

__all__ = ["build_projector", "ConvProjector", "grid_shape", "projectors_from_config"]


def grid_shape(n: int, token_grid: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """(H, W) of a row-major grid of ``n`` tokens: ``token_grid``, or a square when it is None."""
    if token_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"token_grid: {n} tokens are not a square grid; pass token_grid=(H, W) with H * W = {n} for the conv projector"
            )
        return side, side
    h, w = token_grid
    if h * w != n:
        raise ValueError(f"token_grid: (H, W) = ({h}, {w}) holds {h * w} tokens, got {n} tokens")
    return h, w


class ConvProjector(nn.Module):
    """iREPA's projector: one convolution of kernel ``kernel`` over the (H, W) token grid.

    Shape:
        input (B, N, hidden_dim), N = H * W row-major -> output (B, N, target_dim).
    """

    def __init__(self, hidden_dim: int, target_dim: int, *, kernel: int, token_grid: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.token_grid = token_grid
        self.conv = nn.Conv2d(hidden_dim, target_dim, kernel_size=kernel, padding=kernel // 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        gh, gw = grid_shape(n, self.token_grid)
        x = self.conv(h.transpose(1, 2).reshape(b, d, gh, gw))
        return x.flatten(2).transpose(1, 2)


def build_projector(hidden_dim: int, target_dim: int, projector_dim: int = VRPOConfig.default("projector_dim"), *,
                    kind: str = VRPOConfig.default("projector"), kernel: int = VRPOConfig.default("projector_kernel"),
                    token_grid: Optional[Tuple[int, int]] = None) -> nn.Module:
    """REPA's projector MLP (``kind="mlp"``, widths D -> P -> P -> C), or iREPA's convolution (``kind="conv"``,
    D -> C; ``projector_dim`` unused).

    Shape:
        input (..., hidden_dim) -> output (..., target_dim); ``"conv"``: (B, N, hidden_dim) only.
    """
    if kind == "conv":
        return ConvProjector(hidden_dim, target_dim, kernel=kernel, token_grid=token_grid)
    if kind != "mlp":
        raise ValueError(f"projector: expected 'mlp' or 'conv', got {kind!r}")
    return nn.Sequential(
        nn.Linear(hidden_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, target_dim),
    )


def projectors_from_config(cfg: VRPOConfig) -> Optional[nn.ModuleList]:
    """One projector per encoder as ``cfg`` asks (``hidden_dim=None``: none, the host projects)."""
    if cfg.hidden_dim is None:
        return None
    return nn.ModuleList(build_projector(cfg.hidden_dim, c, cfg.projector_dim, kind=cfg.projector,
                                         kernel=cfg.projector_kernel, token_grid=cfg.token_grid)
                         for c in cfg.target_dims)
