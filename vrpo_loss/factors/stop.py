"""The stop (a per-sample factor, the same for every sample): HASTE's termination of the alignment.

HASTE (NUS-HPC-AI-Lab/HASTE, arXiv 2505.16792): alignment terminated at a fixed step (``stop_step``),
optionally ramped down over ``stop_ramp`` calls, :func:`stop_factor`; the terminated loss is
:func:`connected_zero`.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

__all__ = ["connected_zero", "stop_factor"]


def stop_factor(step: int, stop_step: Optional[int], ramp: int) -> float:
    """HASTE's termination with an optional linear ramp: ``clamp((stop_step - step) / (ramp + 1), 0, 1)``.

    1 before the ramp, ``ramp / (ramp + 1), ..., 1 / (ramp + 1)`` over the ``ramp`` calls before
    ``stop_step``, 0 from ``stop_step`` on; ``ramp=0`` is HASTE's hard stop (``step >= stop_step``);
    ``stop_step=None`` never stops.

    Shape:
        step, stop_step, ramp: Python ints. Output: a Python float in [0, 1].
    """
    if stop_step is None:
        return 1.0
    return min(1.0, max(0.0, (stop_step - step) / (ramp + 1)))


def connected_zero(features: Sequence[torch.Tensor], params: Iterable[torch.Tensor]) -> torch.Tensor:
    """An exact per-sample zero that is still connected to ``features`` and ``params``.

    The terminated loss: backward gives every input and parameter a zero gradient (not ``None``),
    so DDP sees the projector's parameters, at the cost of a few sums. Inputs must be finite (the
    value check of ``validate=True`` ensures it: ``0 * inf`` is NaN).

    Shape:
        features[e]: (B, ...). Output: (B,) zeros.
    """
    zero = torch.stack([h.float().flatten(1).sum(1) for h in features]).sum(0) * 0.0
    for p in params:
        if p.requires_grad:
            zero = zero + p.float().sum() * 0.0
    return zero
