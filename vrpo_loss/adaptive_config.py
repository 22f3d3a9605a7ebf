"""Validation of the ``adaptive*`` options of :class:`~vrpo_loss.VRPOConfig` (``vrpo_loss/adaptive.py``).

Kept apart from the controller so that the config can import it without importing the package's modules.
"""

from __future__ import annotations

import math

__all__ = ["ADAPTIVE_CHOICES", "check_adaptive"]

ADAPTIVE_CHOICES = ("none", "agreement", "achievability")


def check_adaptive(cfg) -> None:
    """Validate the ``adaptive*`` fields of a :class:`~vrpo_loss.VRPOConfig` (called by its ``__post_init__``)."""
    if cfg.adaptive not in ADAPTIVE_CHOICES:
        raise ValueError(f"adaptive: expected one of {', '.join(repr(a) for a in ADAPTIVE_CHOICES)}, got {cfg.adaptive!r}")
    if cfg.adaptive == "agreement" and cfg.hidden_dim is None:
        raise ValueError(
            "adaptive: 'agreement' measures the alignment gradient on the diffusion tokens h in front of the projector, so "
            "the module must own the projector (hidden_dim set); a host that hands over only projected tokens (REPA's "
            "zs_tilde) must hand over h instead (tap the block, pass hidden_dim=D, drop the model's projector), or use "
            "adaptive='achievability'"
        )
    if not isinstance(cfg.adaptive_terminate, bool):
        raise ValueError(f"adaptive_terminate: expected a bool, got {cfg.adaptive_terminate!r}")
    if cfg.adaptive_terminate and cfg.adaptive == "none":
        raise ValueError("adaptive_terminate: needs adaptive='agreement' or 'achievability' (its signals), got adaptive='none'")
    if not 0 <= cfg.adaptive_min <= 1 <= cfg.adaptive_max or not math.isfinite(cfg.adaptive_max):
        raise ValueError(
            f"adaptive_min, adaptive_max: expected 0 <= adaptive_min <= 1 <= adaptive_max (finite) so that the mean "
            f"strength can be one, got {cfg.adaptive_min}, {cfg.adaptive_max}"
        )
    if not 0 <= cfg.adaptive_gain < math.inf:
        raise ValueError(f"adaptive_gain: expected a finite value >= 0, got {cfg.adaptive_gain}")
    if cfg.adaptive != "none" and cfg.adaptive_gain == 0 and not cfg.adaptive_terminate:
        raise ValueError("adaptive_gain: 0 without adaptive_terminate changes nothing; use adaptive='none', a gain > 0, or adaptive_terminate=True")
    if not 0 < cfg.adaptive_momentum <= 1:
        raise ValueError(f"adaptive_momentum: expected a value in (0, 1], got {cfg.adaptive_momentum}")
