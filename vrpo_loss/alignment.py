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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .compat import migrate_policy_seed
from .config import VRPOConfig
from .factors.adaptive import AdaptiveStrength
from .factors.sample_weight import sample_weight
from .factors.stop import connected_zero, stop_factor
from .functional import resample_grid
from .objective import factors_and_reduction, token_terms
from .output import VRPOOutput
from .policies import policy_from_config, take_policy
from .projector import projectors_from_config
from .reduction import Metrics
from .rewards import RewardContext, RewardHead, heads_from_config
from .saved import extra_state, restore_extra_state
from .statistics import TimeBinnedNormalizer
from .step import StepClock
from .targets import prepare_targets
from .validation import as_list, check_input_values, check_inputs, check_optional

__all__ = ["VRPOAlignment", "VRPOOutput"]


class VRPOAlignment(nn.Module):
    """Reward-guided representation alignment (VRPO), or REPA's loss with ``mode="repa"``.

    Args:
        config: a :class:`VRPOConfig`; or give its fields as keyword arguments (``config`` fields
            overridden by keywords when both are given).
        heads: extra user reward heads (:class:`~vrpo_loss.rewards.RewardHead`), token or sample level.
        decode: for the perceptual reward: maps clean predictions to images in [-1, 1] (VAE decoder).
        perceptual_net: a ready LPIPS module for the perceptual reward (else built on first use); a string
            is the config field of that name (the LPIPS backbone, ``"vgg"``, ``"alex"`` or ``"squeeze"``).
        **kwargs: fields of :class:`VRPOConfig`; ``policy`` may be a :class:`~vrpo_loss.policies.Policy` instance (``"custom"``).

    Shape:
        features: (B, N, D) or a list, one per encoder ((B, N, C_e) when ``hidden_dim=None``).
        targets: (B, N, C_e) or a list, one per encoder (N may differ with ``resample_tokens=True``).
        t: (B,) in [0, 1], 0 = clean data, 1 = noise (optional).
        denoise_loss: (B,) per-sample denoising loss (optional, detached inside).
        x0_pred, x0: predicted and true clean inputs (B, ...) (optional; perceptual/decodability).
        step: keyword-only int, the optimizer step this call belongs to (optional; :mod:`vrpo_loss.step`).
        Output: :class:`VRPOOutput` with ``loss`` scalar and ``per_sample`` (B,), ``loss == per_sample.mean()``
        (B = 0: ``loss`` is an exact zero connected to the inputs and parameters, ``per_sample`` is empty);
        with ``time_weight="sigmoid"``, ``per_sample[b] = B * w_b / sum(w) * loss_b`` (its mean is the weighted mean).

    Peer options (iREPA, VA-REPA, HASTE, SARA-style: stages of :mod:`vrpo_loss.objective`) compose with both modes.
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
        if perceptual_net is not None and not isinstance(perceptual_net, nn.Module):
            kwargs["perceptual_net"], perceptual_net = perceptual_net, None  # the config field of the same name
        own_policy = take_policy(kwargs)  # a user's Policy instance (the config then says 'custom'), or None
        cfg = self.config = VRPOConfig.resolve(config, kwargs)
        self.projectors = projectors_from_config(cfg)
        token_heads, sample_heads = heads_from_config(cfg, heads, decode=decode, perceptual_net=perceptual_net)
        self.token_heads = nn.ModuleList(token_heads)
        self.sample_heads = nn.ModuleList(sample_heads)
        self._user_sample_heads = any(h.level == "sample" for h in heads)  # their rewards may be read elsewhere
        if cfg.mode == "vrpo" and cfg.policy_coeff > 0 and not token_heads:
            raise ValueError("policy_coeff: the policy term needs a token-level reward head (semantic_weight > 0, "
                             f"decodability_weight > 0 or a token head in heads=), got none with policy_coeff={cfg.policy_coeff}; "
                             "add one, or set policy_coeff=0")
        self.normalizer = TimeBinnedNormalizer.from_config(cfg, heads=max(1, len(sample_heads)))
        self.policy = own_policy if own_policy is not None else policy_from_config(cfg)
        self.adaptive = AdaptiveStrength.from_config(cfg)  # per-timestep-bin strength, or None
        self.clock = StepClock(cfg.accumulation_steps)  # optimizer steps (vrpo_loss/step.py); in the extra state
        if hasattr(self.policy, "clock"):
            self.policy.clock = self.clock  # the Gaussian policy reads it eagerly (no guard under torch.compile)
        self.register_load_state_dict_pre_hook(migrate_policy_seed)  # checkpoints of earlier versions

    @property
    def step(self) -> int:
        """The optimizer step of the next call (see :mod:`vrpo_loss.step`); setting it starts that step."""
        return self.clock.step

    @step.setter
    def step(self, value: int) -> None:
        self.clock.step, self.clock.micro = int(value), 0

    def get_extra_state(self) -> Dict[str, Any]:
        return extra_state(self.clock, self.config)  # the step counter and the options (vrpo_loss/saved.py)

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        restore_extra_state(self.clock, self.config, state)  # warns naming each saved option that differs

    def extra_repr(self) -> str:
        return "mode={0.mode!r}, policy={0.policy!r}, hidden_dim={0.hidden_dim}, target_dims={0.target_dims}".format(self.config)

    def project(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Projected tokens ``mu`` per encoder (the projector runs under the caller's autocast)."""
        if self.projectors is None:
            return list(features)
        # Without autocast, features of another float dtype (fp16/bf16/fp64) are cast to the projector's.
        dtype = next(self.projectors.parameters()).dtype
        cast = not torch.is_autocast_enabled(features[0].device.type)
        return [p(h.to(dtype) if cast else h) for p, h in zip(self.projectors, features)]

    def forward(self, features, targets, t=None, denoise_loss=None, x0_pred=None, x0=None, *,
                step: Optional[int] = None) -> VRPOOutput:
        """The loss of one call; ``step``: the optimizer step this call belongs to (optional; see
        :mod:`vrpo_loss.step`). Without it, calls with gradients enabled in training mode advance the
        counter, one step every ``accumulation_steps`` calls."""
        cfg = self.config
        if step is not None:
            self._set_step(step)
        features, targets = as_list(features, "features"), as_list(targets, "targets")
        check_inputs(features, targets, hidden_dim=cfg.hidden_dim, target_dims=cfg.target_dims,
                     resample_tokens=cfg.resample_tokens)
        t, denoise_loss = check_optional(features[0].shape[0], t, denoise_loss, x0_pred, x0, features[0].device)
        if cfg.time_weight != "uniform" and t is None:
            raise ValueError(f"time_weight: {cfg.time_weight!r} weights each sample by its time and needs t, got t=None; "
                             "pass t (0 = clean data, 1 = noise)")
        check = check_input_values(features, targets, t, denoise_loss) if cfg.validate else None
        targets = [y if y.shape[1] == h.shape[1] else resample_grid(y, h.shape[1], f"targets[{i}]")
                   for i, (h, y) in enumerate(zip(features, targets))]
        ctx = RewardContext(t=t, denoise_loss=denoise_loss, x0_pred=x0_pred, x0=x0)
        scale = None if cfg.stop_step is None else self._stop_scale(features[0].device)
        commit = None if check is None else check.ok
        when = self._schedule() if cfg.mode == "vrpo" else None  # (metrics, diagnostics) this call
        if scale is not None and scale[0]:  # terminated (HASTE): an exact, connected zero; no alignment work
            out = self._zero(features, {"stop_scale": scale[1]})
        elif features[0].shape[0] == 0:
            out = self._empty(features, targets, ctx, commit, when)
        else:
            out = self._align(features, targets, ctx, commit, None if scale is None else scale[1], when)
        if check is not None:
            check.finish()  # raises on a bad input; the statistics were not updated (masked by check.ok)
        self._advance(step is not None)
        return out

    def _align(self, features, targets, ctx: RewardContext, commit: Optional[torch.Tensor],
               scale: Optional[torch.Tensor], when: Optional[Tuple[bool, bool]]) -> VRPOOutput:
        """The pipeline (:mod:`vrpo_loss.objective`): targets, projection, the per-token terms, then the
        factors (the stateful ones, sample weight and adaptive strength, computed here from running
        statistics; the adaptive strength from the terms' anchor) and the reduction."""
        cfg = self.config
        if self.adaptive is not None:
            features = self.adaptive.attach(features)  # the agreement probe (an identity view of h)
        mus = self.project(features)
        with torch.autocast(device_type=mus[0].device.type, enabled=False):
            mus = [m.float() for m in mus]
            ys = prepare_targets(targets, norm=cfg.target_norm, alpha=cfg.zscore_alpha)
            full, diag, weight, metrics = False, False, None, {}
            if cfg.mode == "vrpo":
                full, diag = when
                ctx = dataclasses.replace(ctx, step=self._step_if_read())
                self._check_heads(mus, ctx)
                if self._sample_stage_runs(full):
                    weight = self._sample_weight(ctx, mus[0].shape[0], mus[0].device, commit, metrics if full else None)
            terms = token_terms(mus, ys, ctx, cfg, policy=self.policy, heads=list(self.token_heads), metrics=full,
                                diagnostics=diag)
            strength = None
            if self.adaptive is not None:  # reads the anchor term's cosines; its metrics where the others are full
                strength, am = self.adaptive(1 - terms.terms["anchor"], ctx.t, commit, metrics=full or cfg.mode == "repa",
                                             update=self._adaptive_update())
                metrics.update(am)
            out = factors_and_reduction(terms, ctx, cfg, weight=weight, strength=strength, stop_scale=scale, metrics=full)
        out.metrics.update({k: v.detach() for k, v in metrics.items()})
        return out

    def _zero(self, features, metrics: Metrics) -> VRPOOutput:
        """An exact zero loss connected to the inputs and every parameter (zero gradients, not None)."""
        zero = connected_zero(features, self.parameters())
        return VRPOOutput(loss=zero.sum(), per_sample=zero, metrics=metrics)

    def _empty(self, features, targets, ctx: RewardContext, commit: Optional[torch.Tensor],
               when: Optional[Tuple[bool, bool]]) -> VRPOOutput:
        """An empty batch (B = 0; a DDP rank without samples): the connected zero of :meth:`_zero`.

        In ``mode="vrpo"`` the sample-level stage, and in both modes the adaptive strength, still run
        on the zero samples, so the rank enters their all-reduces like every other rank (with zero
        counts): the collectives stay matched, and the running statistics take in the other ranks'
        samples only (alone: unchanged).
        """
        cfg = self.config
        if cfg.mode == "vrpo" and self._sample_stage_runs(when[0]):  # as on the other ranks this call, in their order
            self._check_heads(features, ctx)
            ctx = dataclasses.replace(ctx, step=self._step_if_read())
            self._sample_weight(ctx, 0, features[0].device, commit, {})
        if self.adaptive is not None:
            self.adaptive(features[0].new_zeros(0), ctx.t, commit, metrics=False, update=self._adaptive_update())
        return self._zero(features, {})

    def _sample_weight(self, ctx: RewardContext, batch: int, device, commit: Optional[torch.Tensor],
                       metrics: Optional[Metrics]) -> Optional[torch.Tensor]:
        """The sample weight (:mod:`vrpo_loss.factors.sample_weight`; its statistics take the batch in),
        or None for weight one."""
        cfg = self.config
        w = sample_weight(list(self.sample_heads), self.normalizer, ctx, batch=batch, device=device,
                          strength=cfg.sample_weight, w_min=cfg.w_min, w_max=cfg.w_max, commit=commit, metrics=metrics)
        return w if cfg.sample_weight != 0 else None

    def _check_heads(self, features, ctx: RewardContext) -> None:
        # metadata checks of the heads' inputs, before the running statistics take the batch in
        for head in [*self.token_heads, *self.sample_heads]:
            for h in features:
                head.check_inputs(ctx, h.shape[1])

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
    def _set_step(self, step: int) -> None:
        self.clock.set(step)

    @torch.compiler.disable
    def _advance(self, explicit: bool) -> None:
        # Runs eagerly under torch.compile: a traced ``self.step += 1`` would guard on the step's value
        # and recompile every call. A call counts when it could feed an optimizer step: training mode with
        # gradients enabled (validation calls under no_grad do not), in both modes.
        if self.training and torch.is_grad_enabled():
            self.clock.count(explicit=explicit)

    @torch.compiler.disable
    def _schedule(self) -> Tuple[bool, bool]:
        # Whether this call computes the full metrics and the diagnostic (every call in eval mode). Eager
        # under torch.compile: the traced code sees two booleans, so it compiles one graph per
        # combination, once, and does not guard on the step.
        c = self.config
        if not self.training:
            return True, c.diagnostics_every > 0
        return self.step % c.metrics_every == 0, c.diagnostics_every > 0 and self.step % c.diagnostics_every == 0

    @torch.compiler.disable
    def _adaptive_update(self) -> bool:
        # Whether the adaptive strength's statistics take this call in (every adaptive_every steps; the
        # same on every rank, so its all-reduce stays matched). Eager under torch.compile, as _schedule.
        return self.step % self.config.adaptive_every == 0

    def _sample_stage_runs(self, full: bool) -> bool:
        # At sample_weight 0 the built-in heads' stage feeds only metrics: it runs on metric steps only.
        # The same on every rank (the step is), so the statistics' all-reduce stays matched.
        cfg = self.config
        return bool(self.sample_heads) and (cfg.sample_weight != 0 or full or self._user_sample_heads)
