"""Names of the target encoders REPA supports that can be had publicly, and what they are.

Names follow REPA's ``--enc-type`` (``<family>-<arch>-<size>``): ``dinov2-vit-b``,
``dinov2reg-vit-b`` (with registers), ``clip-vit-L``, ``mae-vit-l``, ``mocov3-vit-b``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["EncoderSpec", "ENCODERS", "encoder_names", "get_spec", "family_of"]


@dataclass(frozen=True)
class EncoderSpec:
    """Static facts about one encoder.

    Attributes:
        name: REPA-style name.
        family: ``dinov2``, ``clip``, ``mae`` or ``mocov3``.
        size: ``s``, ``b``, ``l`` or ``g``.
        embed_dim: width ``C`` of its tokens.
        depth: number of transformer blocks.
        num_heads: attention heads.
        patch_size: patch side in pixels.
        registers: number of register tokens (DINOv2 with registers: 4).
        timm_name: timm architecture used to build it.
        hub_name: ``torch.hub`` entry point in ``facebookresearch/dinov2`` (DINOv2 only).
        hf_name: Hugging Face model id (DINOv2 only).
        repa_checkpoint: where REPA's ``utils.load_encoders`` reads the weights (file families).
    """

    name: str
    family: str
    size: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    registers: int = 0
    timm_name: Optional[str] = None
    hub_name: Optional[str] = None
    hf_name: Optional[str] = None
    repa_checkpoint: Optional[str] = None


_DINO = {  # size: (timm word, width, depth, heads, HF word)
    "s": ("small", 384, 12, 6, "small"),
    "b": ("base", 768, 12, 12, "base"),
    "l": ("large", 1024, 24, 16, "large"),
    "g": ("giant", 1536, 40, 24, "giant"),
}
_MOCO = {"s": (384, 12, 12), "b": (768, 12, 12), "l": (1024, 24, 16)}


def _build() -> Dict[str, EncoderSpec]:
    specs: Dict[str, EncoderSpec] = {}
    for size, (word, dim, depth, heads, hf) in _DINO.items():
        for reg in (False, True):
            name = f"dinov2{'reg' if reg else ''}-vit-{size}"
            specs[name] = EncoderSpec(
                name=name, family="dinov2", size=size, embed_dim=dim, depth=depth,
                num_heads=heads, patch_size=14, registers=4 if reg else 0,
                timm_name=f"vit_{word}_patch14_{'reg4_' if reg else ''}dinov2",
                hub_name=f"dinov2_vit{size}14{'_reg' if reg else ''}",
                hf_name=f"facebook/dinov2-{'with-registers-' if reg else ''}{hf}",
            )
    specs["clip-vit-L"] = EncoderSpec(
        name="clip-vit-L", family="clip", size="l", embed_dim=1024, depth=24, num_heads=16,
        patch_size=14, timm_name="vit_large_patch14_clip_quickgelu_224",
    )
    specs["mae-vit-l"] = EncoderSpec(
        name="mae-vit-l", family="mae", size="l", embed_dim=1024, depth=24, num_heads=16,
        patch_size=16, repa_checkpoint="ckpts/mae_vitl.pth",
    )
    for size, (dim, depth, heads) in _MOCO.items():
        name = f"mocov3-vit-{size}"
        specs[name] = EncoderSpec(
            name=name, family="mocov3", size=size, embed_dim=dim, depth=depth, num_heads=heads,
            patch_size=16,
            repa_checkpoint=f"ckpts/mocov3_vit{size}.pth",
        )
    return specs


ENCODERS: Dict[str, EncoderSpec] = _build()


def encoder_names() -> list:
    """All known encoder names, sorted."""
    return sorted(ENCODERS)


def _unknown(name: object) -> ValueError:
    return ValueError(
        f"encoder name: unknown encoder {name!r}; expected one of {', '.join(encoder_names())} "
        f"(REPA's --enc-type names), or a path to a local checkpoint file or directory."
    )


def get_spec(name: str) -> EncoderSpec:
    """The spec of a REPA-style encoder name (the size letter is case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"encoder name: expected a str such as 'dinov2-vit-b', got {type(name).__name__}")
    key = name.strip()
    if key in ENCODERS:
        return ENCODERS[key]
    parts = key.split("-")
    if len(parts) == 3:
        fam = parts[0].lower().replace("_", "")
        if fam == "dinov2reg4":
            fam = "dinov2reg"
        for cand in (f"{fam}-{parts[1].lower()}-{parts[2].lower()}", f"{fam}-{parts[1].lower()}-{parts[2].upper()}"):
            if cand in ENCODERS:
                return ENCODERS[cand]
    raise _unknown(name)


def family_of(name: str) -> str:
    """The family (``dinov2``, ``clip``, ``mae``, ``mocov3``) of an encoder name."""
    return get_spec(name).family
