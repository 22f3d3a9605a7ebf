"""The correspondence policy's term in closed form: ``pi(j | i) = softmax_j(cos(mu_i, y_j) / tau)``.

At ``rho == 1`` (one on-policy update) the surrogate's value is ``-E_pi[A]`` and its gradient
``-E_pi[A grad log pi]``, so ``d pg_b / d logits[b, i, j] = -(w_b / N) pi_ij (A_ij - E_pi[A_i])``;
it is mapped to ``mu`` through the cosine logits and ``normalize``, with no autograd graph.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["correspondence_logits", "correspondence_objective", "normalize_backward", "with_gradient"]


class _GradientGiven(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, value, grad):
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output.view(-1, *([1] * (grad.dim() - 1))) * grad, None, None


def with_gradient(x: torch.Tensor, value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass; ``grad_output[b] * grad[b]`` on ``x`` in the backward pass.

    For per-sample terms whose gradient on ``x`` is computed in closed form with the value.

    Shape:
        x, grad: (B, ...); value: (B,). Output: (B,).
    """
    return _GradientGiven.apply(x, value, grad)


def correspondence_logits(mu: torch.Tensor, y_unit: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detached unit tokens ``u = normalize(mu)``, their norms (raw and clamped) and ``u @ y^T`` in one bmm.

    The bmm's diagonal is ``cos(mu_i, y_i)`` (the anchor's cosine), its whole the logits times ``tau``.

    Shape:
        mu, y_unit: (B, N, C). Output: ``u`` (B, N, C), norms (B, N, 1) twice, cosines (B, N, N) indexed [b, i, j].
    """
    mu0 = mu.detach()
    norm = torch.linalg.vector_norm(mu0, dim=-1, keepdim=True)
    clamped = norm.clamp_min(1e-12)
    u = mu0 / clamped  # as F.normalize
    return u, norm, clamped, torch.bmm(u, y_unit.mT)


def normalize_backward(g_u: torch.Tensor, u: torch.Tensor, norm: torch.Tensor, clamped: torch.Tensor) -> torch.Tensor:
    """A gradient on ``u = F.normalize(mu)`` mapped to ``mu``, as autograd maps it (in place on ``g_u`` where it can).

    Shape:
        g_u, u: (B, N, C); norm, clamped: (B, N, 1) (raw and ``clamp_min(1e-12)``). Output: (B, N, C).
    """
    t = torch.addcmul(g_u, (g_u * u).sum(-1, keepdim=True), u, value=-1)  # tangent(g_u, u)
    return torch.where(norm > 1e-12, t, g_u).div_(clamped)


def _combine(ca: float, a: torch.Tensor, cp: float, p: torch.Tensor) -> torch.Tensor:
    # ca * a + cp * p, without launching a multiplication by one or a term whose coefficient is zero
    if ca == 0:
        return p if cp == 1 else cp * p
    a = a if ca == 1 else ca * a
    return a + p if cp == 1 else torch.add(a, p, alpha=cp)


def correspondence_objective(
    probs: torch.Tensor, adv: torch.Tensor, cos: torch.Tensor, y_unit: torch.Tensor, u: torch.Tensor,
    norm: torch.Tensor, clamped: torch.Tensor, tau: float, *, anchor_coeff: float,
    policy_coeff: float, gradient: bool, split: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Anchor and policy term together, value and gradient on ``mu`` in closed form (one backward node).

    Per sample ``anchor_coeff * anchor_b + policy_coeff * policy_b`` with ``anchor_b = 1 - mean_i
    cos(mu_i, y_i)`` (REPA's term) and ``policy_b = mean_i sum_j pi_ij (-A_ij)`` (the surrogate at
    ``rho == 1``). Both gradients are taken on ``u`` (the anchor's is ``-y_i / N``) and mapped
    through ``normalize`` once. Per-sample factors are the caller's (``with_gradient`` scales the
    gradient by the upstream one, per sample).

    Returns:
        ``(value, anchor, policy, g_mu, g_policy)``: the per-sample value, the anchor and the policy
        term per sample, the gradient on ``mu`` (None unless ``gradient``)
        and, with ``split``, the policy term's own gradient (for the signal fraction).

    Shape:
        probs, adv, cos: (B, N, N) (``cos`` read on its diagonal); y_unit, u: (B, N, C); norm, clamped:
        (B, N, 1). Output: (B,) three times, then (B, N, C) or None twice.
    """
    b, n, _ = probs.shape
    pa = probs * adv
    mean_adv = pa.sum(-1, keepdim=True)  # E_pi[A] per token
    anchor = 1 - cos.diagonal(dim1=1, dim2=2).mean(-1)
    policy = -mean_adv.mean((1, 2))
    value = _combine(anchor_coeff, anchor, policy_coeff, policy)
    if not gradient:
        return value, anchor, policy, None, None
    # d policy_b / d logits = -(w_b / N) pi (A - E_pi[A]); logits = u . y / tau
    g_u = torch.bmm(torch.addcmul(pa, probs, mean_adv, value=-1), y_unit)
    cp, ca = -policy_coeff / (n * tau), -anchor_coeff / n
    g_u.mul_(cp)
    if not anchor_coeff:
        g_mu = normalize_backward(g_u, u, norm, clamped)
        return value, anchor, policy, g_mu, g_mu if split else None
    g_pol = normalize_backward(g_u.clone(), u, norm, clamped) if split else None
    g_u = g_u.add_(y_unit, alpha=ca)
    return value, anchor, policy, normalize_backward(g_u, u, norm, clamped), g_pol
