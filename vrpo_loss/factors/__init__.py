"""Stage 4 of the pipeline, the per-sample factors: one file each, multiplied in one place.

Every alignment term of a sample (REPA's cosine, the policy term, the structure term) is scaled by
one factor ``f_b``, the product of those that are on (:func:`combine`):

- :mod:`.time_weight`: VA-REPA's timestep gate, ``B * w_b / sum w`` with ``w = sigmoid(k (c - t))``;
- :mod:`.stop`: HASTE's stop (a ramp to zero at ``stop_step``), one value for the batch;
- :mod:`.sample_weight`: the bounded weight from sample-level rewards, normalised per timestep bin;
- :mod:`.adaptive`: the adaptive strength per timestep bin from running reward statistics.

The time weight and the stop are functions of ``t`` and of the step; the sample weight and the
adaptive strength carry running statistics, so :class:`~vrpo_loss.VRPOAlignment` computes them and
:func:`~vrpo_loss.objective.alignment_loss` takes them as tensors. :mod:`.bounded` is the one rule of
a bounded factor with mean one, shared by the last two.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["combine"]


def combine(*factors: Optional[Union[torch.Tensor, float]]) -> Optional[torch.Tensor]:
    """The product of the per-sample factors that are on (None: off, weight one); None if none is on.

    A float factor of exactly 1.0 is off as well (no launch for a multiplication by one).

    Shape:
        each: (B,), a 0-dim tensor or a float. Output: (B,) (or 0-dim when every factor is), or None.
    """
    out = None
    for f in factors:
        if f is None or (isinstance(f, float) and f == 1.0):
            continue
        out = f if out is None else out * f
    if isinstance(out, float):
        out = torch.tensor(out)
    return out
