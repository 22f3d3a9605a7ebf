"""vrpo-loss: reward-guided representation alignment (VRPO) for diffusion transformers.

A drop-in replacement for REPA's projection loss::

    from vrpo_loss import VRPOAlignment
    align = VRPOAlignment(hidden_dim=None, target_dims=(768,))
    proj_loss = align(zs_tilde, zs, t=time_input.flatten(), denoise_loss=denoising_loss).loss

Paper: "Improving Visual Representation Alignment Generation with GRPO", arXiv 2606.00583.
"""

from .alignment import VRPOAlignment, VRPOOutput
from .config import VRPOConfig
from .encoders import FrozenEncoder, check_token_count, encoder_names, load_encoder, preprocess
from .hooks import FeatureTap
from .objective import alignment_loss
from .rewards import RewardContext, RewardHead

__version__ = "0.2.0"

__all__ = [
    "VRPOAlignment",
    "VRPOConfig",
    "VRPOOutput",
    "alignment_loss",
    "RewardHead",
    "RewardContext",
    "FeatureTap",
    "FrozenEncoder",
    "load_encoder",
    "preprocess",
    "encoder_names",
    "check_token_count",
    "__version__",
]
