"""Reading weights files, and recognising which encoder a checkpoint holds.

Loading is safe by default: ``.safetensors`` files through safetensors, everything else through
``torch.load(weights_only=True)``, which unpickles only tensors and plain containers. A file that
needs more (a pickle of arbitrary objects, or a TorchScript archive such as OpenAI CLIP's
``ViT-L-14.pt``) is refused with a ``ValueError`` unless the caller passes ``trust_checkpoint=True``,
which runs code from the file: ``torch.load(weights_only=False)`` or ``torch.jit.load``. Opt in only
for files from a source you trust; or convert such a file once, on a trusted machine, to a plain state
dict (``torch.save(sd)``) or to safetensors.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Dict, Union

import torch

__all__ = ["read_checkpoint", "infer_encoder_name", "unwrap"]


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive: a zip whose records include ``code/`` and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _refuse(path: str, what: str) -> ValueError:
    return ValueError(
        f"checkpoint: {path!r} is {what}; loading it would run code from the file, and "
        f"trust_checkpoint=False (the default) reads tensors only. Hint: pass trust_checkpoint=True only if you "
        f"trust the file's source (it runs code from the file), or convert it once, on a trusted machine, to a "
        f"plain state dict (torch.save(state_dict, path)) or to .safetensors."
    )


def _unsupported(err: Exception) -> str:
    """The object torch's weights-only unpickler refused, from its message (or '')."""
    for line in str(err).splitlines():
        if "Unsupported global:" in line:
            return " (" + line[line.index("Unsupported global:"):].split(" was not")[0].strip() + ")"
    return ""


def read_checkpoint(path: Union[str, os.PathLike], *, trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.tar``/``.bin``/``.safetensors`` file, safely by default.

    Args:
        path: the weights file.
        trust_checkpoint: ``False`` (default) reads tensors only: safetensors, or
            ``torch.load(weights_only=True)``; a file that needs more raises ``ValueError``. ``True``
            runs code from the file: a TorchScript archive (OpenAI CLIP's ``ViT-L-14.pt``) is read
            with ``torch.jit.load``, any other pickle with ``torch.load(weights_only=False)``.

    Wrappers ``{"model": ...}``, ``{"state_dict": ...}`` and ``{"teacher": ...}`` are kept as they
    are: the per-family converters unwrap them.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file needs code execution to load and ``trust_checkpoint`` is False.
    """
    if not isinstance(trust_checkpoint, bool):
        raise TypeError(f"trust_checkpoint: expected True or False, got {trust_checkpoint!r}")
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
    if _is_torchscript(path):
        if not trust_checkpoint:
            raise _refuse(path, "a TorchScript archive (OpenAI CLIP's ViT-L-14.pt is one), read by torch.jit.load")
        return dict(torch.jit.load(path, map_location="cpu").state_dict())
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # objects other than tensors and plain containers
        if not trust_checkpoint:
            raise _refuse(path, "a pickle with objects other than tensors and plain containers" + _unsupported(err)) from None
    return torch.load(path, map_location="cpu", weights_only=False)  # trusted: runs code from the file


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
