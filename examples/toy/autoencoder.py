"""The glyph setting's latent space: a tiny ``diffusers.AutoencoderKL`` in SD-VAE's role.

SD-VAE's class at a tiny config: 32x32x1 images -> 8x8x4 latents (two downsamplings, widths
16/32/64, one ResNet layer per block, the mid-block's attention kept; 0.68 M parameters), trained once
by the benchmark (fixed seed, cached; the weights for the committed glyph set are committed in
``assets/``, since they depend on the thread count through the reduction order; 853 s on one
busy core) on the training faces with SD's objective minus the GAN:
reconstruction MSE plus a small KL (weight 1e-6). The generator trains on the posterior means,
scaled by one factor to unit variance (SD's ``scaling_factor``); samples are decoded for evaluation.
``reconstruction_mse`` reports its error: 0.0031 on training faces, 0.0027 on held-out faces (the
[-1, 1] scale; latent scale 1.18).
"""
from __future__ import annotations

import hashlib
import logging
import os

import torch

log = logging.getLogger(__name__)

CONFIG = dict(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32, 64),
              down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
              layers_per_block=1, norm_num_groups=8, sample_size=32)
KL_WEIGHT = 1e-6
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def data_key(x: torch.Tensor) -> str:
    """A digest of a tensor's bytes (a float sum would depend on the thread count through its reduction order)."""
    return hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def build() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**CONFIG)


class LatentCodec:
    """A trained autoencoder and its latent scale: ``encode`` (B,1,32,32) -> (B,4,8,8), ``decode`` back."""

    def __init__(self, vae, scale: float):
        self.vae, self.scale = vae.eval().requires_grad_(False), scale

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
        return torch.cat([self.vae.encode(x[i:i + batch]).latent_dist.mean for i in range(0, len(x), batch)]) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch: int = 512) -> torch.Tensor:
        return torch.cat([self.vae.decode(z[i:i + batch] / self.scale).sample
                          for i in range(0, len(z), batch)]).clamp(-1, 1)

    def to(self, device):
        self.vae.to(device)
        return self


def train_autoencoder(x: torch.Tensor, cache_dir: str, steps: int = 1500, batch: int = 32, lr: float = 2e-3,
                      seed: int = 0, progress: bool = True) -> LatentCodec:
    """Train (or load from the cache) the autoencoder on ``x`` (N, 1, 32, 32) in [-1, 1]."""
    key = hashlib.sha1(repr([sorted(CONFIG.items()), KL_WEIGHT, steps, batch, lr, seed, data_key(x)]).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"vae_{key}.pt")
    if not os.path.exists(path) and os.path.exists(os.path.join(ASSETS, f"vae_{key}.pt")):
        path = os.path.join(ASSETS, f"vae_{key}.pt")  # the committed weights of the committed glyph set
    if os.path.exists(path):
        ck = torch.load(path, weights_only=True)
        vae = build()
        vae.load_state_dict(ck["state"])
        return LatentCodec(vae, float(ck["scale"]))
    torch.manual_seed(seed)
    vae = build()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="autoencoder (trained once)", unit="step", leave=False)
    for _ in it:
        xb = x[torch.randint(len(x), (batch,), generator=g)]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        loss = (vae.decode(z).sample - xb).pow(2).mean() + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i:i + 512]).latent_dist.mean for i in range(0, len(x), 512)])
    scale = float(1.0 / z.std())
    os.makedirs(cache_dir, exist_ok=True)
    torch.save({"state": vae.state_dict(), "scale": scale}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return LatentCodec(vae, scale)


@torch.no_grad()
def reconstruction_mse(codec: LatentCodec, x: torch.Tensor) -> float:
    """Mean squared error of decode(encode(x)) on the [-1, 1] scale."""
    return float((codec.decode(codec.encode(x)) - x).pow(2).mean())


def encode_cached(codec: LatentCodec, x: torch.Tensor, cache_dir: str) -> torch.Tensor:
    """``codec.encode(x)`` on the CPU, computed once per (autoencoder, data set) and cached."""
    w = next(iter(codec.vae.state_dict().values()))
    key = hashlib.sha1(repr([codec.scale, data_key(w), data_key(x)]).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"latents_{key}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    dev = w.device
    z = codec.to("cpu").encode(x)
    codec.to(dev)
    torch.save(z, path + ".tmp")
    os.replace(path + ".tmp", path)
    return z
