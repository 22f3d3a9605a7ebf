"""A small class-conditional SiT: patchify, DiT blocks with adaLN-Zero on (t, class), unpatchify.

Flow matching on the linear interpolant with REPA's convention, t = 0 clean and t = 1 noise:
``x_t = (1 - t) x + t eps``; the model predicts the velocity ``v = eps - x``; samples are drawn by
integrating ``dx/dt = v`` from t = 1 to t = 0 (Euler or Heun). ``forward`` also returns the hidden
tokens after block ``align_depth`` (the tokens REPA aligns, before any projector).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid*grid, dim)."""
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out = [torch.cat([torch.sin(p.flatten()[:, None] * omega), torch.cos(p.flatten()[:, None] * omega)], 1)
           for p in (ys, xs)]
    return torch.cat(out, 1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = (t.float() * 1000)[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def attn(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))

    def forward(self, x, c):
        s1, g1, a1, s2, g2, a2 = self.ada(c).chunk(6, dim=-1)
        x = x + a1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, g1))
        return x + a2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s2, g2))


class ToySiT(nn.Module):
    def __init__(self, *, image_size: int = 16, channels: int = 1, patch: int = 2, dim: int = 128,
                 depth: int = 6, heads: int = 4, num_classes: int = 10, align_depth: int = 2):
        super().__init__()
        self.patch, self.channels, self.align_depth = patch, channels, align_depth
        self.grid = image_size // patch
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.register_buffer("pos", sincos_2d(dim, self.grid).unsqueeze(0))
        self.t_embed = TimestepEmbedder(dim)
        self.y_embed = nn.Embedding(num_classes, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final = nn.Linear(dim, patch * patch * channels)
        self._init()

    def _init(self):  # DiT's initialisation: xavier linears, zero adaLN and output
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for m in self.t_embed.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for b in self.blocks:
            nn.init.zeros_(b.ada[-1].weight), nn.init.zeros_(b.ada[-1].bias)
        for m in (self.final_ada[-1], self.final):
            nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)

    def forward(self, x, t, y):
        """x (B, C, H, W), t (B,) in [0, 1], y (B,) -> (velocity (B, C, H, W), hidden (B, N, dim))."""
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        c = self.t_embed(t) + self.y_embed(y)
        hidden = None
        for i, blk in enumerate(self.blocks):
            h = blk(h, c)
            if i + 1 == self.align_depth:
                hidden = h
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(h), shift, scale))  # (B, N, p*p*C)
        B, p, g = x.shape[0], self.patch, self.grid
        out = out.view(B, g, g, p, p, self.channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(B, self.channels, g * p, g * p), hidden


@torch.no_grad()
def sample(model: ToySiT, y: torch.Tensor, noise: torch.Tensor, steps: int = 20, method: str = "euler",
           batch: int = 500, clamp: bool = True) -> torch.Tensor:
    """Integrate the probability-flow ODE from t = 1 (noise) to t = 0 (data); returns x, clamped to [-1, 1]
    (pixels) unless ``clamp`` is False (latents, decoded afterwards)."""
    was_training = model.training
    model.eval()
    outs = []
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(0, len(y), batch):
        x, yb = noise[i:i + batch].clone(), y[i:i + batch]
        for k in range(steps):
            t0, t1 = ts[k].item(), ts[k + 1].item()
            v = model(x, torch.full((len(x),), t0, device=x.device), yb)[0]
            if method == "heun" and t1 > 0:
                x_e = x + (t1 - t0) * v
                v2 = model(x_e, torch.full((len(x),), t1, device=x.device), yb)[0]
                x = x + (t1 - t0) * 0.5 * (v + v2)
            else:
                x = x + (t1 - t0) * v
        outs.append(x)
    model.train(was_training)
    x = torch.cat(outs)
    return x.clamp(-1, 1) if clamp else x
