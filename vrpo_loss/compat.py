"""Loading checkpoints written by earlier versions of the package.

In the first release (0.1.0) the Gaussian policy's noise seed travelled in the module's own extra state
(``{"step", "seed"}``); it now lives in the policy's (``policy._extra_state``). The pre-hook below
moves an old seed to its new place, so an old checkpoint loads strictly and the run continues with
the noise it would have drawn.
"""
from __future__ import annotations

from torch import nn


def migrate_policy_seed(module, state_dict, prefix, *args) -> None:
    """``load_state_dict`` pre-hook of ``VRPOAlignment``: an old module-level seed becomes the policy's."""
    old, new = prefix + "_extra_state", prefix + "policy._extra_state"
    state = state_dict.get(old)
    if isinstance(state, dict) and "seed" in state and new not in state_dict:
        if type(module.policy).get_extra_state is not nn.Module.get_extra_state:  # a policy with a seed (Gaussian)
            state_dict[new] = {"seed": int(state["seed"])}
