"""Quick start: a tiny SiT-style model trained for a few steps with VRPOAlignment, on the CPU.

Everything is synthetic and self-contained (no downloads): images are random smooth blobs, the
"encoder" is a frozen random conv net giving 8x8 = 64 tokens. It shows the wiring a host needs:
tap the hidden tokens after block `depth`, compute encoder tokens under no_grad, pass t with
0 = clean data, and add the alignment loss to the denoising loss.

    python examples/quickstart.py --steps 20 --mode vrpo
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from vrpo_loss import VRPOAlignment


class TinySiT(nn.Module):
    """Patchify, transformer blocks conditioned on t, unpatchify; returns (velocity, tokens after block `align_depth`)."""

    def __init__(self, *, size=16, patch=2, channels=3, hidden=64, depth=4, align_depth=2):
        super().__init__()
        self.patch, self.size, self.align_depth = patch, size, align_depth
        self.embed = nn.Conv2d(channels, hidden, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (size // patch) ** 2, hidden))
        self.t_embed = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(hidden, 4, 4 * hidden, batch_first=True, norm_first=True) for _ in range(depth))
        self.out = nn.Linear(hidden, channels * patch * patch)

    def forward(self, x, t):
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos + self.t_embed(t.view(-1, 1)).unsqueeze(1)
        tapped = None
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i + 1 == self.align_depth:
                tapped = h
        v = self.out(h)  # (B, N, C p p) -> image
        b, n, _ = v.shape
        g = self.size // self.patch
        v = v.view(b, g, g, -1, self.patch, self.patch).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, self.size, self.size)
        return v, tapped


def blobs(n, size=16, generator=None):
    """Random smooth images in [-1, 1]."""
    x = torch.randn(n, 3, 4, 4, generator=generator)
    return torch.tanh(F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mode", choices=["vrpo", "repa"], default="vrpo")
    p.add_argument("--policy", choices=["correspondence", "gaussian"], default=None)
    p.add_argument("--proj-coeff", type=float, default=0.5, help="weight of the alignment loss (REPA's proj_coeff)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    model = TinySiT()
    encoder = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.GELU(), nn.Conv2d(32, 48, 2, 2)).requires_grad_(False).eval()
    kwargs = {"policy": args.policy} if args.policy else {}
    # created before the optimizer (and before any EMA copy or DDP wrapper), so its projector trains with the model
    align = VRPOAlignment(hidden_dim=64, target_dims=(48,), projector_dim=128, mode=args.mode, **kwargs)
    opt = torch.optim.AdamW(list(model.parameters()) + list(align.parameters()), lr=3e-4)
    gen = torch.Generator().manual_seed(args.seed)

    start = time.perf_counter()
    for step in range(args.steps):
        x0 = blobs(args.batch, generator=gen)
        with torch.no_grad():
            zs = encoder(x0).flatten(2).transpose(1, 2)  # (B, 64, 48) encoder tokens
        t = torch.rand(args.batch)  # 0 = clean, 1 = noise (REPA's linear path)
        noise = torch.randn_like(x0)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        v, h = model(xt, t)
        denoise = (v - (noise - x0)).pow(2).mean(dim=(1, 2, 3))  # (B,)
        x0_pred = xt - t.view(-1, 1, 1, 1) * v
        out = align(h, zs, t=t, denoise_loss=denoise, x0_pred=x0_pred, x0=x0)
        loss = denoise.mean() + args.proj_coeff * out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            m = {k: round(v.item(), 4) for k, v in out.metrics.items()}
            print(f"step {step:4d}  denoise {denoise.mean().item():.4f}  align {out.loss.item():.4f}  {m}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s ({args.mode})")


if __name__ == "__main__":
    main()
