"""``VRPOAlignment``: the module that replaces REPA's projection loss.

Paper: "Improving Visual Representation Alignment Generation with GRPO", arXiv 2606.00583. The
algorithm is this package's reconstruction (``docs/`` and the README explain it):

    L = policy_coeff * mean_b( w_b * policy_term_b )          reward-guided, token level
      + anchor_coeff * mean_b( w_b * mean_n (1 - cos(mu, y)) ) REPA's term, the anchor
      + head losses                                            supervised losses of reward heads

where ``mu`` are the projected diffusion tokens, ``y`` the encoder tokens and ``w_b`` a bounded
per-sample weight set by sample-level rewards normalised per timestep bin. ``mode="repa"`` computes
REPA's loss exactly, for A/B runs.

Example (REPA's ``loss.py``)::

    align = VRPOAlignment(hidden_dim=None, target_dims=(768,))
    proj_loss = align(zs_tilde, zs, t=time_input.flatten(), denoise_loss=denoising_loss).loss
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VRPOConfig
from .functional import repa_projection_loss, resample_grid, token_cosine
from .peers import connected_zero, peer_terms, stop_factor, zscore_tokens
from .policies import policy_from_config
from .projector import build_projector
from .rewards import RewardContext, RewardHead, heads_from_config
from .validation import as_list, check_inputs, check_optional, start_value_check
from .weighting import TimeBinnedNormalizer, sample_weight

__all__ = ["VRPOAlignment", "VRPOOutput"]

Metrics = Dict[str, torch.Tensor]


@dataclass
class VRPOOutput:
    """What :class:`VRPOAlignment` returns.

    Attributes:
        loss: scalar, what replaces REPA's ``proj_loss`` (equals ``per_sample.mean()``).
        per_sample: (B,), for hosts that reduce per sample (SiT/DiT ``terms["loss"]``).
        metrics: detached scalars for logging (``loss_policy``, ``loss_anchor``, ``rewards/<head>/mean``,
            ``adv/std``, ``frac_zero_std``, ``kl``, ``signal_frac``, ``weight/*`` ...).
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)


def _resolve_config(config: Optional[VRPOConfig], kwargs: dict) -> VRPOConfig:
    if config is not None and not isinstance(config, VRPOConfig):
        raise TypeError(f"config: expected a VRPOConfig, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(VRPOConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"VRPOAlignment: unknown option(s) {unknown}; the options are the fields of VRPOConfig: {sorted(known)}")
    return dataclasses.replace(config, **kwargs) if config is not None else VRPOConfig(**kwargs)


class VRPOAlignment(nn.Module):
    """Reward-guided representation alignment (VRPO), or REPA's loss with ``mode="repa"``.

    Args:
        config: a :class:`VRPOConfig`; or give its fields as keyword arguments (``config`` fields
            overridden by keywords when both are given).
        heads: extra user reward heads (:class:`~vrpo_loss.rewards.RewardHead`), token or sample level.
        decode: for the perceptual reward: maps clean predictions to images in [-1, 1] (VAE decoder).
        perceptual_net: a ready LPIPS module for the perceptual reward (else built on first use).
        **kwargs: fields of :class:`VRPOConfig`.

    Shape:
        features: (B, N, D) or a list, one per encoder ((B, N, C_e) when ``hidden_dim=None``).
        targets: (B, N, C_e) or a list, one per encoder (N may differ with ``resample_tokens=True``).
        t: (B,) in [0, 1], 0 = clean data, 1 = noise (optional).
        denoise_loss: (B,) per-sample denoising loss (optional, detached inside).
        x0_pred, x0: predicted and true clean inputs (B, ...) (optional; perceptual/decodability).
        Output: :class:`VRPOOutput` with ``loss`` scalar and ``per_sample`` (B,), ``loss == per_sample.mean()``;
        with ``time_weight="sigmoid"``, ``per_sample[b] = B * w_b / sum(w) * loss_b`` (its mean is the weighted mean).

    Peer options (iREPA, VA-REPA, HASTE, SARA-style; :mod:`vrpo_loss.peers`) compose with both modes.
    """

    def __init__(
        self,
        config: Optional[VRPOConfig] = None,
        *,
        heads: Sequence[RewardHead] = (),
        decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        perceptual_net: Optional[nn.Module] = None,
        **kwargs,
    ):
        super().__init__()
        cfg = self.config = _resolve_config(config, kwargs)
        self.projectors = (
            nn.ModuleList(build_projector(cfg.hidden_dim, c, cfg.projector_dim, kind=cfg.projector,
                                          kernel=cfg.projector_kernel, token_grid=cfg.token_grid)
                          for c in cfg.target_dims)
            if cfg.hidden_dim is not None
            else None
        )
        token_heads, sample_heads = heads_from_config(cfg, heads, decode=decode, perceptual_net=perceptual_net)
        self.token_heads = nn.ModuleList(token_heads)
        self.sample_heads = nn.ModuleList(sample_heads)
        self._user_sample_heads = any(h.level == "sample" for h in heads)  # their rewards may be read elsewhere
        self.normalizer = TimeBinnedNormalizer.from_config(cfg, heads=max(1, len(sample_heads)))
        self.policy = policy_from_config(cfg)
        self.step = 0  # training calls so far; saved through get_extra_state

    # ----- the step counter is not a tensor: it travels in state_dict as extra state
    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state):
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        c = self.config
        return f"mode={c.mode!r}, policy={c.policy!r}, hidden_dim={c.hidden_dim}, target_dims={c.target_dims}"

    def project(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Projected tokens ``mu`` per encoder (the projector runs under the caller's autocast)."""
        if self.projectors is None:
            return list(features)
        return [p(h) for p, h in zip(self.projectors, features)]

    def forward(self, features, targets, t=None, denoise_loss=None, x0_pred=None, x0=None) -> VRPOOutput:
        cfg = self.config
        features, targets = as_list(features, "features"), as_list(targets, "targets")
        check_inputs(features, targets, hidden_dim=cfg.hidden_dim, target_dims=cfg.target_dims,
                     resample_tokens=cfg.resample_tokens)
        t, denoise_loss = check_optional(features[0].shape[0], t, denoise_loss, x0_pred, x0)
        if cfg.time_weight != "uniform" and t is None:
            raise ValueError(f"time_weight: {cfg.time_weight!r} weights each sample by its time and needs t, got t=None; "
                             "pass t (0 = clean data, 1 = noise)")
        when = self._schedule() if cfg.mode == "vrpo" else None  # (metrics, diagnostics) this call
        check = self._start_value_check(features, targets, t, denoise_loss) if cfg.validate else None
        targets = [y if y.shape[1] == h.shape[1] else resample_grid(y, h.shape[1], f"targets[{i}]")
                   for i, (h, y) in enumerate(zip(features, targets))]
        scale = None if cfg.stop_step is None else self._stop_scale(features[0].device)
        if scale is not None and scale[0]:  # terminated (HASTE): an exact, connected zero; no alignment work
            zero = connected_zero(features, self.parameters())
            out = VRPOOutput(loss=zero.mean(), per_sample=zero, metrics={"stop_scale": scale[1]})
        else:
            ctx = RewardContext(t=t, denoise_loss=denoise_loss, x0_pred=x0_pred, x0=x0)
            out = self._align(features, targets, ctx, None if check is None else check.ok,
                              None if scale is None else scale[1], when)
        if check is not None:
            check.finish()  # raises on a bad input; the statistics were not updated (masked by check.ok)
        if self.training:
            self._advance()
        return out

    def _align(self, features, targets, ctx: RewardContext, commit: Optional[torch.Tensor],
               scale: Optional[torch.Tensor], when=None) -> VRPOOutput:
        """Project, prepare the targets, the mode's loss, then the peer terms (structure, time weight, ramp)."""
        cfg = self.config
        mus = self.project(features)
        with torch.autocast(device_type=mus[0].device.type, enabled=False):
            mus = [m.float() for m in mus]
            ys = self._prepare_targets(targets)
            if cfg.mode == "repa":
                per_sample = repa_projection_loss(mus, ys, reduction="none")
                metrics = {"loss_anchor": per_sample.mean().detach(), "cos": -per_sample.mean().detach()}
            else:
                ctx = dataclasses.replace(ctx, step=self._step_if_read())
                out = self._vrpo(mus, ys, ctx, commit, *when)
                per_sample, metrics = out.per_sample, out.metrics
            per_sample, extra = peer_terms(per_sample, mus, ys, ctx.t, cfg, scale)
        return VRPOOutput(loss=per_sample.mean(), per_sample=per_sample, metrics={**metrics, **extra})

    @staticmethod
    def _start_value_check(features, targets, t, denoise_loss):
        named = [(f"features[{i}]", h.detach(), "finite") for i, h in enumerate(features)]
        named += [(f"targets[{i}]", y.detach(), "finite") for i, y in enumerate(targets)]
        if t is not None:
            named.append(("t", t.detach(), "unit"))
        if denoise_loss is not None:
            named.append(("denoise_loss", denoise_loss, "finite"))
        return start_value_check(named)  # read at the end, once this call's work is queued

    def _prepare_targets(self, targets: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The targets as the objective sees them: detached, fp32, z-scored over the tokens with
        ``target_norm="zscore"`` (iREPA, before everything else), unit-normalised per token."""
        ys = [y.detach().float() for y in targets]
        if self.config.target_norm == "zscore":
            ys = [zscore_tokens(y, self.config.zscore_alpha) for y in ys]
        return [F.normalize(y, dim=-1) for y in ys]

    def _step_if_read(self) -> Optional[int]:
        # The step is read only where a result depends on it (a head or a policy that declares
        # ``uses_step``): under torch.compile, reading a Python int guards on its value.
        readers = list(self.token_heads) + list(self.sample_heads)
        if any(h.uses_step for h in readers) or (self.policy.uses_step and self.config.policy_coeff > 0):
            return self.step
        return None

    @torch.compiler.disable
    def _stop_scale(self, device):
        # Eager under torch.compile: the ramp reaches the traced code as a tensor (no guard on the
        # step); only the switch to the terminated branch recompiles, once.
        f = stop_factor(self.step, self.config.stop_step, self.config.stop_ramp)
        return f == 0.0, torch.full((), f, device=device)

    @torch.compiler.disable
    def _advance(self) -> None:
        # Runs eagerly under torch.compile: a traced ``self.step += 1`` would guard on the step's value
        # and recompile every call. It counts training calls in both modes (``stop_step`` reads it).
        self.step += 1

    @torch.compiler.disable
    def _schedule(self) -> Tuple[bool, bool]:
        # Whether this call computes the full metrics and the diagnostic (every call in eval mode). Eager
        # under torch.compile: the traced code sees two booleans, so it compiles one graph per
        # combination, once, and does not guard on the step.
        c = self.config
        if not self.training:
            return True, c.diagnostics_every > 0
        return self.step % c.metrics_every == 0, c.diagnostics_every > 0 and self.step % c.diagnostics_every == 0

    def _vrpo(self, mus, ys, base: RewardContext, commit: Optional[torch.Tensor], full: bool, diag: bool) -> VRPOOutput:
        cfg = self.config
        metrics: Metrics = {}
        w = None  # weight one
        # At strength 0 the built-in heads' stage feeds only metrics: it runs on metric steps only
        if self.sample_heads and (cfg.sample_weight != 0 or full or self._user_sample_heads):
            w = sample_weight(list(self.sample_heads), self.normalizer, base, batch=mus[0].shape[0], device=mus[0].device,
                              strength=cfg.sample_weight, w_min=cfg.w_min, w_max=cfg.w_max, commit=commit,
                              metrics=metrics if full else None)
            w = w if cfg.sample_weight != 0 else None
        run_policy = cfg.policy_coeff > 0  # False: no policy work at all
        loss, anchor, policy, aux, per_encoder = [], [], [], [], []
        for e, (mu, y) in enumerate(zip(mus, ys)):
            ctx = dataclasses.replace(base, targets=y, encoder=e)
            if run_policy:
                o = self.policy.objective(mu, ctx, list(self.token_heads), w, anchor_coeff=cfg.anchor_coeff,
                                          policy_coeff=cfg.policy_coeff, diagnostics=diag, metrics=full)
                loss.append(o.loss)
                anchor.append(o.anchor)
                policy.append(o.policy)
                per_encoder.append(o.metrics)
            else:
                anchor.append((1 - token_cosine(mu, y)).mean(-1))
            aux += [x for x in (head.aux_loss(mu, ctx) for head in self.token_heads) if x is not None]
        if not run_policy:
            loss = [cfg.anchor_coeff * _mean(anchor) if w is None else cfg.anchor_coeff * w * _mean(anchor)]
        return self._reduce(w, loss, anchor, policy, aux, per_encoder, metrics, full=full)

    def _reduce(self, w, loss, anchor, policy, aux, per_encoder, metrics: Metrics, *, full: bool) -> VRPOOutput:
        """The loss in one place: ``anchor_coeff * w * anchor + policy_coeff * policy + head losses``, per sample."""
        per_sample = _mean(loss)
        if policy:
            metrics["loss_policy"] = _mean(policy).mean()
            for key in per_encoder[0]:
                metrics[key] = _mean([m[key] for m in per_encoder])
        if aux:
            loss_heads = torch.stack(aux).sum(0) / len(anchor)
            per_sample = per_sample + loss_heads
            metrics["loss_heads"] = loss_heads.mean()
        metrics["loss_anchor"] = _mean(anchor).mean()
        metrics["cos"] = 1 - metrics["loss_anchor"]
        if full:
            metrics["weight/mean"] = w.mean() if w is not None else torch.ones((), device=per_sample.device)
        return VRPOOutput(loss=per_sample.mean(), per_sample=per_sample,
                          metrics={k: v.detach() if v.requires_grad else v for k, v in metrics.items()})


def _mean(xs: List[torch.Tensor]) -> torch.Tensor:
    """Mean over encoders (no launch for one)."""
    return xs[0] if len(xs) == 1 else torch.stack(xs).mean(0)
