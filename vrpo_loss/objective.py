"""The objective as one function of tensors: targets -> per-token terms -> per-sample factors -> reduction.

:func:`alignment_loss` is to :class:`~vrpo_loss.VRPOAlignment` what ``pytorch_msssim.ssim`` is to
``SSIM``: the stateless objective, computed from the projected tokens and the encoder's. The module
holds the state (projectors, running statistics, step) and calls :func:`objective`, the same
computation without the checks of inputs that only the module can supply::

    from vrpo_loss import alignment_loss
    loss = alignment_loss(mu, y, t=t, mode="repa", time_weight="sigmoid").loss  # VA-REPA on tensors

The stages, in order, each in its own file: :mod:`~vrpo_loss.targets` (z-score, unit norm); the
projection is the caller's (:mod:`~vrpo_loss.projector` in the module); the per-token terms, each
reduced to a per-sample value and returned by name in ``VRPOOutput.terms`` (REPA's cosine,
:mod:`~vrpo_loss.policies` for the policy term, :mod:`~vrpo_loss.structure`); the per-sample factors
(:mod:`~vrpo_loss.factors`, multiplied in :func:`~vrpo_loss.factors.combine`); the reduction
(:mod:`~vrpo_loss.reduction`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import torch

from .config import VRPOConfig
from .factors import combine
from .factors.stop import stop_factor
from .factors.time_weight import time_weight_factor
from .functional import repa_projection_loss, token_cosine
from .output import VRPOOutput
from .policies import Policy, policy_from_config
from .reduction import Metrics, encoder_mean, reduce_terms
from .rewards import RewardContext, RewardHead, heads_from_config
from .structure import structure_loss
from .targets import prepare_targets
from .validation import as_list

__all__ = ["Terms", "alignment_loss", "factors_and_reduction", "objective", "token_terms"]

Tokens = Union[torch.Tensor, Sequence[torch.Tensor]]


def alignment_loss(
    mu: Tokens, y: Tokens, *, t: Optional[torch.Tensor] = None, config: Optional[VRPOConfig] = None,
    policy: Optional[Policy] = None, heads: Optional[Sequence[RewardHead]] = None,
    weight: Optional[torch.Tensor] = None, strength: Optional[torch.Tensor] = None,
    stop_scale: Optional[Union[float, torch.Tensor]] = None, step: Optional[int] = None,
    denoise_loss: Optional[torch.Tensor] = None, x0_pred: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
    metrics: bool = True, diagnostics: bool = False, **options,
) -> VRPOOutput:
    """The alignment objective of :class:`~vrpo_loss.VRPOAlignment` on tensors, without state.

    Args:
        mu: projected diffusion tokens (B, N, C), or a list, one per encoder (what a projector returns;
            ``VRPOAlignment.project`` is the module's).
        y: encoder tokens of the same shapes, as the encoder gives them (the targets stage normalises them).
        t: (B,) in [0, 1], 0 = clean data (needed by ``time_weight="sigmoid"`` and by heads that read it).
        config, **options: a :class:`~vrpo_loss.VRPOConfig` or its fields, as the module takes them.
        policy: the policy (default: built from the config; pass an instance for a policy with learned
            parameters, e.g. the module's ``.policy``).
        heads: the token-level reward heads (default: the config's; pass the module's ``.token_heads``
            for a head with trained parameters, e.g. the decodability head).
        weight: (B,) the sample weight ``w_b`` (the sample-level stage's output, from running statistics);
            required when ``sample_weight != 0``, else one.
        strength: (B,) the adaptive strength (from running statistics); required when ``adaptive`` is set.
        stop_scale: HASTE's stop factor in [0, 1] (a float or a 0-dim tensor); default: from ``step``
            when ``stop_step`` is set.
        step: the optimizer step (for ``stop_step`` and for a policy or head that reads it).
        denoise_loss, x0_pred, x0: what reward heads may read (see :class:`~vrpo_loss.RewardContext`).
        metrics: compute every metric (False: only those reported on every step).
        diagnostics: also compute the signal-fraction diagnostic.

    Shape:
        Output: :class:`~vrpo_loss.VRPOOutput`: ``loss`` scalar, ``per_sample`` (B,), ``terms`` (each (B,)).
    """
    cfg = VRPOConfig.resolve(config, options)
    mus, ys = as_list(mu, "mu"), as_list(y, "y")
    if len(mus) != len(ys) or any(m.shape[:2] != v.shape[:2] for m, v in zip(mus, ys)):
        raise ValueError(f"y: expected one target per mu, each of the same (B, N), got mu shapes {[tuple(m.shape) for m in mus]} "
                         f"and y shapes {[tuple(v.shape) for v in ys]}; resample the targets to the tokens' grid first")
    for arg, name, needed, given in (("weight", "sample_weight", cfg.sample_weight != 0 and cfg.mode == "vrpo", weight),
                                     ("strength", "adaptive", cfg.adaptive != "none", strength)):
        if needed and given is None:
            raise ValueError(f"{arg}: {name}={getattr(cfg, name)!r} scales each sample by a factor from running statistics, "
                             f"got {arg}=None; pass {arg}= (B,), or use VRPOAlignment, which keeps the statistics")
    if cfg.time_weight != "uniform" and t is None:
        raise ValueError(f"t: time_weight={cfg.time_weight!r} weights each sample by its time and needs t (B,), got None")
    if cfg.stop_step is not None and stop_scale is None:
        if step is None:
            raise ValueError(f"step: stop_step={cfg.stop_step} stops the alignment at that step and needs step= (or "
                             "stop_scale=), got neither")
        stop_scale = stop_factor(step, cfg.stop_step, cfg.stop_ramp)
    if heads is None:
        heads = heads_from_config(cfg)[0]
    if policy is None and cfg.mode == "vrpo" and cfg.policy_coeff > 0:
        policy = policy_from_config(cfg)
    ctx = RewardContext(t=t, denoise_loss=denoise_loss, x0_pred=x0_pred, x0=x0, step=step)
    with torch.autocast(device_type=mus[0].device.type, enabled=False):  # fp32, as in the module
        ys = prepare_targets(ys, norm=cfg.target_norm, alpha=cfg.zscore_alpha)
        return objective([m.float() for m in mus], ys, ctx, cfg, policy=policy, heads=list(heads), weight=weight,
                         strength=strength, stop_scale=stop_scale, metrics=metrics, diagnostics=diagnostics)


def objective(mus: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], ctx: RewardContext, cfg: VRPOConfig, *,
              policy: Optional[Policy], heads: List[RewardHead], weight: Optional[torch.Tensor],
              strength: Optional[torch.Tensor], stop_scale: Optional[Union[float, torch.Tensor]],
              metrics: bool, diagnostics: bool) -> VRPOOutput:
    """The pipeline after the targets and the projection: terms, factors, reduction.

    The alignment terms of each sample (REPA's cosine, the policy term, the structure term) take the
    one factor ``f_b`` = time weight x stop x sample weight x adaptive strength; the heads' own
    losses (e.g. the decodability head's regression, on detached tokens: it trains the head, not the
    generator) are added unscaled.

    Shape:
        mus[e]: (B, N, C_e) projected tokens in fp32, with gradient; ys[e]: (B, N, C_e) the prepared
        targets (:func:`~vrpo_loss.targets.prepare_targets`).
    """
    return factors_and_reduction(token_terms(mus, ys, ctx, cfg, policy=policy, heads=heads, metrics=metrics,
                                             diagnostics=diagnostics),
                                 ctx, cfg, weight=weight, strength=strength, stop_scale=stop_scale, metrics=metrics)


class Terms(NamedTuple):
    """What the per-token terms stage gives the factors: ``align`` (B,) the coefficient-weighted sum of
    the alignment terms, with gradient; ``terms`` by name, each (B,) detached (``terms["anchor"]`` is
    ``1 - mean_n cos(mu, y)`` over encoders, in every mode: the semantic reward the adaptive strength
    reads); ``aux`` the heads' own losses, each (B,); ``metrics`` so far."""
    align: torch.Tensor
    terms: Dict[str, torch.Tensor]
    aux: List[torch.Tensor]
    metrics: Metrics


def factors_and_reduction(terms: Terms, ctx: RewardContext, cfg: VRPOConfig, *, weight: Optional[torch.Tensor],
                          strength: Optional[torch.Tensor], stop_scale: Optional[Union[float, torch.Tensor]],
                          metrics: bool) -> VRPOOutput:
    """Stages 4 and 5: the per-sample factors (time weight, stop, sample weight, adaptive strength)
    multiplied into the alignment terms, then the reduction. Shape: weight, strength: (B,) or None."""
    time = time_weight_factor(ctx.t, cfg.time_weight_center, cfg.time_weight_sharpness) if cfg.time_weight == "sigmoid" else None
    factor = combine(time, stop_scale, weight, strength)
    m = terms.metrics
    if time is not None:
        m["weight/time_min"] = time.min().detach()
    if stop_scale is not None:
        m["stop_scale"] = torch.as_tensor(stop_scale, device=terms.align.device).detach()
    return reduce_terms(terms.align, factor, terms.aux, terms.terms, m, full=metrics)


def token_terms(mus, ys, base: RewardContext, cfg: VRPOConfig, *, policy: Optional[Policy], heads: List[RewardHead],
                metrics: bool, diagnostics: bool) -> Terms:
    """Stage 3: the per-token terms of every encoder, each reduced to a per-sample value (:class:`Terms`).

    Shape: mus[e], ys[e]: (B, N, C_e) as in :func:`objective`."""
    m: Metrics = {}
    terms = {}
    if cfg.mode == "repa":  # REPA's value, -cos (its gradient is the anchor's)
        align = repa_projection_loss(mus, ys, reduction="none")
        terms["anchor"] = (1 + align).detach()
        aux: List[torch.Tensor] = []
    else:
        align, terms, aux = _vrpo_terms(mus, ys, base, cfg, policy, heads, metrics, diagnostics, m)
    if cfg.structure_coeff > 0:
        structure = encoder_mean([structure_loss(mu, y) for mu, y in zip(mus, ys)])
        align = align + cfg.structure_coeff * structure
        terms["structure"] = structure.detach()
    return Terms(align, terms, aux, m)


def _vrpo_terms(mus, ys, base, cfg, policy, heads, full, diag, metrics):
    loss, anchor, pol, aux, per_encoder = [], [], [], [], []
    run_policy = cfg.policy_coeff > 0  # False: no policy work at all
    for e, (mu, y) in enumerate(zip(mus, ys)):
        ctx = dataclasses.replace(base, targets=y, encoder=e)
        if run_policy:
            o = policy.objective(mu, ctx, heads, anchor_coeff=cfg.anchor_coeff, policy_coeff=cfg.policy_coeff,
                                 diagnostics=diag, metrics=full)
            loss.append(o.loss)
            anchor.append(o.anchor)
            pol.append(o.policy)
            per_encoder.append(o.metrics)
        else:
            anchor.append((1 - token_cosine(mu, y)).mean(-1))
        aux += [x for x in (head.aux_loss(mu, ctx) for head in heads) if x is not None]
    terms = {"anchor": encoder_mean(anchor).detach()}
    if run_policy:
        align = encoder_mean(loss)
        terms["policy"] = encoder_mean(pol)
        for key in per_encoder[0]:
            metrics[key] = encoder_mean([m[key] for m in per_encoder])
    else:
        align = cfg.anchor_coeff * encoder_mean(anchor)
    return align, terms, ([torch.stack(aux).sum(0) / len(mus)] if aux else [])
