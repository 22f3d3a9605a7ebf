"""The step counter: which optimizer step a call of :class:`~vrpo_loss.VRPOAlignment` belongs to.

Everything the module schedules reads one counter, in optimizer steps: ``stop_step`` and ``stop_ramp``
(HASTE), ``metrics_every``, ``diagnostics_every``, ``perceptual_every``, the Gaussian policy's sigma
schedule and its noise seed. HASTE's ``--early-stop-point`` counts optimizer steps too.

- A call counts only when the module is training and gradients are enabled: validation calls (under
  ``torch.no_grad()`` or in eval mode) leave the counter alone.
- With ``accumulation_steps = A`` (a host that accumulates gradients over A micro-batches per
  optimizer step), A counted calls make one step: calls 0..A-1 belong to step 0, A..2A-1 to step 1.
- A host that knows its optimizer step may pass it instead, ``align(..., step=k)``: the counter is set
  to ``k`` and the call counts within step ``k`` (the counter does not then roll over by itself, so
  ``accumulation_steps`` does not matter). Pass it on every call, or never.

The counter is not a tensor (reading it costs no synchronisation) and travels in ``state_dict``
through the module's extra state. Within a step, the counted calls are numbered (``micro``), so the
micro-batches of one step draw different Gaussian noise.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict

__all__ = ["StepClock", "check_step"]


def check_step(step: Any) -> int:
    """``step`` as an int >= 0, or a TypeError/ValueError naming it."""
    if not isinstance(step, numbers.Integral) or isinstance(step, bool):
        raise TypeError(f"step: expected an int (the optimizer step this call belongs to), got {type(step).__name__} {step!r}")
    if step < 0:
        raise ValueError(f"step: expected an int >= 0 (the optimizer step this call belongs to), got {step}")
    return int(step)


class StepClock:
    """The optimizer step and the counted calls within it (see the module docstring).

    Args:
        accumulation_steps: counted calls per optimizer step when the host does not pass ``step=``.

    Attributes:
        step: the optimizer step of the next call.
        micro: counted calls already made within ``step``.
    """

    def __init__(self, accumulation_steps: int = 1):
        self.accumulation_steps = int(accumulation_steps)
        self.step = 0
        self.micro = 0

    def set(self, step: int) -> None:
        """The host says which step this call belongs to: a new step starts its count of calls at 0."""
        step = check_step(step)
        if step != self.step:
            self.step, self.micro = step, 0

    def count(self, *, explicit: bool) -> None:
        """One counted call (training, gradients enabled) is done; ``explicit``: its step was passed."""
        self.micro += 1
        if not explicit and self.micro >= self.accumulation_steps:
            self.step, self.micro = self.step + 1, 0

    def state(self) -> Dict[str, int]:
        return {"step": self.step, "micro": self.micro}

    def load(self, state: Dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.micro = int(state.get("micro", 0))  # checkpoints before accumulation_steps have no "micro"

    def __repr__(self) -> str:
        return f"StepClock(step={self.step}, micro={self.micro}, accumulation_steps={self.accumulation_steps})"
