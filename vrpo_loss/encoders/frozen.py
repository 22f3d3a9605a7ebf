"""A frozen target encoder that gives patch tokens the way REPA uses them."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .preprocess import preprocess
from .registry import EncoderSpec

__all__ = ["FrozenEncoder", "check_token_count"]

# How the patch tokens are read out of the wrapped model.
_READOUTS = ("timm_norm", "timm_prenorm", "hub_dinov2", "hf")


def check_token_count(num_encoder_tokens: int, num_model_tokens: int, *, encoder_name: str = "encoder") -> None:
    """Raise a ``ValueError`` naming both counts when encoder and diffusion tokens differ.

    REPA aligns token ``i`` of the diffusion model with patch token ``i`` of the encoder, so the
    two grids must be the same size.
    """
    if int(num_encoder_tokens) == int(num_model_tokens):
        return
    ge, gm = num_encoder_tokens ** 0.5, num_model_tokens ** 0.5
    raise ValueError(
        f"tokens: {encoder_name} gives {num_encoder_tokens} patch tokens (a {ge:g}x{ge:g} grid) but "
        f"the diffusion model has {num_model_tokens} tokens (a {gm:g}x{gm:g} grid); they must match "
        f"one to one. Hint: REPA's setting is 256x256 images (32x32 latents) with patch size 2, "
        f"giving 256 tokens on both sides (512x512: 1024). Change the diffusion model's patch size "
        f"or the image resolution, or load the encoder with resolution= equal to the training "
        f"resolution so that its grid is resampled to match."
    )


class FrozenEncoder(nn.Module):
    """A pretrained image encoder, frozen and in eval mode, that returns patch tokens.

    Build it with :func:`vrpo_loss.encoders.load_encoder`. ``forward_tokens`` takes images
    already preprocessed (as REPA's ``encoder.forward_features``); ``forward`` takes raw images
    in [0, 255] and applies :func:`preprocess` first. ``train()`` keeps it in eval mode.

    Attributes:
        name: REPA-style encoder name (decides preprocessing).
        embed_dim: token width ``C``.
        patch_size: patch side in pixels.
        input_size: side of the preprocessed image it expects.
        num_tokens: patch tokens per image, ``(input_size // patch_size) ** 2``.
        model: the wrapped network.

    Shape:
        - forward_tokens: (B, 3, input_size, input_size) -> (B, num_tokens, embed_dim)
        - forward: (B, 3, R, R) raw images -> (B, num_tokens, embed_dim)
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        spec: EncoderSpec,
        readout: str,
        input_size: int,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        if readout not in _READOUTS:
            raise ValueError(f"readout: expected one of {_READOUTS}, got {readout!r}")
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.input_size = int(input_size)
        self.num_tokens = (self.input_size // self.patch_size) ** 2
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.readout = readout
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":  # noqa: D401 - frozen by design
        """Stays in eval mode whatever ``mode`` is: the encoder is a fixed target."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, input_size={self.input_size}, num_tokens={self.num_tokens}"

    def forward_tokens(self, images: torch.Tensor, *, num_tokens: Optional[int] = None) -> torch.Tensor:
        """Patch tokens of preprocessed images, as REPA reads them.

        DINOv2: the final-normed patch tokens (``x_norm_patchtokens``, registers and CLS dropped);
        CLIP: the last block's tokens before ``ln_post``, CLS dropped; MAE: the last block's tokens
        without the final norm, CLS dropped; MoCo v3: the final-normed tokens, CLS dropped.

        Args:
            images: preprocessed images (see :func:`preprocess`).
            num_tokens: if given, the diffusion model's token count, checked against the encoder's.

        Shape:
            - images: (B, 3, input_size, input_size)
            - output: (B, N, embed_dim), ``N = (input_size // patch_size) ** 2``
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"images: {self.name} expects {self.input_size}x{self.input_size} inputs, got "
                f"{images.shape[-2]}x{images.shape[-1]}. Hint: pass raw images through "
                f"vrpo_loss.encoders.preprocess(images, {self.name!r}) or call the encoder itself, "
                f"and load it with resolution= equal to the raw image resolution."
            )
        m = self.model
        if self.readout == "hub_dinov2":
            z = m.forward_features(images)["x_norm_patchtokens"]
        elif self.readout == "hf":
            z = m(pixel_values=images).last_hidden_state[:, self.num_prefix_tokens:]
        else:
            x = m.patch_embed(images)
            x = m._pos_embed(x)
            x = m.patch_drop(x)
            x = m.norm_pre(x)
            x = m.blocks(x)
            if self.readout == "timm_norm":
                x = m.norm(x)
            z = x[:, self.num_prefix_tokens:]
        if num_tokens is not None:
            check_token_count(z.shape[1], num_tokens, encoder_name=self.name)
        return z

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """REPA's preprocessing for this encoder (see :func:`vrpo_loss.encoders.preprocess`)."""
        size = self.input_size if self.spec.family in ("dinov2", "clip") else None
        return preprocess(images, self.name, size=size)

    def forward(self, images: torch.Tensor, *, num_tokens: Optional[int] = None) -> torch.Tensor:
        """Patch tokens of raw images in [0, 255] (``uint8`` or float)."""
        return self.forward_tokens(self.preprocess(images), num_tokens=num_tokens)
