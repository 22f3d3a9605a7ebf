"""Command-line flags for :class:`~vrpo_loss.VRPOConfig`, for host training scripts.

::

    add_alignment_args(parser)                       # --alignment, --policy, --tau, ... --align-opt KEY=VALUE
    args = parser.parse_args()
    cfg = config_from_args(args, hidden_dim=1152, target_dims=(768,))   # what the script fixes itself
    align = VRPOAlignment(cfg)

Every flag defaults to ``None``, meaning "the package's default": defaults live in
:class:`~vrpo_loss.VRPOConfig` only. A flag's type, choices and help are read from its field when
the field exists; a flag whose field this version of the package lacks parses as text and
:func:`config_from_args` refuses it with a message naming the flag, if it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, List, Optional, Tuple

from .config import VRPOConfig
from .config_checks import FIELDS, Choice

__all__ = ["FLAGS", "add_alignment_args", "config_from_args", "parse_field"]

# (flag, VRPOConfig field). The peer options (target_norm ... structure_coeff) and `adaptive` pass
# through by name.
FLAGS: Tuple[Tuple[str, str], ...] = (
    ("--alignment", "mode"),
    ("--policy", "policy"),
    ("--tau", "tau"),
    ("--group-size", "group_size"),
    ("--sample-weight", "sample_weight"),
    ("--perceptual-weight", "perceptual_weight"),
    ("--perceptual-every", "perceptual_every"),
    ("--perceptual-subset", "perceptual_subset"),
    ("--decodability-weight", "decodability_weight"),
    ("--target-norm", "target_norm"),
    ("--projector", "projector"),
    ("--time-weight", "time_weight"),
    ("--stop-step", "stop_step"),
    ("--structure-coeff", "structure_coeff"),
    ("--adaptive", "adaptive"),
)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _fields() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(VRPOConfig)}


def _convert(text: str, tp: Any, name: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if text.lower() == "none" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(text, inner[0], name) if len(inner) == 1 else text
    if origin in (tuple, Tuple):
        items = [s for s in text.replace("x", ",").split(",") if s.strip()]
        item = args[0] if args else str
        return tuple(_convert(s.strip(), item, name) for s in items)
    if tp is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{name}: expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"{name}: expected {'an int' if tp is int else 'a number'}, got {text!r}") from None
    return text


def parse_field(name: str, text: str) -> Any:
    """The value of ``VRPOConfig`` field ``name`` written as ``text`` (``"none"`` for None, ``"3,4"`` for tuples).

    A field this version lacks keeps ``text``; :func:`config_from_args` then names it.
    """
    if name not in _fields():
        return text
    return _convert(text, typing.get_type_hints(VRPOConfig)[name], name)


def _flag_type(flag: str, name: str):
    def convert(text: str) -> Any:
        try:
            return parse_field(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


def add_alignment_args(parser: argparse.ArgumentParser, *, title: str = "alignment (vrpo-loss)") -> argparse.ArgumentParser:
    """Add the alignment flags to ``parser`` (an argument group); each defaults to None = the package's default."""
    fields = _fields()
    group = parser.add_argument_group(title, "Unset flags keep vrpo-loss's defaults (VRPOConfig).")
    for flag, name in FLAGS:
        f = fields.get(name)
        if f is None:
            text = f"VRPOConfig.{name} (needs a vrpo-loss that has this option)"
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = f"{f.metadata.get('help', '')} Package default: {default!r}.".replace("%", "%%")
        kind = FIELDS.get(name)
        choices = kind.values if isinstance(kind, Choice) else None
        group.add_argument(flag, dest=_dest(flag), type=_flag_type(flag, name), default=None, choices=choices,
                           metavar="|".join(choices) if choices else None, help=text)
    group.add_argument("--align-opt", dest="align_opt", action="append", default=None, metavar="KEY=VALUE",
                       help="any other VRPOConfig field, repeatable (e.g. --align-opt anchor_coeff=0.5 --align-opt "
                            "antithetic=false); 'none' for None, '16,16' for tuples. VRPOConfig.help() lists the fields.")
    return parser


def _dest(flag: str) -> str:
    return "alignment" if flag == "--alignment" else "align_" + flag[2:].replace("-", "_")


def _opts(entries: Optional[List[str]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for entry in entries or []:
        key, sep, text = str(entry).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--align-opt: expected KEY=VALUE (a VRPOConfig field and its value), got {entry!r}")
        if key in out:
            raise ValueError(f"--align-opt: {key} given twice")
        out[key] = parse_field(key, text.strip())
    return out


def config_from_args(args: argparse.Namespace, **fixed: Any) -> VRPOConfig:
    """A :class:`VRPOConfig` from the flags that were set, plus ``fixed`` fields the host script sets itself.

    Raises:
        ValueError: an option this version of the package lacks (naming the flag), a field given
            both by a flag and ``--align-opt``, a field ``fixed`` by the script, or an invalid value
            (from ``VRPOConfig``'s validation, naming the field).
    """
    known = _fields()
    values: Dict[str, Any] = {}
    source: Dict[str, str] = {}
    for flag, name in FLAGS:
        value = getattr(args, _dest(flag), None)
        if value is not None:
            values[name], source[name] = value, flag
    for key, value in _opts(getattr(args, "align_opt", None)).items():
        if key in values:
            raise ValueError(f"--align-opt {key}: already set by {source[key]}; give it once")
        values[key], source[key] = value, f"--align-opt {key}"
    for key in values:
        if key in fixed:
            raise ValueError(f"{source[key]}: {key} is set by the training script ({key}={fixed[key]!r}); it cannot be a flag")
        if key not in known:
            raise ValueError(f"{source[key]}: this vrpo-loss has no option {key!r} (not a VRPOConfig field); "
                             f"upgrade vrpo-loss or drop the flag. Fields: {', '.join(sorted(known))}")
    return VRPOConfig(**values, **fixed)
