"""The correspondence policy's term in closed form: ``pi(j | i) = softmax_j(cos(mu_i, y_j) / tau)``.

At ``rho == 1`` (one on-policy update) the surrogate's value is ``-E_pi[A]`` and its gradient
``-E_pi[A grad log pi]``, so ``d pg_b / d logits[b, i, j] = -(w_b / N) pi_ij (A_ij - E_pi[A_i])``;
it is mapped to ``mu`` through the cosine logits and ``normalize``, with no autograd graph.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .core import tangent

__all__ = ["correspondence_log_probs", "correspondence_surrogate", "with_gradient"]


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


def correspondence_log_probs(mu: torch.Tensor, y_unit: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log pi(j | i)`` of the detached tokens, with the unit tokens and norms the gradient needs.

    Shape:
        mu, y_unit: (B, N, C). Output: log-probs (B, N, N) indexed [b, i, j], ``u`` (B, N, C), norms (B, N, 1).
    """
    mu0 = mu.detach()
    norm = mu0.norm(dim=-1, keepdim=True)
    u = mu0 / norm.clamp_min(1e-12)  # as F.normalize
    return torch.log_softmax(torch.bmm(u, y_unit.transpose(1, 2)) / tau, dim=-1), u, norm


def correspondence_surrogate(
    probs: torch.Tensor, adv: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, norm: torch.Tensor,
    y_unit: torch.Tensor, tau: float, *, gradient: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-sample value ``w_b mean_i sum_j pi_ij (-A_ij)`` and, if asked, its gradient on ``mu``.

    Shape:
        probs, adv: (B, N, N); weight: (B,); u, y_unit: (B, N, C); norm: (B, N, 1).
        Output: (B,) and (B, N, C) or None.
    """
    b, n, _ = probs.shape
    pa = probs * adv
    mean_adv = pa.sum(-1, keepdim=True)  # E_pi[A] per token
    value = weight * (-mean_adv.squeeze(-1)).mean(-1)
    if not gradient:
        return value, None
    g_logits = torch.addcmul(pa, probs, mean_adv, value=-1).mul_(weight.view(b, 1, 1) / -n)
    g_u = torch.bmm(g_logits, y_unit).div_(tau)
    g_mu = torch.where(norm > 1e-12, tangent(g_u, u), g_u).div_(norm.clamp_min(1e-12))  # through normalize
    return value, g_mu
