"""The Gaussian policy: ``G`` sampled actions per token around ``mu``, the score-function estimator.

``pi(z | h) = N(m, diag(s^2))`` with ``m = normalize(mu)`` ('sphere') or ``m = mu`` ('euclidean').
Memory is bounded: actions are processed in chunks of at most ``max_action_elements`` elements;
when the group does not fit in one chunk the noise is regenerated from per-chunk seeds, and the
surrogate is assembled from sufficient statistics (:mod:`vrpo_loss.functional.gaussian`), which
give its exact value and gradient in O(B N C) memory. A call runs four stages: rewards, advantages,
surrogate, metrics.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VRPOConfig
from ..distributed import world_rank
from ..functional import (
    gaussian_statistics,
    gaussian_surrogate,
    group_advantage,
    signal_fraction,
    tangent,
    token_cosine,
)
from ..rewards import RewardContext, RewardHead
from ..step import StepClock
from .base import Metrics, Objective, Policy, anchored, weighted_rewards
from .noise import ChunkedNoise

__all__ = ["GaussianPolicy"]


class GaussianPolicy(Policy):
    """Gaussian policy around the projected tokens.

    Args:
        config: reads ``target_dims``, ``group_size``, ``sigma``, ``space``, ``antithetic``,
            ``control_variate``, ``learn_sigma``, ``sigma_final``, ``sigma_decay_steps``,
            ``sigma_min``, ``sigma_max``, ``adv_scale``, ``adv_eps``, ``adv_clip``, ``max_action_elements``.

    The noise seed of a call mixes the policy's seed (drawn once, saved in ``state_dict``), the
    step, the call's number within the step (gradient accumulation's micro-batches), the rank and the
    encoder. The step comes from ``clock`` (a :class:`~vrpo_loss.step.StepClock`, set by
    :class:`~vrpo_loss.VRPOAlignment`), read eagerly, so ``torch.compile`` does not guard on it; a
    policy used alone (``clock`` None) reads ``ctx.step``.
    """

    def __init__(self, *, config: VRPOConfig):
        super().__init__()
        self.config = config
        self.noise = ChunkedNoise(group_size=config.group_size, antithetic=config.antithetic,
                                  max_elements=config.max_action_elements)
        self.log_sigma = (
            nn.ParameterList(nn.Parameter(torch.full((c,), math.log(config.sigma))) for c in config.target_dims)
            if config.learn_sigma else None
        )
        self.seed = int(torch.randint(0, 1 << 62, (1,)).item())  # CPU generator: no device sync
        self.clock: Optional[StepClock] = None  # the owner's step counter (None: ctx.step)

    @property
    def uses_step(self) -> bool:  # with a clock the step never enters the traced code through ctx.step
        return self.clock is None

    @classmethod
    def from_config(cls, cfg: VRPOConfig) -> "GaussianPolicy":
        return cls(config=cfg)

    def get_extra_state(self):
        return {"seed": self.seed}

    def set_extra_state(self, state):
        self.seed = int(state["seed"])

    def call_seed(self, step: Optional[int], encoder: int, micro: int = 0) -> int:
        """The noise seed of call ``micro`` of ``step`` (None: 0) for ``encoder`` on this rank."""
        key = (self.seed, step or 0, world_rank(), encoder) + ((micro,) if micro else ())  # micro 0: as 0.1.0
        return hash(key) & ((1 << 62) - 1)

    def _now(self, step: Optional[int]) -> Tuple[Optional[int], int]:
        """The step and the call's number within it: the clock's, else ``step`` (``ctx.step``) and 0."""
        return (self.clock.step, self.clock.micro) if self.clock is not None else (step, 0)

    @torch.compiler.disable
    def _draw(self, encoder: int, step: Optional[int], i: int, shape, device, dtype) -> torch.Tensor:
        """Noise chunk ``i`` of this call, drawn eagerly (under torch.compile the seed stays out of the guards)."""
        step, micro = self._now(step)
        return self.noise.chunk(self.call_seed(step, encoder, micro), i, shape, device, dtype)

    def _chunks(self, ctx: RewardContext, shape, device, dtype):
        """``(g0, half)`` per chunk, as :meth:`ChunkedNoise.chunks`, one chunk held at a time."""
        for i, g0 in enumerate(self.noise.starts(shape)):
            yield g0, self._draw(ctx.encoder, ctx.step, i, shape, device, dtype)

    def sigma_at(self, encoder: int, device, step: Optional[int] = None) -> torch.Tensor:
        """The exploration std of ``encoder`` at ``step`` (None: 0): (C,) if learned, else scalar."""
        cfg = self.config
        if self.log_sigma is not None:  # learned: kept in [sigma_min, sigma_max]
            return self.log_sigma[encoder].clamp(math.log(cfg.sigma_min), math.log(cfg.sigma_max)).exp()
        s = cfg.sigma
        if cfg.sigma_final is not None and cfg.sigma_decay_steps > 0:
            frac = min((step or 0) / cfg.sigma_decay_steps, 1.0)
            s = math.exp((1 - frac) * math.log(cfg.sigma) + frac * math.log(cfg.sigma_final))
        return torch.full((), s, device=device)  # constant or scheduled: as given

    @torch.compiler.disable
    def _scheduled_sigma(self, encoder: int, step: Optional[int], device) -> torch.Tensor:
        return self.sigma_at(encoder, device, self._now(step)[0])  # eager: a tensor, no guard on the step

    def _scale(self, ctx: RewardContext, c: int, device) -> torch.Tensor:
        cfg = self.config
        scheduled = cfg.sigma_final is not None and cfg.sigma_decay_steps > 0 and self.log_sigma is None
        s = self._scheduled_sigma(ctx.encoder, ctx.step, device) if scheduled else self.sigma_at(ctx.encoder, device)
        return s / math.sqrt(c) if cfg.space == "sphere" else s

    def _reward_gradient(self, m0: torch.Tensor, ctx: RewardContext, heads: Sequence[RewardHead]) -> torch.Tensor:
        """Gradient of the weighted token reward with respect to the action's offset, at zero offset.

        Shape: m0 (B, N, C) -> (B, N, C).
        """
        with torch.enable_grad():
            x = m0.detach().clone().requires_grad_(True)
            z = F.normalize(x, dim=-1) if self.config.space == "sphere" else x
            total = sum(h.weight * h.reward(z.unsqueeze(0), ctx).float() for h in heads)
            if not isinstance(total, torch.Tensor) or not total.requires_grad:
                raise ValueError("control_variate: the token-level reward heads must be differentiable in z; set control_variate=False")
            (grad,) = torch.autograd.grad(total.sum(), x)
        return grad

    def _chunk_rewards(self, half, m0, s0, ctx, heads):
        """Stage 1 for one chunk: each head's fast path when every head offers one, else materialised actions."""
        anti = self.config.antithetic
        fast = []
        for h in heads:
            r = h.gaussian_reward(half, m0, s0, ctx, antithetic=anti)
            if r is None:
                break
            fast.append(r)
        if len(fast) == len(heads) and heads:
            it = iter(fast)
            return weighted_rewards(heads, lambda h: next(it), cast=False)
        eps = torch.cat([half, -half]) if anti else half
        x = m0 + s0 * eps
        z = F.normalize(x, dim=-1) if self.config.space == "sphere" else x
        return weighted_rewards(heads, lambda h: h.reward(z, ctx))

    @torch.no_grad()
    def _rewards(self, m0, s0, ctx, heads, lin) -> Tuple[torch.Tensor, Optional[torch.Tensor], Metrics, Optional[torch.Tensor]]:
        """Stage 1: the weighted rewards (G, B, N), their residuals after the control variate, the heads'
        mean rewards over the whole group, and the noise when the group fits in one chunk."""
        rewards, residuals, each, kept = [], [], {}, None
        n_chunks = len(self.noise.starts(m0.shape))
        for _, half in self._chunks(ctx, m0.shape, m0.device, m0.dtype):
            total, per_head = self._chunk_rewards(half, m0, s0, ctx, heads)
            for k, v in per_head.items():
                each.setdefault(k, []).append(v)
            rewards.append(total)
            if lin is not None:  # minus the linearisation lin . d_g (odd in the noise)
                el = torch.linalg.vecdot(half, lin * s0)
                residuals.append(total - (torch.cat([el, -el]) if self.config.antithetic else el))
            if n_chunks == 1:
                kept = half
        means = {f"rewards/{k}/mean": torch.cat(v).mean() for k, v in each.items()}
        return torch.cat(rewards), (torch.cat(residuals) if lin is not None else None), means, kept

    def _advantages(self, r, res, lin, s0):
        """Stage 2: group-relative advantages; with a control variate, of the residual, scaled by the full
        reward's spread, whose linear part ``var(lin . d) = sum_c lin_c^2 s_c^2`` is known exactly."""
        cfg = self.config
        std = None if lin is None else ((lin.pow(2) * s0.pow(2)).sum(-1) + res.var(0, unbiased=False)).sqrt().unsqueeze(0)
        adv, zero_std = group_advantage(r if lin is None else res, scale=cfg.adv_scale, eps=cfg.adv_eps, clip=cfg.adv_clip,
                                        std=std, batch_std=r.std(unbiased=False))
        return adv, zero_std, std

    def _linear_gradient(self, lin, r, std, zero_std, n, c) -> torch.Tensor:
        """The linear part's expected score-function gradient on ``m``: ``lin / (C * scale)`` exactly
        (log-probs are channel means); zero for zero-variance groups. Shape: (B, N, C)."""
        cfg = self.config
        b = lin.shape[0]
        if cfg.adv_scale == "group":
            spread = std.squeeze(0) + cfg.adv_eps
        elif cfg.adv_scale == "batch":
            spread = (r.std(unbiased=False) + cfg.adv_eps).expand(b, n)
        else:
            spread = torch.ones_like(r[0])
        g_lin = lin / (n * c * spread.unsqueeze(-1))
        return g_lin.masked_fill(zero_std.unsqueeze(-1), 0.0)

    def objective(self, mu, ctx, heads, *, anchor_coeff, policy_coeff, diagnostics, metrics) -> Objective:
        pg, m = self._policy_term(mu, ctx, heads, diagnostics=diagnostics, metrics=metrics)
        return anchored(pg, m, mu, ctx.targets, anchor_coeff=anchor_coeff, policy_coeff=policy_coeff, metrics=metrics)

    def _policy_term(self, mu, ctx, heads, *, diagnostics, metrics):
        cfg = self.config
        b, n, c = mu.shape
        heads = list(heads)
        m = F.normalize(mu, dim=-1) if cfg.space == "sphere" else mu
        m0 = m.detach()
        s = self._scale(ctx, c, mu.device)
        s0 = s.detach()
        lin = self._reward_gradient(m0, ctx, heads) if cfg.control_variate else None  # (B, N, C)
        r, res, out, kept = self._rewards(m0, s0, ctx, heads, lin)
        adv, zero_std, std = self._advantages(r, res, lin, s0)
        coef = adv / (cfg.group_size * n)  # (G, B, N): weight of each action's log-prob
        chunks = [(0, kept)] if kept is not None else self._chunks(ctx, m0.shape, m0.device, m0.dtype)
        S0, S1, S2 = gaussian_statistics(chunks, coef, s0, antithetic=cfg.antithetic)
        pg = gaussian_surrogate(m, s, coef, S0, S1, S2)
        g_lin = None
        if lin is not None:
            g_lin = self._linear_gradient(lin, r, std, zero_std, n, c)
            pg = pg - (g_lin * (m - m0)).sum(dim=(1, 2))
        if metrics or diagnostics:  # stage 4 on the calls that report it (metrics_every, diagnostics_every)
            out.update(self._metrics(mu, ctx.targets, s0, adv, zero_std, S1, g_lin, diagnostics, full=metrics))
        return pg, out

    @torch.no_grad()
    def _metrics(self, mu, y, s0, adv, zero_std, S1, g_lin, diagnostics, full) -> Metrics:
        """Stage 4: detached metrics (``full``), and the closed-form signal fraction when asked."""
        cfg = self.config
        c = mu.shape[-1]
        sphere = cfg.space == "sphere"
        out: Metrics = {}
        if full:
            out.update({"sigma": (s0 * (math.sqrt(c) if sphere else 1.0)).mean(), "adv/std": adv.std(),
                        "adv/clip_frac": (adv.abs() >= cfg.adv_clip).float().mean(),
                        "frac_zero_std": zero_std.float().mean()})
            cos = token_cosine(mu, y)
            out["kl"] = ((1 - cos) / (s0.mean() * math.sqrt(c) if sphere else s0.mean()).pow(2)).mean()
        if diagnostics:
            g_m = -S1 / (c * s0.pow(2))  # d pg / d m
            if g_lin is not None:
                g_m = g_m - g_lin
            mu0 = mu.detach()
            g_mu = tangent(g_m, F.normalize(mu0, dim=-1)) / mu0.norm(dim=-1, keepdim=True).clamp_min(1e-12) if sphere else g_m
            out["signal_frac"] = signal_fraction(g_mu, mu0, y)
        return out
