"""``load_encoder``: build a frozen target encoder from a name, a local checkpoint or a directory.

Weights can come from ``torch.hub`` (REPA's own path for DINOv2), timm, Hugging Face
transformers, or local files for machines without internet: an official DINOv2 ``.pth``, a
Hugging Face directory (``config.json`` plus weights), an OpenAI CLIP ``ViT-L-14.pt``, an MAE
``mae_pretrain_vit_large.pth`` or a MoCo v3 ``vit-b-300ep.pth.tar``.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from .frozen import FrozenEncoder
from .preprocess import encoder_input_size, resample_pos_embed
from .registry import ENCODERS, EncoderSpec, _unknown, get_spec

__all__ = ["load_encoder", "read_checkpoint", "infer_encoder_name"]

logger = logging.getLogger(__name__)
_SOURCES = ("auto", "hub", "timm", "transformers")


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


def _unwrap(sd: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "teacher"):
        if key in sd and isinstance(sd[key], dict) and not isinstance(sd[key], torch.Tensor):
            sd = sd[key]
    return sd


def infer_encoder_name(state_dict: Dict[str, torch.Tensor]) -> str:
    """Guess the REPA-style name of a checkpoint from its keys and widths."""
    sd = _unwrap(state_dict)
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


def _timm_vit(spec: EncoderSpec, input_size: int, model_kwargs: Dict[str, Any]) -> nn.Module:
    import timm

    if spec.family in ("dinov2", "clip"):
        kw = dict(img_size=input_size, num_classes=0)
        kw.update(model_kwargs)
        return timm.create_model(spec.timm_name, pretrained=False, **kw)
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(
        img_size=input_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
        num_heads=spec.num_heads, mlp_ratio=4, qkv_bias=True, num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    kw.update(model_kwargs)
    return VisionTransformer(**kw)


def _load_into_timm(model: nn.Module, spec: EncoderSpec, sd: Dict[str, torch.Tensor], grid: int) -> None:
    """Convert an official checkpoint to timm's layout and load it strictly."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = dict(_unwrap(sd))
    if spec.family == "mocov3":
        out = {}
        for k, v in sd.items():  # REPA's fix_mocov3_state_dict
            if not k.startswith("module.base_encoder."):
                continue
            nk = k[len("module.base_encoder."):]
            nk = nk.replace("blocks.13.norm13", "blocks.13.norm1").replace("blocks.13.mlp.fc13", "blocks.13.mlp.fc1")
            nk = nk.replace("blocks.14.norm14", "blocks.14.norm2").replace("blocks.14.mlp.fc14", "blocks.14.mlp.fc2")
            if "head" not in nk and nk.split(".")[0] != "fc":
                out[nk] = v
        sd = out
    elif spec.family == "mae":
        sd = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token", "head"))}
    if spec.family in ("mocov3", "mae"):  # REPA resamples these checkpoints to the grid
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], grid, num_prefix_tokens=1)
    # DINOv2 / OpenAI CLIP layouts and pos-embed resampling (bicubic, antialias) as in timm.
    sd = checkpoint_filter_fn(sd, model)
    sd = {k: v for k, v in sd.items() if not k.startswith("head")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint: does not fit {spec.name} (missing keys {missing[:6]}, unexpected keys "
            f"{unexpected[:6]}). Hint: check the encoder name matches the file, and model_kwargs."
        )


def _from_hub(spec, grid, checkpoint, hub_dir, pretrained):
    repo, kw = ("facebookresearch/dinov2", {}) if hub_dir is None else (hub_dir, {"source": "local"})
    want_hub_weights = pretrained and checkpoint is None
    try:
        model = torch.hub.load(repo, spec.hub_name, pretrained=want_hub_weights, **kw)
    except Exception as err:
        raise RuntimeError(
            f"torch.hub could not load {spec.hub_name} from {repo!r} ({type(err).__name__}: {err}). "
            f"Hint: without internet, pass checkpoint='/path/{spec.hub_name}_pretrain.pth' (loaded "
            f"through timm) or a Hugging Face directory, or hub_dir= a local clone of the dinov2 repo."
        ) from err
    if checkpoint is not None:
        sd = _unwrap(read_checkpoint(checkpoint))
        model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("head")}, strict=False)
    # REPA: drop the head and resample pos_embed to the token grid once, at load time.
    model.head = nn.Identity()
    model.pos_embed.data = resample_pos_embed(model.pos_embed.data, grid, num_prefix_tokens=1)
    return model


def _from_transformers(spec, path_or_id, grid):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path_or_id)
    mtype = getattr(model.config, "model_type", "")
    if mtype not in ("dinov2", "dinov2_with_registers"):
        raise ValueError(
            f"name_or_path: {path_or_id!r} holds a {mtype!r} model; expected a DINOv2 model "
            f"(model_type 'dinov2' or 'dinov2_with_registers')."
        )
    emb = model.embeddings
    # Resample once like REPA (bicubic, antialias); the model then skips its own interpolation.
    emb.position_embeddings = nn.Parameter(
        resample_pos_embed(emb.position_embeddings.data, grid, num_prefix_tokens=1), requires_grad=False
    )
    return model, 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)


def _spec_from_hf_dir(path: str) -> EncoderSpec:
    import json

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    mtype = cfg.get("model_type", "")
    if mtype not in ("dinov2", "dinov2_with_registers"):
        raise ValueError(
            f"name_or_path: {path!r} holds a {mtype!r} model; expected DINOv2 "
            f"(model_type 'dinov2' or 'dinov2_with_registers')."
        )
    size = {384: "s", 768: "b", 1024: "l", 1536: "g"}.get(cfg.get("hidden_size"), "b")
    base = ENCODERS[f"dinov2{'reg' if mtype.endswith('registers') else ''}-vit-{size}"]
    from dataclasses import replace

    return replace(base, embed_dim=int(cfg["hidden_size"]), depth=int(cfg["num_hidden_layers"]),
                   patch_size=int(cfg.get("patch_size", 14)))


def load_encoder(
    name_or_path: Union[str, os.PathLike],
    *,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    resolution: int = 256,
    source: str = "auto",
    pretrained: bool = True,
    hub_dir: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    **model_kwargs: Any,
) -> FrozenEncoder:
    """Build a frozen encoder, REPA-identical in weights, positional embeddings and readout.

    Args:
        name_or_path: a REPA ``--enc-type`` name (``dinov2-vit-b``, ``dinov2reg-vit-l``,
            ``clip-vit-L``, ``mae-vit-l``, ``mocov3-vit-b``...), or a local path: a checkpoint file
            (the encoder is recognised from its keys) or a Hugging Face DINOv2 directory.
        checkpoint: a local weights file for ``name_or_path`` (official DINOv2 ``.pth``, OpenAI
            CLIP ``.pt``, MAE ``.pth``, MoCo v3 ``.pth.tar``). MAE and MoCo v3 default to REPA's
            ``ckpts/mae_vitl.pth`` and ``ckpts/mocov3_vit{s,b,l}.pth``.
        resolution: training image resolution; the token grid is ``16 * resolution / 256`` per
            side, positional embeddings resampled to it (bicubic, antialiased, as REPA).
        source: for DINOv2 by name without a checkpoint: ``"hub"`` (REPA's ``torch.hub`` path,
            the default under ``"auto"``), ``"timm"`` or ``"transformers"``.
        pretrained: ``False`` builds the architecture with random weights (tests, dry runs).
        hub_dir: a local clone of ``facebookresearch/dinov2`` for ``torch.hub`` without internet.
        device: where to put the encoder.
        **model_kwargs: passed to the timm constructor (e.g. ``depth`` for a truncated model).

    Returns:
        A :class:`FrozenEncoder` in eval mode with ``requires_grad`` off.
    """
    if source not in _SOURCES:
        raise ValueError(f"source: expected one of {_SOURCES}, got {source!r}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution: expected a positive int such as 256 or 512, got {resolution!r}")
    name_str = os.fspath(name_or_path)
    if name_str not in ENCODERS and os.path.exists(name_str):
        if os.path.isdir(name_str):
            if not os.path.isfile(os.path.join(name_str, "config.json")):
                raise FileNotFoundError(
                    f"name_or_path: directory {name_str!r} has no config.json; expected a Hugging "
                    f"Face model directory (config.json plus weights) or pass a weights file."
                )
            spec = _spec_from_hf_dir(name_str)
            input_size = encoder_input_size(spec.name, resolution)
            model, prefix = _from_transformers(spec, name_str, input_size // spec.patch_size)
            return _finish(model, spec, "hf", input_size, prefix, device)
        checkpoint = name_str
        name_str = infer_encoder_name(read_checkpoint(checkpoint))
        logger.info("recognised %s as %s", checkpoint, name_str)
    elif name_str not in ENCODERS and ("/" in name_str or os.sep in name_str or "." in name_str):
        if source == "transformers":  # a Hugging Face model id
            spec = ENCODERS["dinov2reg-vit-b" if "registers" in name_str else "dinov2-vit-b"]
            input_size = encoder_input_size(spec.name, resolution)
            model, prefix = _from_transformers(spec, name_str, input_size // spec.patch_size)
            return _finish(model, spec, "hf", input_size, prefix, device)
        raise FileNotFoundError(
            f"name_or_path: {name_str!r} is neither a known encoder name nor an existing path. "
            f"Known names: {', '.join(sorted(ENCODERS))}."
        )
    spec = get_spec(name_str)
    input_size = encoder_input_size(spec.name, resolution)
    grid = input_size // spec.patch_size

    if spec.family == "dinov2" and checkpoint is None and pretrained:
        src = "hub" if source == "auto" else source
        if src == "hub":
            model = _from_hub(spec, grid, None, hub_dir, True)
            return _finish(model, spec, "hub_dinov2", input_size, 1 + spec.registers, device)
        if src == "transformers":
            model, prefix = _from_transformers(spec, spec.hf_name, grid)
            return _finish(model, spec, "hf", input_size, prefix, device)
        import timm

        model = timm.create_model(spec.timm_name, pretrained=True, img_size=input_size, num_classes=0, **model_kwargs)
        return _finish(model, spec, "timm_norm", input_size, model.num_prefix_tokens, device)

    if checkpoint is None and pretrained:
        if spec.repa_checkpoint is None:
            raise ValueError(
                f"checkpoint: {spec.name} is loaded from a local weights file; expected "
                f"checkpoint='/path/to/weights' (for CLIP ViT-L/14, OpenAI's ViT-L-14.pt)."
            )
        checkpoint = spec.repa_checkpoint
    if spec.family == "dinov2" and source == "hub":
        model = _from_hub(spec, grid, checkpoint, hub_dir, pretrained)
        return _finish(model, spec, "hub_dinov2", input_size, 1 + spec.registers, device)
    model = _timm_vit(spec, input_size, model_kwargs)
    if pretrained:
        _load_into_timm(model, spec, read_checkpoint(checkpoint), grid)
    readout = "timm_prenorm" if spec.family in ("clip", "mae") else "timm_norm"
    return _finish(model, spec, readout, input_size, model.num_prefix_tokens, device)


def _finish(model, spec, readout, input_size, prefix, device) -> FrozenEncoder:
    from dataclasses import replace

    width = getattr(model, "embed_dim", None) or getattr(getattr(model, "config", None), "hidden_size", None)
    if width is not None and int(width) != spec.embed_dim:  # a reduced model (model_kwargs, tests)
        spec = replace(spec, embed_dim=int(width))
    enc = FrozenEncoder(model=model, spec=spec, readout=readout, input_size=input_size, num_prefix_tokens=prefix)
    if device is not None:
        enc = enc.to(device)
    return enc
