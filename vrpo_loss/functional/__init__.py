"""Pure tensor functions: the math of VRPO, free of state and configuration.

Every function here is differentiable where it makes sense, computes in the dtype it is given
(callers upcast to fp32), and documents its shapes. The modules of the package store configuration
and state and call these functions.

- :mod:`.core`: cosine per token, REPA's projection loss, tangent projection, token-grid resampling.
- :mod:`.advantage`: group-relative advantages (sampled groups, enumerated candidates).
- :mod:`.correspondence`: the correspondence policy's term, value and gradient in closed form.
- :mod:`.gaussian`: the Gaussian policy's surrogate from sufficient statistics of its noise.
- :mod:`.diagnostics`: the signal fraction (cosine of a gradient with REPA's).

Paper: "Improving Visual Representation Alignment Generation with GRPO", arXiv 2606.00583.
REPA: Yu et al., "Representation Alignment for Generation", ICLR 2025 (github sihyun-yu/REPA).
"""

from .advantage import candidate_advantage, group_advantage
from .core import repa_projection_loss, resample_grid, tangent, token_cosine
from .correspondence import (
    correspondence_logits,
    correspondence_objective,
    normalize_backward,
    with_gradient,
)
from .diagnostics import signal_fraction
from .gaussian import gaussian_semantic_cosine, gaussian_statistics, gaussian_surrogate

__all__ = [
    "candidate_advantage",
    "correspondence_logits",
    "correspondence_objective",
    "gaussian_semantic_cosine",
    "gaussian_statistics",
    "gaussian_surrogate",
    "group_advantage",
    "normalize_backward",
    "repa_projection_loss",
    "resample_grid",
    "signal_fraction",
    "tangent",
    "token_cosine",
    "with_gradient",
]
