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
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adaptive import AdaptiveStrength
from .advantage import TimeBinnedNormalizer, world_rank
from .config import VRPOConfig
from .functional import bounded_sample_weight, repa_projection_loss, token_cosine
from .policy import CorrespondencePolicy, GaussianPolicy
from .projector import build_projector
from .rewards import DecodabilityReward, FidelityReward, PerceptualReward, RewardContext, RewardHead, SemanticReward
from .validation import as_list, check_inputs, check_optional, start_value_check

__all__ = ["VRPOAlignment", "VRPOOutput"]


@dataclass
class VRPOOutput:
    """What :class:`VRPOAlignment` returns.

    Attributes:
        loss: scalar, what replaces REPA's ``proj_loss`` (equals ``per_sample.mean()``).
        per_sample: (B,), for hosts that reduce per sample (SiT/DiT ``terms["loss"]``).
        metrics: detached scalars for logging (``loss_policy``, ``loss_anchor``, ``rewards/<head>/mean``,
            ``adv/std``, ``frac_zero_std``, ``kl``, ``clip_frac``, ``signal_frac``, ``weight/*`` ...).
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)


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
        Output: :class:`VRPOOutput` with ``loss`` scalar and ``per_sample`` (B,).
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
        if config is not None and not isinstance(config, VRPOConfig):
            raise TypeError(f"config: expected a VRPOConfig, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(VRPOConfig)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"VRPOAlignment: unknown option(s) {unknown}; the options are the fields of VRPOConfig: {sorted(known)}")
        cfg = dataclasses.replace(config, **kwargs) if config is not None else VRPOConfig(**kwargs)
        self.config = cfg

        self.projectors = (
            nn.ModuleList(build_projector(cfg.hidden_dim, c, cfg.projector_dim) for c in cfg.target_dims)
            if cfg.hidden_dim is not None
            else None
        )
        token_heads: List[RewardHead] = []
        sample_heads: List[RewardHead] = []
        if cfg.semantic_weight > 0:
            token_heads.append(SemanticReward(weight=cfg.semantic_weight))
        if cfg.decodability_weight > 0:
            patch_dim = cfg.decodability_channels * cfg.decodability_patch**2
            token_heads.append(
                DecodabilityReward(target_dims=cfg.target_dims, patch_dim=patch_dim, patch=cfg.decodability_patch,
                                   hidden=cfg.decodability_hidden, weight=cfg.decodability_weight)
            )
        if cfg.fidelity_weight > 0:
            sample_heads.append(FidelityReward(weight=cfg.fidelity_weight))
        if cfg.perceptual_weight > 0:
            sample_heads.append(
                PerceptualReward(decode=decode, net=perceptual_net, backbone=cfg.perceptual_net, every=cfg.perceptual_every,
                                 subset=cfg.perceptual_subset, weight=cfg.perceptual_weight)
            )
        for h in heads:
            if not isinstance(h, RewardHead):
                raise TypeError(f"heads: expected RewardHead instances, got {type(h).__name__}")
            (token_heads if h.level == "token" else sample_heads).append(h)
        self.token_heads = nn.ModuleList(token_heads)
        self.sample_heads = nn.ModuleList(sample_heads)
        self.normalizer = TimeBinnedNormalizer(
            heads=max(1, len(sample_heads)), time_bins=cfg.time_bins, momentum=cfg.stats_momentum, eps=cfg.adv_eps, clip=cfg.adv_clip
        )
        if cfg.policy == "gaussian":
            self.policy = GaussianPolicy(
                target_dims=cfg.target_dims, group_size=cfg.group_size, sigma=cfg.sigma, space=cfg.space,
                antithetic=cfg.antithetic, control_variate=cfg.control_variate, learn_sigma=cfg.learn_sigma, sigma_final=cfg.sigma_final,
                sigma_decay_steps=cfg.sigma_decay_steps, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                adv_scale=cfg.adv_scale, adv_eps=cfg.adv_eps, adv_clip=cfg.adv_clip, clip_eps=cfg.clip_eps,
                max_action_elements=cfg.max_action_elements,
            )
        else:
            self.policy = CorrespondencePolicy(tau=cfg.tau, adv_scale=cfg.adv_scale, adv_eps=cfg.adv_eps, adv_clip=cfg.adv_clip, clip_eps=cfg.clip_eps)
        self.adaptive = AdaptiveStrength.from_config(cfg)  # per-timestep-bin strength, or None
        self.step = 0  # training calls so far; saved through get_extra_state
        self.seed = int(torch.randint(0, 1 << 62, (1,)).item())  # CPU generator: no device sync

    # ----- state that is not a tensor (step counter, noise seed) travels in state_dict
    def get_extra_state(self):
        return {"step": self.step, "seed": self.seed}

    def set_extra_state(self, state):
        self.step = int(state["step"])
        self.seed = int(state["seed"])

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
        features = as_list(features, "features")
        targets = check_inputs(features, as_list(targets, "targets"), hidden_dim=cfg.hidden_dim,
                               target_dims=cfg.target_dims, resample_tokens=cfg.resample_tokens)
        batch = features[0].shape[0]
        t, denoise_loss = check_optional(batch, t, denoise_loss, x0_pred, x0)
        check = None
        if cfg.validate:
            named = [(f"features[{i}]", h.detach(), "finite") for i, h in enumerate(features)]
            named += [(f"targets[{i}]", y.detach(), "finite") for i, y in enumerate(targets)]
            if t is not None:
                named.append(("t", t.detach(), "unit"))
            if denoise_loss is not None:
                named.append(("denoise_loss", denoise_loss, "finite"))
            check = start_value_check(named)  # read at the end, once this call's work is queued
        commit = None if check is None else check.ok
        if self.adaptive is not None:
            features = self.adaptive.attach(features, t)  # the agreement probe (an identity view of h)

        mus = self.project(features)
        device_type = mus[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            mus = [m.float() for m in mus]
            ys = [F.normalize(y.detach().float(), dim=-1) for y in targets]
            strength, extra = (None, {}) if self.adaptive is None else self.adaptive(mus, ys, t, commit)
            if cfg.mode == "repa":
                per_sample = repa_projection_loss(mus, ys, reduction="none")
                metrics = {"loss_anchor": per_sample.mean().detach(), "cos": -per_sample.mean().detach()}
                per_sample = per_sample if strength is None else per_sample * strength
                out = VRPOOutput(loss=per_sample.mean(), per_sample=per_sample, metrics=metrics)
            else:
                out = self._vrpo(mus, ys, t, denoise_loss, x0_pred, x0, commit, strength)
            out.metrics.update(extra)
        if check is not None:
            check.finish()  # raises on a bad input; the statistics were not updated (masked by check.ok)
        if self.training and cfg.mode != "repa":
            self._advance()
        return out

    @torch.compiler.disable
    def _advance(self) -> None:
        # Runs eagerly under torch.compile: a traced ``self.step += 1`` would guard on the step's value
        # and recompile every call. The traced code reads ``self.step`` only where a result depends
        # on it (the Gaussian noise seed, a diagnostics or perceptual period above 1).
        self.step += 1

    def _sample_weight(self, ctx: RewardContext, metrics: Dict[str, torch.Tensor], batch: int, device, commit) -> torch.Tensor:
        cfg = self.config
        rewards, masks, weights = [], [], []
        for head in self.sample_heads:
            got = head.sample_reward(ctx)
            if got is None:
                rewards.append(torch.zeros(batch, device=device))
                masks.append(torch.zeros(batch, dtype=torch.bool, device=device))
            else:
                r, m = got
                r = r.detach().float().reshape(batch)
                m = torch.ones(batch, dtype=torch.bool, device=device) if m is None else m.reshape(batch)
                metrics[f"rewards/{head.name}/mean"] = (r * m).sum() / m.sum().clamp_min(1)
                rewards.append(r)
                masks.append(m)
            weights.append(head.weight)
        if not rewards:
            return torch.ones(batch, device=device)
        r, m = torch.stack(rewards), torch.stack(masks)
        adv = self.normalizer(r, m, ctx.t, commit=commit)  # (H, B); the running stats update in training mode
        hw = torch.stack([wt * mk.float() for wt, mk in zip(weights, m)])
        a = (hw * adv).sum(0) / hw.sum(0).clamp_min(1e-12)
        metrics["adv/sample_std"] = a.std() if batch > 1 else torch.zeros((), device=device)
        if cfg.sample_weight == 0:
            return torch.ones(batch, device=device)
        w = bounded_sample_weight(a, strength=cfg.sample_weight, w_min=cfg.w_min, w_max=cfg.w_max)
        metrics["weight/min"], metrics["weight/max"] = w.min(), w.max()
        return w

    def _vrpo(self, mus, ys, t, denoise_loss, x0_pred, x0, commit: Optional[torch.Tensor], strength=None) -> VRPOOutput:
        cfg = self.config
        batch, device = mus[0].shape[0], mus[0].device
        uses_step = any(h.uses_step for h in list(self.token_heads) + list(self.sample_heads))
        step = self.step if uses_step else None
        base = RewardContext(t=t, denoise_loss=denoise_loss, x0_pred=x0_pred, x0=x0, step=step)
        metrics: Dict[str, torch.Tensor] = {}
        w = self._sample_weight(base, metrics, batch, device, commit).detach()
        w = w if strength is None else w * strength  # the adaptive per-bin strength scales policy and anchor terms

        stochastic = isinstance(self.policy, GaussianPolicy)
        if stochastic:
            self.policy.step = self.step
        every = cfg.diagnostics_every
        diagnostics = every == 1 or (every > 1 and self.step % every == 0)
        rank = world_rank()
        anchor, policy, aux = [], [], []
        per_encoder: List[Dict[str, torch.Tensor]] = []
        for e, (mu, y) in enumerate(zip(mus, ys)):
            ctx = dataclasses.replace(base, targets=y, encoder=e)
            anchor.append((1 - token_cosine(mu, y)).mean(-1))
            if cfg.policy_coeff > 0:
                seed = hash((self.seed, self.step, rank, e)) & ((1 << 62) - 1) if stochastic else 0
                pg, m = self.policy.term(mu, ctx, list(self.token_heads), w, seed=seed, diagnostics=diagnostics)
                policy.append(pg)
                per_encoder.append(m)
            for head in self.token_heads:
                extra = head.aux_loss(mu, ctx)
                if extra is not None:
                    aux.append(extra)
        loss_anchor = torch.stack(anchor).mean(0)
        per_sample = cfg.anchor_coeff * w * loss_anchor
        if policy:
            loss_policy = torch.stack(policy).mean(0)
            per_sample = per_sample + cfg.policy_coeff * loss_policy
            metrics["loss_policy"] = loss_policy.mean().detach()
            for key in per_encoder[0]:
                metrics[key] = torch.stack([m[key] for m in per_encoder]).mean()
        if aux:
            loss_heads = torch.stack(aux).sum(0) / len(mus)
            per_sample = per_sample + loss_heads
            metrics["loss_heads"] = loss_heads.mean().detach()
        metrics["loss_anchor"] = loss_anchor.mean().detach()
        metrics["cos"] = 1 - metrics["loss_anchor"]
        metrics["weight/mean"] = w.mean()
        return VRPOOutput(loss=per_sample.mean(), per_sample=per_sample, metrics={k: v.detach() for k, v in metrics.items()})
