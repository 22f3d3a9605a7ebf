"""``load_encoder``: build a frozen target encoder from a name, a local checkpoint or a directory.

Weights can come from ``torch.hub`` (REPA's own path for DINOv2), timm, Hugging Face
transformers, or local files for machines without internet: an official DINOv2 ``.pth``, a
Hugging Face directory (``config.json`` plus weights), an OpenAI CLIP ``ViT-L-14.pt``, an MAE
``mae_pretrain_vit_large.pth`` or a MoCo v3 ``vit-b-300ep.pth.tar``. Loading is two steps:
:func:`resolve` turns the arguments into a source and a :class:`~.sources.Request`, and the
source's function in :data:`~.sources.SOURCES` builds the encoder.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Tuple, Union

import torch

from .checkpoint import infer_encoder_name, read_checkpoint
from .frozen import FrozenEncoder
from .preprocess import encoder_input_size
from .registry import ENCODERS, get_spec
from .sources import SOURCES, Request, spec_from_hf_dir

__all__ = ["load_encoder", "resolve", "read_checkpoint", "infer_encoder_name"]

logger = logging.getLogger(__name__)
_SOURCES = ("auto", "hub", "timm", "transformers")


def _resolve_path(name: str, source: str, resolution: int, trust_checkpoint: bool
                  ) -> Tuple[Optional[str], Optional[Request], Optional[Tuple[str, dict]]]:
    """A local directory or Hugging Face id gives a request; a local file gives its name and contents (read once)."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise FileNotFoundError(
                f"name_or_path: directory {name!r} has no config.json; expected a Hugging "
                f"Face model directory (config.json plus weights) or pass a weights file."
            )
        spec = spec_from_hf_dir(name)
        return "dir", Request(spec=spec, input_size=encoder_input_size(spec.name, resolution), location=name), None
    if os.path.exists(name):
        sd = read_checkpoint(name, trust_checkpoint=trust_checkpoint)  # read once; the source reuses it
        inferred = infer_encoder_name(sd)
        logger.info("recognised %s as %s", name, inferred)
        return None, None, (inferred, sd)
    if source == "transformers":  # a Hugging Face model id
        spec = ENCODERS["dinov2reg-vit-b" if "registers" in name else "dinov2-vit-b"]
        return "transformers", Request(spec=spec, input_size=encoder_input_size(spec.name, resolution), location=name), None
    raise FileNotFoundError(
        f"name_or_path: {name!r} is neither a known encoder name nor an existing path. "
        f"Known names: {', '.join(sorted(ENCODERS))}."
    )


def resolve(name_or_path, *, checkpoint=None, resolution: int = 256, source: str = "auto", pretrained: bool = True,
            hub_dir: Optional[str] = None, trust_checkpoint: bool = False, **model_kwargs: Any) -> Tuple[str, Request]:
    """The source (a key of :data:`~.sources.SOURCES`) and the request that ``load_encoder``'s arguments name.

    A checkpoint file given as ``name_or_path`` is read here, once (to recognise the encoder), and the
    request carries its contents to the source.
    """
    if not isinstance(trust_checkpoint, bool):
        raise TypeError(f"trust_checkpoint: expected True or False, got {trust_checkpoint!r}; True runs code from the file")
    if source not in _SOURCES:
        raise ValueError(f"source: expected one of {_SOURCES}, got {source!r}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution: expected a positive int such as 256 or 512, got {resolution!r}")
    name, read = os.fspath(name_or_path), None
    if name not in ENCODERS and (os.path.exists(name) or "/" in name or os.sep in name or "." in name):
        key, req, found = _resolve_path(name, source, resolution, trust_checkpoint)
        if req is not None:
            return key, req
        checkpoint, (name, read) = name, found
    spec = get_spec(name)
    req = Request(spec=spec, input_size=encoder_input_size(spec.name, resolution),
                  location=None if checkpoint is None else os.fspath(checkpoint), pretrained=pretrained, hub_dir=hub_dir,
                  model_kwargs=model_kwargs, trust_checkpoint=trust_checkpoint, state_dict=read)
    if spec.family == "dinov2" and checkpoint is None and pretrained:
        return ("hub" if source == "auto" else source), req
    if checkpoint is None and pretrained:
        if spec.repa_checkpoint is None:
            raise ValueError(
                f"checkpoint: {spec.name} is loaded from a local weights file; expected "
                f"checkpoint='/path/to/weights' (for CLIP ViT-L/14, OpenAI's ViT-L-14.pt)."
            )
        req.location = spec.repa_checkpoint
    # source="hub" with a local checkpoint builds the ViT here (timm) and loads the file strictly: no hub code runs
    return ("hub" if spec.family == "dinov2" and source == "hub" and req.location is None else "file"), req


def load_encoder(
    name_or_path: Union[str, os.PathLike],
    *,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    resolution: int = 256,
    source: str = "auto",
    pretrained: bool = True,
    hub_dir: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    trust_checkpoint: bool = False,
    **model_kwargs: Any,
) -> FrozenEncoder:
    """Build a frozen encoder, REPA-identical in weights, positional embeddings and readout.

    Args:
        name_or_path: a REPA ``--enc-type`` name (``dinov2-vit-b``, ``dinov2reg-vit-l``,
            ``clip-vit-L``, ``mae-vit-l``, ``mocov3-vit-b``...), or a local path: a checkpoint file
            (the encoder is recognised from its keys) or a Hugging Face DINOv2 directory.
        checkpoint: a local weights file for ``name_or_path`` (official DINOv2 ``.pth``, OpenAI
            CLIP ``.pt``, MAE ``.pth``, MoCo v3 ``.pth.tar``). MAE and MoCo v3 default to REPA's
            ``ckpts/mae_vitl.pth`` and ``ckpts/mocov3_vit{s,b,l}.pth``. A DINOv2 checkpoint is loaded
            into a timm ViT built here, strictly, whatever ``source`` says: no hub code runs for it.
        resolution: training image resolution; the token grid is ``16 * resolution / 256`` per
            side, positional embeddings resampled to it (bicubic, antialiased, as REPA).
        source: for DINOv2 by name without a checkpoint: ``"hub"`` (REPA's ``torch.hub`` path,
            the default under ``"auto"``), ``"timm"`` or ``"transformers"``.
        pretrained: ``False`` builds the architecture with random weights (tests, dry runs).
        hub_dir: a local clone of ``facebookresearch/dinov2`` for ``torch.hub`` without internet
            (without it, the hub runs ``hubconf.py`` of the pinned commit ``DINOV2_HUB_COMMIT``).
        device: where to put the encoder.
        trust_checkpoint: ``False`` (default) reads weights files as tensors only (safetensors, or
            ``torch.load(weights_only=True)``) and refuses, with a ``ValueError`` naming the file, one
            that needs more. ``True`` runs code from the file (``torch.load(weights_only=False)``, or
            ``torch.jit.load`` for a TorchScript archive such as OpenAI CLIP's ``ViT-L-14.pt``): use it
            only for files from a source you trust.
        **model_kwargs: passed to the timm constructor (e.g. ``depth`` for a truncated model).

    Returns:
        A :class:`FrozenEncoder` in eval mode with ``requires_grad`` off.
    """
    key, req = resolve(name_or_path, checkpoint=checkpoint, resolution=resolution, source=source,
                       pretrained=pretrained, hub_dir=hub_dir, trust_checkpoint=trust_checkpoint, **model_kwargs)
    enc = SOURCES[key](req)
    return enc.to(device) if device is not None else enc
