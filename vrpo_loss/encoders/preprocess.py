"""Image preprocessing for target encoders, identical to REPA's ``preprocess_raw_image``.

REPA (Yu et al., ICLR 2025, https://github.com/sihyun-yu/REPA) feeds each encoder raw ``uint8``
images resized to ``224 * (resolution // 256)`` pixels (DINOv2, CLIP, I-JEPA) or at the native
resolution (MAE, MoCo v3, DINOv1), with the encoder's normalisation. The order of operations is
REPA's, including its quirk: DINOv2 normalises *before* the bicubic resize, CLIP *after*.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .registry import family_of

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
CLIP_DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["preprocess", "encoder_input_size"]


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    # Same operations as torchvision.transforms.Normalize: (x - mean) / std per channel.
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def encoder_input_size(encoder_name: str, resolution: int) -> int:
    """Side in pixels of the image the encoder sees for a diffusion ``resolution`` (REPA's rule).

    DINOv2 and CLIP: ``224 * (resolution // 256)``; MAE and MoCo v3: ``resolution`` itself.
    """
    family = family_of(encoder_name)
    if family in ("dinov2", "clip"):
        size = 224 * (resolution // 256)
        if size == 0:
            raise ValueError(
                f"resolution: REPA resizes images for {encoder_name!r} to 224 * (resolution // 256) "
                f"pixels, which is 0 for resolution={resolution}; expected resolution >= 256. "
                f"Hint: pass size= to preprocess() to choose the encoder's input side yourself."
            )
        return size
    return int(resolution)


def preprocess(
    images: torch.Tensor, encoder_name: str, *, size: Optional[int] = None
) -> torch.Tensor:
    """Resize and normalise raw images for ``encoder_name`` exactly as REPA's ``preprocess_raw_image``.

    Args:
        images: raw images, ``uint8`` (or float) with values in [0, 255].
        encoder_name: a REPA encoder name such as ``"dinov2-vit-b"`` (only its family matters).
        size: side of the resized image; default REPA's ``224 * (resolution // 256)`` for DINOv2
            and CLIP, with ``resolution = images.shape[-1]``. Ignored by MAE and MoCo v3, which
            see the images at their own resolution, as in REPA.

    Shape:
        - images: (B, 3, H, W)
        - output: (B, 3, S, S) float, ``S`` as above (H, W for MAE and MoCo v3).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images: expected shape (B, 3, H, W) with raw RGB values in [0, 255], "
            f"got {tuple(images.shape)}"
        )
    family = family_of(encoder_name)
    x = images if images.is_floating_point() else images.float()
    resolution = x.shape[-1]
    if family == "clip":
        side = size if size is not None else encoder_input_size(encoder_name, resolution)
        x = x / 255.0
        x = F.interpolate(x, side, mode="bicubic")
        x = _normalize(x, CLIP_DEFAULT_MEAN, CLIP_DEFAULT_STD)
    elif family == "dinov2":
        side = size if size is not None else encoder_input_size(encoder_name, resolution)
        x = x / 255.0
        x = _normalize(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        x = F.interpolate(x, side, mode="bicubic")
    else:  # mae, mocov3: no resize
        x = x / 255.0
        x = _normalize(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return x
