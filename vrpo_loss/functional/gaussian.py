"""The Gaussian policy's surrogate from sufficient statistics of its noise, in O(B N C) memory.

With actions ``x_g = m0 + d_g`` (``m0`` the detached mean, offsets ``d_g = s0 * eps_g``) and
coefficients ``c_g`` (the weight of each action's log-prob), the surrogate's value and gradient on
the mean need only ``S0 = sum_g c_g``, ``S1 = sum_g c_g d_g`` and ``S2 = sum_g c_g d_g^2``, which
are accumulated in place one action (or antithetic pair) at a time.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import torch

__all__ = ["gaussian_semantic_cosine", "gaussian_statistics", "gaussian_surrogate"]


def gaussian_semantic_cosine(
    half: torch.Tensor, m0: torch.Tensor, s0: torch.Tensor, y_unit: torch.Tensor, *, antithetic: bool
) -> torch.Tensor:
    """``cos(x_g, y)`` of a chunk's actions ``x = m0 + s0 * eps`` without materialising them (scalar ``s0``).

    ``x . y = m0 . y + s0 (eps . y)`` and ``|x|^2 = |m0|^2 + 2 s0 (eps . m0) + s0^2 |eps|^2``, so each
    action needs three reductions of its noise; the antithetic partner ``-eps`` reuses them with the
    signs of the odd terms flipped.

    Shape:
        half: (K, B, N, C); m0, y_unit: (B, N, C); s0: scalar. Output: (2K, B, N) when antithetic, else (K, B, N).
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

    return torch.cat([cos(1.0), cos(-1.0)]) if antithetic else cos(1.0)


@torch.no_grad()
def gaussian_statistics(
    chunks: Iterable[Tuple[int, torch.Tensor]], coef: torch.Tensor, s0: torch.Tensor, *, antithetic: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``S0 = sum_g c_g``, ``S1 = sum_g c_g d_g``, ``S2 = sum_g c_g d_g^2`` with ``d_g = s0 * eps_g``.

    Args:
        chunks: ``(g0, half)`` per chunk: its first action index and its independent noise (with
            ``antithetic``, the chunk's actions are ``half`` then ``-half``).
        coef: the coefficient of each action's log-prob.
        s0: the noise scale, scalar or (C,).

    Shape:
        half: (K, B, N, C); coef: (G, B, N). Output: (B, N, 1), (B, N, C), (B, N, C).
    """
    S0 = coef.sum(0).unsqueeze(-1)
    S1 = S2 = sq_buf = None
    for g0, half in chunks:
        if S1 is None:
            S1, S2, sq_buf = torch.zeros_like(half[0]), torch.zeros_like(half[0]), torch.empty_like(half[0])
        k = half.shape[0]
        if antithetic:  # c_g d_g + c_g' (-d_g) and c_g d_g^2 + c_g' d_g^2
            cg = coef[g0 : g0 + 2 * k]
            c1, c2 = cg[:k] - cg[k:], cg[:k] + cg[k:]
        else:
            c1 = c2 = coef[g0 : g0 + k]
        for j in range(k):
            S1.addcmul_(c1[j].unsqueeze(-1), half[j])
            S2.addcmul_(c2[j].unsqueeze(-1), torch.mul(half[j], half[j], out=sq_buf))
    S1.mul_(s0)
    S2.mul_(s0 * s0)
    return S0, S1, S2


def gaussian_surrogate(
    m: torch.Tensor, s: torch.Tensor, coef: torch.Tensor, S0: torch.Tensor, S1: torch.Tensor, S2: torch.Tensor
) -> torch.Tensor:
    """Per-sample policy loss at ``rho == 1``: value ``-sum_g c_g``, gradient ``-sum_g c_g grad log pi(x_g)``.

    ``log pi`` is the diagonal Gaussian's log-density averaged over channels; the gradient reaches
    the mean ``m`` (and ``s`` when it is learned) through ``sum_g c_g (x_g - m)^2 = S2 + 2 delta S1 +
    delta^2 S0`` with ``delta = m0 - m``, zero in value.

    Shape:
        m: (B, N, C) with gradient; s: scalar or (C,); coef: (G, B, N); S0: (B, N, 1); S1, S2: (B, N, C).
        Output: (B,).
    """
    delta = m.detach() - m
    sq = S2 + 2 * delta * S1 + delta.pow(2) * S0
    logp_sum = (-0.5 * sq / s.pow(2) - torch.log(s) * S0).mean(-1)  # sum_g c_g log pi(x_g), up to a constant
    f = logp_sum.sum(-1)
    return -coef.sum(dim=(0, 2)) - (f - f.detach())
