"""REPA's projector: the MLP that maps diffusion tokens to an encoder's token space.

Same layout as ``build_mlp`` in REPA's ``models/sit.py``: Linear D->P, SiLU, Linear P->P, SiLU,
Linear P->C, so a REPA checkpoint's projector weights load into it unchanged.
"""

from __future__ import annotations

import torch.nn as nn

from .config import VRPOConfig

__all__ = ["build_projector"]


def build_projector(hidden_dim: int, target_dim: int, projector_dim: int = VRPOConfig.default("projector_dim")) -> nn.Sequential:
    """REPA's projector MLP.

    Shape:
        input (..., hidden_dim) -> output (..., target_dim).
    """
    return nn.Sequential(
        nn.Linear(hidden_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, target_dim),
    )
