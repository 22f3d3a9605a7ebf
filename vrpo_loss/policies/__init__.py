"""Policies over aligned representations, and the policy-gradient term each one contributes.

Every policy has one entry point, :meth:`Policy.objective`: given the projected tokens ``mu`` (with
gradient), the unit encoder tokens and the token-level reward heads, it returns the per-sample
anchor and policy terms and detached metrics (:meth:`Policy.term`: the policy term alone). A user's
subclass can be passed to ``VRPOAlignment(policy=...)``. With one on-policy update per batch the PPO ratio is 1 in value,
so the term is the group-normalised policy gradient.

- :class:`GaussianPolicy` (``gaussian.py``, its noise in ``noise.py``) samples ``G`` actions per token.
- :class:`CorrespondencePolicy` (``correspondence.py``) is categorical over the encoder tokens of
  the same image, with exact expectations.

The closed forms both use live in :mod:`vrpo_loss.functional`.
"""

from typing import Any, Dict, Optional

import torch.nn as nn

from ..config import VRPOConfig
from .base import Policy, weighted_rewards
from .correspondence import CorrespondencePolicy
from .gaussian import GaussianPolicy
from .noise import ChunkedNoise

__all__ = ["Policy", "GaussianPolicy", "CorrespondencePolicy", "ChunkedNoise", "policy_from_config", "take_policy",
           "weighted_rewards"]


def take_policy(options: Dict[str, Any]) -> Optional[Policy]:
    """A :class:`Policy` instance given as ``options["policy"]`` (``VRPOAlignment(policy=...)``), replaced
    there by ``"custom"`` (the config's name for it); None when the option is absent or a string."""
    value = options.get("policy")
    if not isinstance(value, nn.Module):
        return None
    if not isinstance(value, Policy):
        raise TypeError(f"policy: expected a string or a vrpo_loss.policies.Policy, got {type(value).__name__}; "
                        "subclass Policy and implement objective()")
    options["policy"] = "custom"
    return value


def policy_from_config(cfg: VRPOConfig) -> Policy:
    """The policy that ``cfg.policy`` names (``"custom"``: the caller passes its own instance)."""
    if cfg.policy == "custom":
        raise ValueError("policy: 'custom' names a policy passed as an instance, got none; pass policy=<a Policy "
                         "instance> to VRPOAlignment (the config then says 'custom'), or use 'correspondence' or 'gaussian'")
    return {"gaussian": GaussianPolicy, "correspondence": CorrespondencePolicy}[cfg.policy].from_config(cfg)
