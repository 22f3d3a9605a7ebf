"""Frozen target encoders for representation alignment, REPA-identical.

``load_encoder(name_or_path, ...)`` builds a :class:`FrozenEncoder` whose ``forward_tokens``
gives the patch tokens REPA aligns to; ``preprocess`` is REPA's ``preprocess_raw_image``.
Heavy libraries (timm, transformers) are imported only when an encoder is built.
"""
from .checkpoint import infer_encoder_name, read_checkpoint
from .frozen import FrozenEncoder, check_token_count
from .load import load_encoder, resolve
from .preprocess import encoder_input_size, preprocess
from .registry import ENCODERS, EncoderSpec, encoder_names, get_spec
from .sources import DINOV2_HUB, DINOV2_HUB_COMMIT, SOURCES, resample_pos_embed

__all__ = [
    "DINOV2_HUB",
    "DINOV2_HUB_COMMIT",
    "ENCODERS",
    "EncoderSpec",
    "FrozenEncoder",
    "check_token_count",
    "encoder_input_size",
    "encoder_names",
    "get_spec",
    "infer_encoder_name",
    "load_encoder",
    "preprocess",
    "read_checkpoint",
    "resample_pos_embed",
    "resolve",
    "SOURCES",
]
