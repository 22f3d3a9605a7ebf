"""Policies over aligned representations, and the policy-gradient term each one contributes.

Both families share one interface, :meth:`Policy.term`: given the projected tokens ``mu`` (with
gradient), the unit encoder tokens and the token-level reward heads, it returns the per-sample
policy loss and detached metrics. With one on-policy update per batch the PPO ratio is 1 in value,
so the term is the group-normalised policy gradient.

- :class:`GaussianPolicy` (``gaussian.py``, its noise in ``noise.py``) samples ``G`` actions per token.
- :class:`CorrespondencePolicy` (``correspondence.py``) is categorical over the encoder tokens of
  the same image, with exact expectations.

The closed forms both use live in :mod:`vrpo_loss.functional`.
"""

from ..config import VRPOConfig
from .base import Policy, weighted_rewards
from .correspondence import CorrespondencePolicy
from .gaussian import GaussianPolicy
from .noise import ChunkedNoise

__all__ = ["Policy", "GaussianPolicy", "CorrespondencePolicy", "ChunkedNoise", "policy_from_config", "weighted_rewards"]


def policy_from_config(cfg: VRPOConfig) -> Policy:
    """The policy that ``cfg.policy`` names."""
    return {"gaussian": GaussianPolicy, "correspondence": CorrespondencePolicy}[cfg.policy].from_config(cfg)
