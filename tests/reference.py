"""Reference implementations for the tests: direct formulas through autograd, sharing no code with the package.

Each one materialises what the package avoids (every Gaussian action, every candidate's surrogate)
and differentiates it with autograd, so the package's closed forms are checked against the
published formulas: the group-relative advantage (GRPO), the diagonal Gaussian log-density, the
policy-gradient surrogate ``-rho * A`` at ``rho = exp(logp - logp.detach()) = 1``, REPA's cosine.
"""

import math

import torch


def unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cosine(a, b):
    return (unit(a) * unit(b)).sum(-1)


def scaled(centred, std, batch_std, scale, eps, clip):
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        adv = centred / (batch_std + eps)
    else:
        adv = centred
    adv = torch.where(std <= 1e-8, torch.zeros_like(adv), adv)
    return adv.clamp(-clip, clip), (std <= 1e-8).squeeze(-1)


def group_advantage(r, scale, eps, clip):
    """GRPO over dim 0: ``(r - mean) / (std + eps)``, population std, zero for constant groups."""
    mean = r.mean(0, keepdim=True)
    std = ((r - mean) ** 2).mean(0, keepdim=True).sqrt()
    adv, _ = scaled(r - mean, std, ((r - r.mean()) ** 2).mean().sqrt(), scale, eps, clip)
    return adv


def candidate_advantage(r, probs, scale, eps, clip):
    """The same over the last dim, with moments under ``probs``; also the zero-variance mask."""
    mean = (probs * r).sum(-1, keepdim=True)
    std = (probs * (r - mean) ** 2).sum(-1, keepdim=True).clamp_min(0).sqrt()
    batch_std = (probs * (r - mean.mean()) ** 2).sum(-1).mean().clamp_min(0).sqrt()
    return scaled(r - mean, std, batch_std, scale, eps, clip)


def pg_surrogate(logp, adv):
    """``-rho * A`` with ``rho = exp(logp - logp.detach())``: value ``-A``, gradient ``-A grad logp``."""
    return -torch.exp(logp - logp.detach()) * adv


def gaussian_log_prob(x, mean, std):
    """Diagonal Gaussian log-density, averaged over the channels."""
    z = (x - mean) / std
    return (-0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).mean(-1)


def all_draws(noise, seed, shape, device):
    """All ``G`` noise draws of a call at once, as the policy's chunks generate them (antithetic pairs
    as (eps, -eps) within a chunk). Shape: (G, B, N, C)."""
    return torch.cat([torch.cat([h, -h]) if noise.antithetic else h for _, h in noise.chunks(seed, shape, device)])


def naive_gaussian(policy, mu, y, weight, seed, log_sigma=None, rewards=None):
    """The Gaussian policy's term on materialised actions; also the mean semantic reward over the group."""
    cfg = policy.config
    b, n, c = mu.shape
    eps = all_draws(policy.noise, seed, (b, n, c), mu.device).to(mu.dtype)
    m = unit(mu) if cfg.space == "sphere" else mu
    s = log_sigma.exp() if log_sigma is not None else torch.tensor(cfg.sigma, dtype=mu.dtype)
    if cfg.space == "sphere":
        s = s / math.sqrt(c)
    x = (m + s * eps).detach()
    z = unit(x) if cfg.space == "sphere" else x
    r = cosine(z, y) if rewards is None else rewards(z)
    adv = group_advantage(r, cfg.adv_scale, cfg.adv_eps, cfg.adv_clip)
    loss = pg_surrogate(gaussian_log_prob(x, m, s), adv)
    return (weight.view(1, b, 1) * loss).mean(dim=(0, 2)), r.mean()


def correspondence_autograd(tau, scale, eps, clip, mu, y, heads, ctx, weight):
    """The correspondence policy's term: the surrogate on the (B, N, N) candidates, weighted by ``pi_old``."""
    b, n, _ = mu.shape
    logp = torch.log_softmax(unit(mu) @ y.detach().transpose(1, 2) / tau, dim=-1)
    probs = logp.detach().exp()
    metrics = {}
    with torch.no_grad():
        r = 0.0
        for h in heads:
            rh = h.candidate_reward(ctx).float()  # the package takes rewards in fp32
            metrics[f"rewards/{h.name}/mean"] = (probs * rh).sum(-1).mean()
            r = r + h.weight * rh
        adv, zero = candidate_advantage(r, probs, scale, eps, clip)
    pg = weight * (probs * pg_surrogate(logp, adv)).sum(-1).mean(-1)
    metrics["tau"] = torch.tensor(tau)
    metrics["adv/std"] = (probs * adv**2).sum(-1).sqrt().mean()
    metrics["adv/clip_frac"] = (probs * (adv.abs() >= clip).to(mu.dtype)).sum(-1).mean()
    metrics["frac_zero_std"] = zero.to(mu.dtype).mean()
    metrics["kl"] = -logp.detach().diagonal(dim1=1, dim2=2).mean()
    return pg, metrics


def repa_gradient(mu, y):
    """``d(-sum cos(mu, y)) / d mu`` by autograd."""
    mu = mu.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(-cosine(mu, y).sum(), mu)
    return g


def grad_cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
