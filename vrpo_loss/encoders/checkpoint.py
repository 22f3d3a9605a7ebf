"""Reading weights files, and recognising which encoder a checkpoint holds."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Union

import torch

__all__ = ["read_checkpoint", "infer_encoder_name", "unwrap"]

logger = logging.getLogger(__name__)


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.tar``/``.bin``/``.safetensors`` file.

    TorchScript archives (OpenAI CLIP's ``ViT-L-14.pt``) are read with ``torch.jit.load``.
    Wrappers ``{"model": ...}``, ``{"state_dict": ...}`` and ``{"teacher": ...}`` are kept as they
    are: the per-family converters unwrap them.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint: no file at {path!r} (absolute: {os.path.abspath(path)!r}). Hint: pass "
            f"the path of the downloaded weights file, or a directory with config.json for "
            f"Hugging Face weights."
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # TorchScript archive, or a pickle with non-tensor objects
        try:
            return dict(torch.jit.load(path, map_location="cpu").state_dict())
        except Exception:
            pass
        logger.info("weights_only load of %s failed (%s); loading with weights_only=False", path, err)
        return torch.load(path, map_location="cpu", weights_only=False)


def unwrap(sd: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "teacher"):
        if key in sd and isinstance(sd[key], dict) and not isinstance(sd[key], torch.Tensor):
            sd = sd[key]
    return sd


def infer_encoder_name(state_dict: Dict[str, torch.Tensor]) -> str:
    """Guess the REPA-style name of a checkpoint from its keys and widths."""
    sd = unwrap(state_dict)
    if "visual.class_embedding" in sd or "visual.conv1.weight" in sd:
        return "clip-vit-L"
    if any(k.startswith("module.base_encoder.") for k in sd):
        dim = sd["module.base_encoder.cls_token"].shape[-1]
        return {384: "mocov3-vit-s", 768: "mocov3-vit-b", 1024: "mocov3-vit-l"}[dim]
    patch = sd["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in sd else None
    if "register_tokens" in sd or ("mask_token" in sd and patch == 14):
        dim = sd["cls_token"].shape[-1]
        size = {384: "s", 768: "b", 1024: "l", 1536: "g"}[dim]
        return f"dinov2{'reg' if 'register_tokens' in sd else ''}-vit-{size}"
    if "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd and patch == 16:
        return "mae-vit-l"
    raise ValueError(
        "checkpoint: cannot tell which encoder this is from its keys (first keys: "
        f"{list(sd)[:5]}). Hint: pass the encoder name and checkpoint=path, e.g. "
        "load_encoder('dinov2-vit-b', checkpoint=path)."
    )
