"""Policies over aligned representations, and the policy-gradient term each one contributes.

Both families share one interface, :meth:`Policy.term`: given the projected tokens ``mu`` (with
gradient), the unit encoder tokens and the token-level reward heads, it returns the per-sample
policy loss (the negated clipped surrogate, one on-policy update) and detached metrics. Inside,
the three stages stay separate: rewards (the heads), advantages (:mod:`vrpo_loss.functional`),
surrogate.

- :class:`GaussianPolicy` samples ``G`` actions per token around ``mu`` (on the unit sphere by
  default) and estimates the policy gradient by the score function. Memory is bounded: actions
  are processed in chunks of at most ``max_action_elements`` elements; when the group does not fit
  in one chunk the noise is regenerated from per-chunk seeds, and the surrogate is assembled from
  sufficient statistics (``sum_g c_g``, ``sum_g c_g d_g``, ``sum_g c_g d_g^2`` with ``d_g`` the
  action's offset from the mean), which give its exact value and gradient in O(B N C) memory.
- :class:`CorrespondencePolicy` is categorical over the encoder tokens of the same image,
  ``pi(j | i) = softmax_j(cos(mu_i, y_j) / tau)``; expectations and advantages are exact under
  ``pi``, so there is no sampling variance.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import candidate_advantage, clipped_surrogate, gaussian_log_prob, group_advantage, tangent, token_cosine
from .rewards import RewardContext, RewardHead, SemanticReward

__all__ = ["Policy", "GaussianPolicy", "CorrespondencePolicy", "signal_fraction"]

Metrics = Dict[str, torch.Tensor]


def signal_fraction(policy_grad_mu: torch.Tensor, mu: torch.Tensor, y_unit: torch.Tensor) -> torch.Tensor:
    """Cosine between the policy term's gradient on ``mu`` and REPA's gradient ``d(-cos(mu, y))/d mu``.

    Near 1: the policy term pushes along REPA's direction; near 0: it adds mostly noise.

    Shape:
        policy_grad_mu, mu, y_unit: (B, N, C). Output: scalar.
    """
    # REPA's gradient per token is r = -(y - (y.u) u) / |mu| with u = mu / |mu|; the cosine needs only
    # per-token dot products (no (B, N, C) temporaries beyond them): g.r, |g|^2 and |r|^2.
    raw = torch.linalg.vector_norm(mu, dim=-1)
    norm = raw.clamp_min(1e-12)
    g = policy_grad_mu
    yu = torch.linalg.vecdot(y_unit, mu) / norm
    gu = torch.linalg.vecdot(g, mu) / norm
    uu = (raw / norm).square()
    dot = (-(torch.linalg.vecdot(g, y_unit) - yu * gu) / norm).sum()
    yy = torch.linalg.vector_norm(y_unit, dim=-1).square()
    rr = ((yy - 2 * yu.square() + yu.square() * uu).clamp_min(0) / norm.square()).sum()
    gg = torch.linalg.vector_norm(g).square()
    return dot / (gg * rr).clamp_min(1e-40).sqrt()


class _GradientGiven(torch.autograd.Function):
    """``value`` (B,) in the forward pass; ``grad_output[b] * grad[b]`` on ``x`` (B, ...) in the backward pass.

    For per-sample terms whose gradient on ``x`` is computed in closed form with the value.
    """

    @staticmethod
    def forward(ctx, x, value, grad):
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output.view(-1, *([1] * (grad.dim() - 1))) * grad, None, None


class Policy(nn.Module):
    """Interface of a policy family."""

    def term(
        self,
        mu: torch.Tensor,
        ctx: RewardContext,
        heads: Sequence[RewardHead],
        weight: torch.Tensor,
        *,
        seed: int,
        diagnostics: bool,
    ) -> Tuple[torch.Tensor, Metrics]:
        """Per-sample policy loss and detached metrics.

        Args:
            mu: (B, N, C) fp32 projected tokens, with gradient.
            ctx: reward context; ``ctx.targets`` are the unit encoder tokens (B, N, C).
            heads: the token-level reward heads, each with its ``weight``.
            weight: (B,) per-sample weights w_b (detached).
            seed: seed of this call's noise (deterministic policies ignore it).
            diagnostics: also compute the signal-fraction diagnostic.

        Shape:
            Output: (B,) and a dict of scalars.
        """
        raise NotImplementedError


def _weighted_heads(heads: Sequence[RewardHead], fn, metrics: Metrics, mean_fn) -> torch.Tensor:
    total = None
    for head in heads:
        r = fn(head).float()
        metrics[f"rewards/{head.name}/mean"] = mean_fn(r).detach()
        total = head.weight * r if total is None else total + head.weight * r
    if total is None:
        raise ValueError("heads: the policy term needs at least one token-level reward head with weight > 0 (e.g. semantic_weight=1)")
    return total


class GaussianPolicy(Policy):
    """``pi(z | h) = N(m, diag(s^2))``, with ``m = normalize(mu)`` ('sphere') or ``m = mu`` ('euclidean').

    Args:
        target_dims: token width C of each encoder.
        group_size: actions G per token.
        sigma: exploration std (relative to the unit sphere in 'sphere' space: per-channel std
            ``sigma / sqrt(C)``; per channel and absolute in 'euclidean' space).
        space: 'sphere' or 'euclidean'.
        antithetic: noise in pairs (eps, -eps).
        control_variate: subtract the reward's linearisation at the mean, ``r(m0) + grad r(m0) . d``,
            from the sampled rewards and add its exact contribution, ``grad r(m0) / (C * scale)``,
            in closed form (the token heads must be differentiable in ``z``).
        learn_sigma: learn log-sigma per channel and encoder.
        sigma_final, sigma_decay_steps: optional log-linear schedule of sigma.
        sigma_min, sigma_max: clamp of sigma.
        adv_scale, adv_eps, adv_clip, clip_eps: advantage and surrogate options (see VRPOConfig).
        max_action_elements: memory bound on G_chunk * B * N * C.
    """

    def __init__(
        self,
        *,
        target_dims: Sequence[int],
        group_size: int = 8,
        sigma: float = 0.1,
        space: str = "sphere",
        antithetic: bool = True,
        control_variate: bool = False,
        learn_sigma: bool = False,
        sigma_final=None,
        sigma_decay_steps: int = 0,
        sigma_min: float = 1e-3,
        sigma_max: float = 1.0,
        adv_scale: str = "group",
        adv_eps: float = 1e-4,
        adv_clip: float = 5.0,
        clip_eps: float = 0.2,
        max_action_elements: int = 1 << 26,
    ):
        super().__init__()
        self.group_size = group_size
        self.sigma = sigma
        self.space = space
        self.antithetic = antithetic
        self.control_variate = control_variate
        self.sigma_final = sigma_final
        self.sigma_decay_steps = sigma_decay_steps
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.adv_scale, self.adv_eps, self.adv_clip, self.clip_eps = adv_scale, adv_eps, adv_clip, clip_eps
        self.max_action_elements = max_action_elements
        self.step = 0  # set by the owner before each call (drives the sigma schedule)
        self.log_sigma = (
            nn.ParameterList(nn.Parameter(torch.full((c,), math.log(sigma))) for c in target_dims) if learn_sigma else None
        )

    def sigma_at(self, encoder: int, device: torch.device) -> torch.Tensor:
        """The exploration std of encoder ``encoder`` at the current step: (C,) if learned, else scalar."""
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        if self.log_sigma is not None:
            return self.log_sigma[encoder].clamp(lo, hi).exp()
        s = self.sigma
        if self.sigma_final is not None and self.sigma_decay_steps > 0:
            frac = min(self.step / self.sigma_decay_steps, 1.0)
            s = math.exp((1 - frac) * math.log(self.sigma) + frac * math.log(self.sigma_final))
        return torch.full((), min(max(s, self.sigma_min), self.sigma_max), device=device)

    def noise(self, seed: int, b: int, n: int, c: int, device) -> torch.Tensor:
        """All ``G`` noise draws of a call, exactly as :meth:`term` generates them chunk by chunk.

        For tests and reference computations; :meth:`term` never holds them all at once when they
        exceed the memory bound. Shape: (G, B, N, C).
        """
        k = self.chunk_size(b, n, c)
        gen = torch.Generator(device=device)
        seeds = self._chunk_seeds(seed, k)
        chunks = [self._draw(gen, sd, min(k, self.group_size - g0), (b, n, c), device)
                  for sd, g0 in zip(seeds, range(0, self.group_size, k))]
        return torch.cat([torch.cat([h, -h]) if self.antithetic else h for h in chunks])

    def _chunk_seeds(self, seed: int, k: int):
        return [(seed * 1_000_003 + i) % (1 << 62) for i in range(len(range(0, self.group_size, k)))]

    def _reward_gradient(self, m0: torch.Tensor, ctx: RewardContext, heads: Sequence[RewardHead]) -> torch.Tensor:
        """Gradient of the weighted token reward with respect to the action's offset, at zero offset.

        Shape: m0 (B, N, C) -> (B, N, C).
        """
        with torch.enable_grad():
            x = m0.detach().clone().requires_grad_(True)
            z = F.normalize(x, dim=-1) if self.space == "sphere" else x
            total = sum(h.weight * h.action_reward(z.unsqueeze(0), ctx).float() for h in heads)
            if not isinstance(total, torch.Tensor) or not total.requires_grad:
                raise ValueError("control_variate: the token-level reward heads must be differentiable in z; set control_variate=False")
            (grad,) = torch.autograd.grad(total.sum(), x)
        return grad

    def _draw(self, gen: torch.Generator, seed: int, k: int, shape, device, dtype=torch.float32) -> torch.Tensor:
        """The independent part of a chunk of ``k`` draws: its first half when antithetic, else all of it."""
        gen.manual_seed(seed)
        return torch.randn((k // 2 if self.antithetic else k, *shape), generator=gen, device=device, dtype=dtype)

    def _semantic_rewards(self, half: torch.Tensor, m0: torch.Tensor, s0: torch.Tensor, y_unit: torch.Tensor) -> torch.Tensor:
        """``cos(z_g, y)`` of a chunk's actions without materialising them (scalar sigma, semantic reward).

        With ``x = m0 + s0 * eps``: ``x . y = m0 . y + s0 (eps . y)`` and
        ``|x|^2 = |m0|^2 + 2 s0 (eps . m0) + s0^2 |eps|^2``, so each action needs three reductions of its
        noise; the antithetic partner ``-eps`` reuses them with the signs of the odd terms flipped.

        Shape:
            half: (K, B, N, C); m0, y_unit: (B, N, C). Output: (2K, B, N) when antithetic, else (K, B, N).
        """
        # one action at a time: a batched vecdot would hold a (K, B, N, C) product
        ey = torch.stack([torch.linalg.vecdot(e, y_unit) for e in half])  # (K, B, N)
        em = torch.stack([torch.linalg.vecdot(e, m0) for e in half])
        ee = torch.linalg.vector_norm(half, dim=-1).square_()
        my = torch.linalg.vecdot(m0, y_unit)  # (B, N)
        mm = torch.linalg.vector_norm(m0, dim=-1).square_()
        even = mm + (s0 * s0) * ee
        def cos(sign: float) -> torch.Tensor:
            return (my + sign * s0 * ey) / (even + sign * 2 * s0 * em).clamp_min(0).sqrt().clamp_min(1e-12)
        return torch.cat([cos(1.0), cos(-1.0)]) if self.antithetic else cos(1.0)

    def chunk_size(self, b: int, n: int, c: int) -> int:
        """Actions per chunk under the memory bound (even when antithetic, at least 1 or 2)."""
        k = max(1, self.max_action_elements // max(1, b * n * c))
        if self.antithetic:
            k = max(2, k - k % 2)
        return min(k, self.group_size)

    def term(self, mu, ctx, heads, weight, *, seed, diagnostics):
        b, n, c = mu.shape
        dev = mu.device
        y = ctx.targets
        metrics: Metrics = {}
        m = F.normalize(mu, dim=-1) if self.space == "sphere" else mu
        m0 = m.detach()
        s = self.sigma_at(ctx.encoder, dev)
        if self.space == "sphere":
            s = s / math.sqrt(c)
        s0 = s.detach()
        G = self.group_size
        k = self.chunk_size(b, n, c)
        starts = list(range(0, G, k))
        gen = torch.Generator(device=dev)
        seeds = self._chunk_seeds(seed, k)

        # stage 1: rewards of every action (noise kept when the whole group fits in one chunk). With
        # antithetic pairs only the first half of each chunk's noise is drawn and held: the second is its negation.
        semantic_only = s0.dim() == 0 and all(type(h) is SemanticReward for h in heads) and len(heads) > 0
        y_unit = F.normalize(y, dim=-1) if semantic_only else None
        lin = self._reward_gradient(m0, ctx, heads) if self.control_variate else None  # (B, N, C)
        rewards, residuals, kept = [], [], None
        with torch.no_grad():
            for i, g0 in enumerate(starts):
                half = self._draw(gen, seeds[i], min(k, G - g0), (b, n, c), dev, m0.dtype)
                if semantic_only:
                    r_chunk = self._semantic_rewards(half, m0, s0, y_unit)
                    total = None
                    for h in heads:
                        metrics[f"rewards/{h.name}/mean"] = r_chunk.mean()
                        total = h.weight * r_chunk if total is None else total + h.weight * r_chunk
                    rewards.append(total)
                else:
                    eps = torch.cat([half, -half]) if self.antithetic else half
                    x = m0 + s0 * eps
                    z = F.normalize(x, dim=-1) if self.space == "sphere" else x
                    rewards.append(_weighted_heads(heads, lambda h: h.action_reward(z, ctx), metrics, torch.mean))
                    del eps, x, z
                if lin is not None:  # minus the linearisation lin . d_g (odd in the noise)
                    el = torch.linalg.vecdot(half, lin * s0)
                    residuals.append(rewards[-1] - (torch.cat([el, -el]) if self.antithetic else el))
                if len(starts) == 1:
                    kept = half
        r = torch.cat(rewards)  # (G, B, N)

        # stage 2: group-relative advantages (with a control variate: of the residual, scaled by the
        # full reward's spread, whose linear part var(lin . d) = sum_c lin_c^2 s_c^2 is known exactly)
        if lin is None:
            res, std = r, None
        else:
            res = torch.cat(residuals)
            std = ((lin.pow(2) * s0.pow(2)).sum(-1) + res.var(0, unbiased=False)).sqrt().unsqueeze(0)
        adv, zero_std = group_advantage(res, scale=self.adv_scale, eps=self.adv_eps, clip=self.adv_clip, std=std,
                                        batch_std=r.std(unbiased=False))
        coef = weight.view(1, b, 1) * adv / (G * n)  # (G, B, N): weight of each action's log-prob

        # stage 3: surrogate from sufficient statistics of the offsets d_g = x_g - m0 = s0 * eps_g:
        # S1 = sum_g c_g d_g and S2 = sum_g c_g d_g^2, accumulated in place one action (pair) at a time
        with torch.no_grad():
            S0 = coef.sum(0).unsqueeze(-1)  # (B, N, 1)
            S1 = torch.zeros_like(m0)
            S2 = torch.zeros_like(m0)
            sq_buf = torch.empty_like(m0)
            for i, g0 in enumerate(starts):
                half = kept if kept is not None else self._draw(gen, seeds[i], min(k, G - g0), (b, n, c), dev, m0.dtype)
                cg = coef[g0 : g0 + min(k, G - g0)]
                if self.antithetic:  # c_g d_g + c_g' (-d_g) and c_g d_g^2 + c_g' d_g^2
                    h = half.shape[0]
                    c1, c2 = cg[:h] - cg[h:], cg[:h] + cg[h:]
                else:
                    c1 = c2 = cg
                for j in range(half.shape[0]):
                    S1.addcmul_(c1[j].unsqueeze(-1), half[j])
                    S2.addcmul_(c2[j].unsqueeze(-1), torch.mul(half[j], half[j], out=sq_buf))
            S1.mul_(s0)
            S2.mul_(s0 * s0)
        delta = m0 - m  # zero in value; carries the gradient to mu
        sq = S2 + 2 * delta * S1 + delta.pow(2) * S0  # sum_g c_g (x_g - m)^2
        logp_sum = (-0.5 * sq / s.pow(2) - torch.log(s) * S0).mean(-1)  # sum_g c_g log pi(x_g), up to a constant
        f = logp_sum.sum(-1)  # (B,)
        # negated clipped surrogate at rho == 1: value -mean(w A), gradient -mean(w A grad log pi)
        pg = -coef.sum(dim=(0, 2)) - (f - f.detach())
        g_lin = None
        if lin is not None:
            # the linear part's expected score-function gradient on m, E[(lin . d) grad log pi] / scale,
            # is lin / (C * scale) exactly (log-probs are channel means); zero for zero-variance groups
            if self.adv_scale == "group":
                spread = std.squeeze(0) + self.adv_eps
            elif self.adv_scale == "batch":
                spread = (r.std(unbiased=False) + self.adv_eps).expand(b, n)
            else:
                spread = torch.ones_like(r[0])
            g_lin = (weight.view(b, 1, 1) / n) * lin / (c * spread.unsqueeze(-1))
            g_lin = g_lin.masked_fill(zero_std.unsqueeze(-1), 0.0)
            pg = pg - (g_lin * (m - m0)).sum(dim=(1, 2))

        with torch.no_grad():
            metrics["sigma"] = (s0 * (math.sqrt(c) if self.space == "sphere" else 1.0)).mean()
            metrics["adv/std"] = adv.std()
            metrics["adv/clip_frac"] = (adv.abs() >= self.adv_clip).float().mean()
            metrics["frac_zero_std"] = zero_std.float().mean()
            metrics["clip_frac"] = torch.zeros((), device=dev)
            cos = token_cosine(mu, y)
            metrics["kl"] = ((1 - cos) / (s0.mean() * math.sqrt(c) if self.space == "sphere" else s0.mean()).pow(2)).mean()
            if diagnostics:
                g_m = -S1 / (c * s0.pow(2))  # d pg / d m
                if g_lin is not None:
                    g_m = g_m - g_lin
                if self.space == "sphere":
                    g_mu = tangent(g_m, m0) / mu.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                else:
                    g_mu = g_m
                metrics["signal_frac"] = signal_fraction(g_mu, mu.detach(), y)
        return pg, metrics


class CorrespondencePolicy(Policy):
    """Categorical policy over the encoder tokens of the same image: ``softmax_j(cos(mu_i, y_j) / tau)``.

    The reward of choosing target ``j`` for token ``i`` comes from the token-level heads (semantic
    coherence ``cos(y_i, y_j)``, 1 for ``j = i``). Advantages are group-normalised over the ``N``
    candidates with moments taken exactly under ``pi``, and the surrogate is averaged over the
    candidates weighted by ``pi_old``: the exact expectation of the sampled estimator.

    Args:
        tau: temperature.
        adv_scale, adv_eps, adv_clip, clip_eps: advantage and surrogate options (see VRPOConfig).
    """

    def __init__(self, *, tau: float = 0.1, adv_scale: str = "group", adv_eps: float = 1e-4, adv_clip: float = 5.0, clip_eps: float = 0.2):
        super().__init__()
        self.tau = tau
        self.adv_scale, self.adv_eps, self.adv_clip, self.clip_eps = adv_scale, adv_eps, adv_clip, clip_eps

    def log_probs(self, mu: torch.Tensor, y_unit: torch.Tensor) -> torch.Tensor:
        """``log pi(j | i)``. Shape: mu (B, N, C), y_unit (B, N, C) -> (B, N, N) indexed [b, i, j]."""
        logits = torch.bmm(F.normalize(mu, dim=-1), y_unit.detach().transpose(1, 2)) / self.tau  # targets are data
        return torch.log_softmax(logits, dim=-1)

    def term(self, mu, ctx, heads, weight, *, seed, diagnostics):
        """The policy term with its gradient on ``mu`` in closed form (one fused pass, no autograd graph).

        At ``rho == 1`` (one on-policy update) the clipped surrogate's value is ``-A`` and its gradient
        ``-A grad log pi``, so ``d pg_b / d logits[b, i, j] = -(w_b / N) pi_ij (A_ij - E_pi[A_i])``;
        it is mapped to ``mu`` through the cosine logits and ``normalize``. Value and gradient equal
        :meth:`term_autograd`, which the tests use as the reference. The gradient on ``mu`` is then
        at hand, so the signal-fraction diagnostic costs no extra matmul.
        """
        b, n, c = mu.shape
        y = ctx.targets.detach()
        metrics: Metrics = {}
        need_grad = mu.requires_grad and torch.is_grad_enabled()
        with torch.no_grad():
            mu0 = mu.detach()
            norm = mu0.norm(dim=-1, keepdim=True)
            denom = norm.clamp_min(1e-12)  # as F.normalize
            u = mu0 / denom
            logp = torch.log_softmax(torch.bmm(u, y.transpose(1, 2)) / self.tau, dim=-1)
            probs = logp.exp()
            r = _weighted_heads(heads, lambda h: h.candidate_reward(ctx), metrics, lambda r: (probs * r).sum(-1).mean())
            adv, zero_std = candidate_advantage(r, probs, scale=self.adv_scale, eps=self.adv_eps, clip=self.adv_clip)
            pa = probs * adv
            mean_adv = pa.sum(-1, keepdim=True)  # E_pi[A] per token
            value = weight * (-mean_adv.squeeze(-1)).mean(-1)  # mean_i sum_j pi_ij * (-A_ij)
            g_mu = None
            if diagnostics or need_grad:
                # d pg / d logits = -(w / N) * pi * (A - E_pi[A])
                g_logits = torch.addcmul(pa, probs, mean_adv, value=-1).mul_(weight.view(b, 1, 1) / -n)
                g_u = torch.bmm(g_logits, y).div_(self.tau)
                # through u = mu / max(|mu|, 1e-12)
                g_mu = torch.where(norm > 1e-12, tangent(g_u, u), g_u).div_(denom)
        pg = _GradientGiven.apply(mu, value, g_mu) if need_grad else value

        with torch.no_grad():
            metrics["tau"] = torch.full((), self.tau, device=mu.device)
            metrics["adv/std"] = (pa * adv).sum(-1).sqrt().mean()
            metrics["adv/clip_frac"] = (probs * (adv.abs() >= self.adv_clip)).sum(-1).mean()
            metrics["frac_zero_std"] = zero_std.float().mean()
            metrics["clip_frac"] = torch.zeros((), device=mu.device)  # rho == 1: the clip is never active
            metrics["kl"] = -logp.diagonal(dim1=1, dim2=2).mean()  # KL(one-hot at j = i || pi)
            if diagnostics:
                metrics["signal_frac"] = signal_fraction(g_mu, mu0, y)
        return pg, metrics

    def term_autograd(self, mu, ctx, heads, weight, *, seed=0, diagnostics=False):
        """Reference implementation of :meth:`term`: the clipped surrogate on the (B, N, N) candidates, through autograd."""
        b, n, c = mu.shape
        y = ctx.targets
        metrics: Metrics = {}
        logp = self.log_probs(mu, y)
        old = logp.detach()
        probs = old.exp()
        with torch.no_grad():
            r = _weighted_heads(heads, lambda h: h.candidate_reward(ctx), metrics, lambda r: (probs * r).sum(-1).mean())
            adv, zero_std = candidate_advantage(r, probs, scale=self.adv_scale, eps=self.adv_eps, clip=self.adv_clip)
        loss, clipped = clipped_surrogate(logp, old, adv, clip_eps=self.clip_eps)
        pg = weight * (probs * loss).sum(-1).mean(-1)

        with torch.no_grad():
            metrics["tau"] = torch.full((), self.tau, device=mu.device)
            metrics["adv/std"] = (probs * adv.pow(2)).sum(-1).sqrt().mean()
            metrics["adv/clip_frac"] = (probs * (adv.abs() >= self.adv_clip).float()).sum(-1).mean()
            metrics["frac_zero_std"] = zero_std.float().mean()
            metrics["clip_frac"] = (probs * clipped.float()).sum(-1).mean()
            metrics["kl"] = -old.diagonal(dim1=1, dim2=2).mean()  # KL(one-hot at j = i || pi)
            if diagnostics:
                centred = adv - (probs * adv).sum(-1, keepdim=True)
                g_logits = -(weight.view(b, 1, 1) / n) * probs * centred  # d pg / d logits
                u = F.normalize(mu.detach(), dim=-1)
                g_u = torch.bmm(g_logits, y) / self.tau
                g_mu = tangent(g_u, u) / mu.detach().norm(dim=-1, keepdim=True).clamp_min(1e-12)
                metrics["signal_frac"] = signal_fraction(g_mu, mu.detach(), y)
        return pg, metrics
