"""Where an encoder's weights come from: one small function per source, and the table of them.

Each source takes a :class:`Request` (the resolved spec, the input size, the checkpoint or model
location) and returns a :class:`FrozenEncoder`: ``hub`` (``torch.hub``, REPA's path for DINOv2, at
the pinned commit :data:`DINOV2_HUB_COMMIT`; only when the weights come from the hub, or for random
weights), ``timm`` (timm's pretrained DINOv2), ``transformers`` (a Hugging Face id), ``dir`` (a local
Hugging Face directory), ``file`` (a local weights file loaded strictly into a timm ViT built here, or
random weights). Positional embeddings are resampled to the token grid once, at load time, as REPA
does (:func:`resample_pos_embed`). Local files are read with :func:`~.checkpoint.read_checkpoint`:
tensors only, unless ``trust_checkpoint=True``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from .checkpoint import read_checkpoint, unwrap
from .frozen import FrozenEncoder
from .registry import ENCODERS, EncoderSpec

__all__ = ["DINOV2_HUB", "DINOV2_HUB_COMMIT", "Request", "SOURCES", "resample_pos_embed", "spec_from_hf_dir"]

#: the commit of ``facebookresearch/dinov2`` whose ``hubconf.py`` the ``hub`` source runs (2025-08-14)
DINOV2_HUB_COMMIT = "b8931f7bf91576930313be2c6d6af376033b35f0"
#: the ``torch.hub`` repository, pinned: ``owner/name:commit``
DINOV2_HUB = f"facebookresearch/dinov2:{DINOV2_HUB_COMMIT}"


@dataclass
class Request:
    """A resolved load: what to build, at which input size, from where.

    Attributes:
        spec: the encoder.
        input_size: the encoder's input resolution; ``grid`` its token grid per side.
        location: the checkpoint file, Hugging Face id or directory, or None.
        pretrained: False builds random weights.
        hub_dir: a local clone of ``facebookresearch/dinov2`` for ``torch.hub``.
        model_kwargs: passed to the timm constructor.
        trust_checkpoint: read ``location`` with code execution allowed (see :func:`read_checkpoint`).
        state_dict: the checkpoint's contents when already read (the name inference reads it once).
    """

    spec: EncoderSpec
    input_size: int
    location: Optional[str] = None
    pretrained: bool = True
    hub_dir: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False
    state_dict: Optional[Dict[str, Any]] = field(default=None, repr=False)

    def checkpoint(self) -> Dict[str, Any]:
        """The checkpoint's contents: read once (safely unless ``trust_checkpoint``), then kept."""
        if self.state_dict is None:
            self.state_dict = read_checkpoint(self.location, trust_checkpoint=self.trust_checkpoint)
        return self.state_dict

    @property
    def grid(self) -> int:
        return self.input_size // self.spec.patch_size


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: int, *, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resample a ViT absolute positional embedding to a ``grid x grid`` patch grid.

    Bicubic with antialiasing, prefix (CLS, register) positions kept, as REPA does with
    ``timm.layers.pos_embed.resample_abs_pos_embed``.

    Shape:
        - pos_embed: (1, P + M * M, C) with ``P = num_prefix_tokens``
        - output: (1, P + grid * grid, C)
    """
    from timm.layers.pos_embed import resample_abs_pos_embed

    n = pos_embed.shape[1] - num_prefix_tokens
    m = int(round(n ** 0.5))
    if m * m != n:
        raise ValueError(
            f"pos_embed: expected {num_prefix_tokens} prefix positions plus a square grid, got "
            f"{pos_embed.shape[1]} positions ({n} is not a square). Hint: check num_prefix_tokens."
        )
    if m == grid:
        return pos_embed
    return resample_abs_pos_embed(pos_embed, [grid, grid], num_prefix_tokens=num_prefix_tokens)


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

    sd = dict(unwrap(sd))
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


def _hub_model(spec, grid, hub_dir, pretrained):
    """REPA's ``torch.hub`` DINOv2, from the pinned commit (or a local clone): hub weights, or random ones."""
    repo, kw = (DINOV2_HUB, {}) if hub_dir is None else (hub_dir, {"source": "local"})
    try:
        model = torch.hub.load(repo, spec.hub_name, pretrained=pretrained, **kw)
    except Exception as err:
        raise RuntimeError(
            f"torch.hub could not load {spec.hub_name} from {repo!r} ({type(err).__name__}: {err}). "
            f"Hint: without internet, pass checkpoint='/path/{spec.hub_name}_pretrain.pth' (loaded "
            f"through timm) or a Hugging Face directory, or hub_dir= a local clone of the dinov2 repo."
        ) from err
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


def spec_from_hf_dir(path: str) -> EncoderSpec:
    """The spec of a Hugging Face DINOv2 directory, from its ``config.json``."""
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
    return replace(base, embed_dim=int(cfg["hidden_size"]), depth=int(cfg["num_hidden_layers"]),
                   patch_size=int(cfg.get("patch_size", 14)))


def _finish(model, spec, readout, input_size, prefix) -> FrozenEncoder:
    width = getattr(model, "embed_dim", None) or getattr(getattr(model, "config", None), "hidden_size", None)
    if width is not None and int(width) != spec.embed_dim:  # a reduced model (model_kwargs, tests)
        spec = replace(spec, embed_dim=int(width))
    return FrozenEncoder(model=model, spec=spec, readout=readout, input_size=input_size, num_prefix_tokens=prefix)


def _source_hub(req: Request) -> FrozenEncoder:
    if req.location is not None:  # weights from a local file: no hub code at all (a timm ViT, loaded strictly)
        return _source_file(req)
    model = _hub_model(req.spec, req.grid, req.hub_dir, req.pretrained)
    return _finish(model, req.spec, "hub_dinov2", req.input_size, 1 + req.spec.registers)


def _source_timm(req: Request) -> FrozenEncoder:
    import timm

    model = timm.create_model(req.spec.timm_name, pretrained=True, img_size=req.input_size, num_classes=0, **req.model_kwargs)
    return _finish(model, req.spec, "timm_norm", req.input_size, model.num_prefix_tokens)


def _source_transformers(req: Request) -> FrozenEncoder:
    model, prefix = _from_transformers(req.spec, req.location or req.spec.hf_name, req.grid)
    return _finish(model, req.spec, "hf", req.input_size, prefix)


def _source_file(req: Request) -> FrozenEncoder:
    model = _timm_vit(req.spec, req.input_size, req.model_kwargs)
    if req.pretrained:
        _load_into_timm(model, req.spec, req.checkpoint(), req.grid)
    readout = "timm_prenorm" if req.spec.family in ("clip", "mae") else "timm_norm"
    return _finish(model, req.spec, readout, req.input_size, model.num_prefix_tokens)


SOURCES: Dict[str, Callable[[Request], FrozenEncoder]] = {
    "hub": _source_hub,
    "timm": _source_timm,
    "transformers": _source_transformers,  # a Hugging Face model id
    "dir": _source_transformers,  # a local Hugging Face directory
    "file": _source_file,
}
