"""What :class:`~vrpo_loss.VRPOAlignment` saves besides tensors, and what loading it checks.

The module's extra state (``state_dict()["_extra_state"]``) holds the step counter (``step`` and the
call's position within the step, ``micro``) and ``config``: every option the module was built with,
as plain Python values (``torch.load(weights_only=True)`` reads them). On load the counter is restored
and the saved options are compared with the module's own: each option that differs is named in one
``UserWarning``. The module keeps its own options: a warning, not an error, so that a run can be
resumed with an option changed on purpose (a later ``stop_step``, say). Checkpoints of the first
releases hold no config (``{"step"}`` or ``{"step", "seed"}``, see :mod:`vrpo_loss.compat`) and load
without the check.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Tuple

from .step import StepClock

__all__ = ["config_differences", "extra_state", "restore_extra_state"]


def extra_state(clock: StepClock, config: Any) -> Dict[str, Any]:
    """``{"step", "micro", "config"}``: the counter and every option of ``config`` (a ``VRPOConfig``)."""
    return {**clock.state(), "config": {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}}


def _differs(saved: Any, current: Any) -> bool:
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        return tuple(saved) != tuple(current)
    return saved != current


def config_differences(saved: Dict[str, Any], config: Any) -> Tuple[List[str], List[str]]:
    """The saved options that differ from ``config``'s (``"name=saved (this module: current)"``), and the
    saved names this version does not know."""
    known = {f.name for f in dataclasses.fields(config)}
    differ = [f"{k}={v!r} (this module: {getattr(config, k)!r})" for k, v in saved.items()
              if k in known and _differs(v, getattr(config, k))]
    return differ, sorted(set(saved) - known)


def restore_extra_state(clock: StepClock, config: Any, state: Dict[str, Any]) -> None:
    """Restore the counter from ``state``; warn naming each saved option that differs from ``config``."""
    clock.load(state)
    saved = state.get("config")
    if not isinstance(saved, dict):
        return
    differ, unknown = config_differences(saved, config)
    if differ or unknown:
        parts = ([f"saved with {', '.join(differ)}"] if differ else []) + (
            [f"options unknown to this version: {', '.join(unknown)}"] if unknown else [])
        warnings.warn(
            f"VRPOAlignment.load_state_dict: the checkpoint's config differs from this module's: {'; '.join(parts)}. "
            "The module keeps its own options and the loaded state (step, statistics, parameters); if the change "
            "is not deliberate, build the module with the saved values before loading", UserWarning, stacklevel=2)
