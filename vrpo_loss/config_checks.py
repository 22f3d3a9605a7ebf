"""Validation of :class:`~vrpo_loss.VRPOConfig`: one row per field (its kind and range), then the rules between fields.

Every field has a row in :data:`FIELDS`, so a new option is validated by adding one row (a test
holds the table to the dataclass). A bad value raises ``ValueError`` naming the field, what is
allowed and what came, wrong types included (``tau="0.1"``, ``stop_step=2.5``, ``validate=1``):
every problem with a config value is a ``ValueError``. Numbers are normalised (a numpy float
becomes a Python float, an integral float stays rejected where an int is expected).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from .conditions import LEARNED_SIGMA, inert_options

#: the smallest ``tau``: logits ``cos / tau`` lie in [-1/tau, 1/tau]; NaN arises only where 2/tau overflows fp32
#: (tau < 6e-39), but from 1e-4 down the fp32 softmax is already an argmax, so smaller values change nothing
#: but the size of the policy gradient (its scale is adv_clip / (N * tau))
TAU_MIN = 1e-4

#: the values of ``VRPOConfig.adaptive`` (the controller in ``factors/adaptive.py`` reads them too)
ADAPTIVE_CHOICES = ("none", "agreement", "achievability")

__all__ = ["ADAPTIVE_CHOICES", "TAU_MIN", "FIELDS", "RULES", "check_config", "Bool", "Choice", "Int", "Real",
           "IntTuple"]


def _fail(name: str, what: str, value: Any, hint: str = "") -> None:
    raise ValueError(f"{name}: expected {what}, got {value!r}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class Choice:
    """One of a few strings."""

    values: Tuple[str, ...]
    hint: str = ""

    def __call__(self, name: str, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.values:
            _fail(name, "one of " + ", ".join(repr(v) for v in self.values), value, self.hint)
        return value


@dataclass(frozen=True)
class Bool:
    """``True`` or ``False`` (not 0/1, not a string)."""

    hint: str = ""

    def __call__(self, name: str, value: Any) -> Any:
        if not isinstance(value, bool):
            _fail(name, "a bool (True or False)", value, self.hint)
        return value


@dataclass(frozen=True)
class Int:
    """An integer ``>= low`` (a bool is not an int here), optionally odd, optionally None."""

    low: int
    optional: bool = False
    odd: bool = False
    what: str = ""
    hint: str = ""

    def __call__(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= self.low
        if not ok or (self.odd and value % 2 == 0):
            what = self.what or ("an odd int" if self.odd else "an int") + f" >= {self.low}"
            _fail(name, f"None or {what}" if self.optional and not self.what else what, value, self.hint)
        return int(value)


@dataclass(frozen=True)
class Real:
    """A finite real number in a range (NaN and +-inf are always rejected), optionally None."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    optional: bool = False
    hint: str = ""

    def span(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return "a finite real number"
        if self.high == math.inf:
            return f"a value {'>' if self.open_low else '>='} {self.low:g} (a finite real number)"
        return f"a value in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}] (a finite real number)"

    def __call__(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < self.low or value > self.high or (self.open_low and value == self.low):
            _fail(name, ("None or " if self.optional else "") + self.span(), value, self.hint)
        return float(value)


@dataclass(frozen=True)
class IntTuple:
    """A tuple of ``length`` positive ints (any length >= 1 when ``length`` is None); an int is one entry."""

    length: Optional[int] = None
    optional: bool = False
    what: str = ""

    def __call__(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and self.length is None:
            value = (value,)
        ok = isinstance(value, (tuple, list)) and len(value) >= 1 and (self.length is None or len(value) == self.length)
        if not ok or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value):
            _fail(name, self.what, value)
        return tuple(int(v) for v in value)


_NONNEG = Real(0.0)
_POS = Real(0.0, open_low=True)
_UNIT = Real(0.0, 1.0)

#: field -> its kind and range. Rules between fields are in :data:`RULES`.
FIELDS: Dict[str, Callable[[str, Any], Any]] = {
    "mode": Choice(("vrpo", "repa")),
    "hidden_dim": Int(1, optional=True, what="a positive int or None (features already projected)"),
    "target_dims": IntTuple(what="a non-empty tuple of positive ints (one per encoder)"),
    "projector_dim": Int(1),
    "policy": Choice(("gaussian", "correspondence", "custom"), hint="'custom' is set by passing a Policy instance as policy="),
    "tau": Real(TAU_MIN, hint="below it the softmax over cosines is already a hard argmax in fp32 (a cosine gap of "
                         "0.0104 at tau=1e-4 gives a probability ratio below fp32's smallest number), and at "
                         "tau < 6e-39 the logits cos/tau (|cos| <= 1) and their spread 2/tau overflow fp32: NaN"),
    "group_size": Int(1),
    "sigma": _POS,
    "space": Choice(("sphere", "euclidean")),
    "antithetic": Bool(),
    "control_variate": Bool(),
    "learn_sigma": Bool(),
    "sigma_final": Real(0.0, open_low=True, optional=True),
    "sigma_decay_steps": Int(0),
    "sigma_min": _POS,
    "sigma_max": _POS,
    "max_action_elements": Int(1),
    "adv_scale": Choice(("group", "batch", "none")),
    "adv_eps": _POS,
    "adv_clip": _POS,
    "policy_coeff": Real(0.0, hint="0 turns the policy term off"),
    "anchor_coeff": _NONNEG,
    "sample_weight": Real(hint="0 turns the per-sample weight off; negative favours samples that earn less"),
    "w_min": _NONNEG,
    "w_max": _POS,
    "time_bins": Int(1),
    "stats_momentum": Real(0.0, 1.0, open_low=True),
    "semantic_weight": _NONNEG,
    "fidelity_weight": _NONNEG,
    "perceptual_weight": _NONNEG,
    "perceptual_every": Int(1),
    "perceptual_subset": Int(1),
    "perceptual_net": Choice(("vgg", "alex", "squeeze")),
    "decodability_weight": _NONNEG,
    "decodability_patch": Int(1),
    "decodability_channels": Int(1),
    "decodability_hidden": Int(1),
    "target_norm": Choice(("none", "zscore")),
    "zscore_alpha": _UNIT,
    "projector": Choice(("mlp", "conv")),
    "projector_kernel": Int(1, odd=True, hint="the padding keeps the token grid"),
    "token_grid": IntTuple(length=2, optional=True, what="None or two positive ints (H, W)"),
    "time_weight": Choice(("uniform", "sigmoid")),
    "time_weight_center": _UNIT,
    "time_weight_sharpness": _POS,
    "stop_step": Int(0, optional=True, hint="an optimizer step of the module's step counter"),
    "stop_ramp": Int(0),
    "structure_coeff": _NONNEG,
    "resample_tokens": Bool(),
    "validate": Bool(),
    "diagnostics_every": Int(0, hint="0 never"),
    "metrics_every": Int(1, hint="1: every call"),
    "accumulation_steps": Int(1, hint="micro-batches per optimizer step; 1 without gradient accumulation"),
    "adaptive": Choice(ADAPTIVE_CHOICES),
    "adaptive_gain": _NONNEG,
    "adaptive_min": _NONNEG,
    "adaptive_max": _POS,
    "adaptive_momentum": Real(0.0, 1.0, open_low=True),
    "adaptive_every": Int(1),
    "adaptive_terminate": Bool(),
}


def _group_size(c) -> Optional[str]:
    if c.policy == "gaussian" and c.group_size < 2:
        return (f"group_size: expected an int >= 2, got {c.group_size!r}; the Gaussian policy normalises rewards within a "
                "group of actions, and a group of one has no relative advantage")
    if c.policy == "gaussian" and c.antithetic and c.group_size % 2:
        return f"group_size: antithetic sampling needs an even group_size, got {c.group_size}; use {c.group_size + 1} or antithetic=False"
    return None


def _sigma(c) -> Optional[str]:
    if c.sigma_min > c.sigma_max:
        return f"sigma_min, sigma_max: expected sigma_min <= sigma_max, got {c.sigma_min} > {c.sigma_max}"
    if LEARNED_SIGMA.holds(c) and not c.sigma_min <= c.sigma <= c.sigma_max:
        return f"sigma: expected a value in [sigma_min, sigma_max] = [{c.sigma_min}, {c.sigma_max}], got {c.sigma}"
    return None


def _sigma_schedule(c) -> Optional[str]:
    if c.sigma_final is not None and c.sigma_decay_steps == 0:
        return (f"sigma_final: a schedule needs sigma_decay_steps >= 1 (its length), got sigma_final={c.sigma_final} with "
                "sigma_decay_steps=0, which would keep sigma constant; set sigma_decay_steps or drop sigma_final")
    if c.sigma_final is None and c.sigma_decay_steps > 0:
        return (f"sigma_decay_steps: expected 0 without sigma_final (nothing to decay to), got {c.sigma_decay_steps}; "
                "set sigma_final")
    if c.sigma_final is not None and c.learn_sigma:
        return ("sigma_final: learn_sigma=True learns sigma, so the schedule would do nothing; use one of the two, got "
                f"sigma_final={c.sigma_final} with learn_sigma=True")
    return None


def _weights(c) -> Optional[str]:
    if not 0 <= c.w_min <= 1 <= c.w_max:
        return f"w_min, w_max: expected 0 <= w_min <= 1 <= w_max so that the mean weight can be one, got {c.w_min}, {c.w_max}"
    return None


def _stop(c) -> Optional[str]:
    if c.stop_ramp > 0 and (c.stop_step is None or c.stop_ramp > c.stop_step):
        return (f"stop_ramp: expected at most stop_step steps (the ramp ends at stop_step), got stop_ramp={c.stop_ramp} "
                f"with stop_step={c.stop_step}; set stop_step, or shorten the ramp")
    return None


def _adaptive(c) -> Optional[str]:
    if c.adaptive == "agreement" and c.hidden_dim is None:
        return ("adaptive: 'agreement' measures the alignment gradient on the diffusion tokens h in front of the projector, so "
                "the module must own the projector (hidden_dim set); a host that hands over only projected tokens (REPA's "
                "zs_tilde) must hand over h instead (tap the block, pass hidden_dim=D, drop the model's projector), or use "
                "adaptive='achievability'")
    if not c.adaptive_min <= 1 <= c.adaptive_max:
        return (f"adaptive_min, adaptive_max: expected 0 <= adaptive_min <= 1 <= adaptive_max so that the mean strength "
                f"can be one, got {c.adaptive_min}, {c.adaptive_max}")
    if c.adaptive != "none" and c.adaptive_gain == 0 and not c.adaptive_terminate:
        return (f"adaptive_gain: expected a value > 0 without adaptive_terminate (a gain of 0 changes nothing), got "
                f"{c.adaptive_gain!r}; use adaptive='none', a gain > 0, or adaptive_terminate=True")
    return None


#: the rules between fields, checked in this order once every field has passed its row
RULES: List[Callable[[Any], Optional[str]]] = [inert_options, _group_size, _sigma, _sigma_schedule, _weights, _stop, _adaptive]


def check_config(cfg) -> None:
    """Validate and normalise every field of ``cfg`` (in place), then the rules between fields.

    Raises:
        ValueError: naming the first bad field, what it allows and the value that came.
    """
    for name, kind in FIELDS.items():
        setattr(cfg, name, kind(name, getattr(cfg, name)))
    for rule in RULES:
        message = rule(cfg)
        if message:
            raise ValueError(message)
