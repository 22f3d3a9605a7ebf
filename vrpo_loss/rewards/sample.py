"""Sample-level reward heads: generation fidelity (the denoising loss) and perceptual quality (LPIPS)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from ..config import VRPOConfig
from .base import RewardContext, RewardHead

__all__ = ["FidelityReward", "PerceptualReward"]


class FidelityReward(RewardHead):
    """Generation fidelity: minus the per-sample denoising loss (passed in by the host, detached)."""

    level = "sample"
    name = "fidelity"
    uses_step = False

    @classmethod
    def from_config(cls, cfg: VRPOConfig) -> "FidelityReward":
        return cls(weight=cfg.fidelity_weight)

    def sample_reward(self, ctx: RewardContext):
        if ctx.denoise_loss is None:
            return None
        return -ctx.denoise_loss, None


class PerceptualReward(RewardHead):
    """Perceptual quality: ``-LPIPS(decode(x0_pred), decode(x0))`` on a bounded subset, every k steps.

    Args:
        decode: maps the model's clean prediction to images in [-1, 1] of shape (B, 3, H, W) (the
            VAE decoder for latent models; None is the identity, for pixel models).
        net: an LPIPS module to use; if None, ``lpips.LPIPS(net=backbone)`` is built on first use
            (its backbone weights must then be available, see the README).
        backbone, every, subset: as ``VRPOConfig``'s ``perceptual_net``, ``perceptual_every`` (steps
            ``0, every, 2 * every, ...``; every call when ``ctx.step`` is None) and
            ``perceptual_subset`` (at most this many samples, the first ones), whose defaults they take.

    The LPIPS network is not registered as a submodule: it is frozen, stays out of the
    alignment module's ``state_dict`` and parameters, and is moved to the input's device on use.
    """

    level = "sample"
    name = "perceptual"

    def __init__(
        self,
        *,
        decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        net: Optional[nn.Module] = None,
        backbone: str = VRPOConfig.default("perceptual_net"),
        every: int = VRPOConfig.default("perceptual_every"),
        subset: int = VRPOConfig.default("perceptual_subset"),
        weight: float = 1.0,
    ):
        super().__init__(weight=weight)
        self.decode = decode
        self.backbone = backbone
        self.every = every
        self.subset = subset
        self._net = [net] if net is not None else []

    @classmethod
    def from_config(cls, cfg: VRPOConfig, *, decode=None, net: Optional[nn.Module] = None) -> "PerceptualReward":
        return cls(decode=decode, net=net, backbone=cfg.perceptual_net, every=cfg.perceptual_every,
                   subset=cfg.perceptual_subset, weight=cfg.perceptual_weight)

    @property
    def net(self) -> nn.Module:
        if not self._net:
            import lpips  # heavy import, only when the head is used

            self._net.append(lpips.LPIPS(net=self.backbone, verbose=False))
        net = self._net[0]
        net.eval().requires_grad_(False)
        return net

    def sample_reward(self, ctx: RewardContext):
        if ctx.step is not None and ctx.step % self.every != 0:
            return None
        if ctx.x0_pred is None or ctx.x0 is None:
            return None
        b = ctx.x0.shape[0]
        k = min(self.subset, b)
        if k == 0:  # an empty batch: nothing to score
            return None
        with torch.no_grad():
            pred, real = ctx.x0_pred[:k].detach(), ctx.x0[:k].detach()
            if self.decode is not None:
                pred, real = self.decode(pred), self.decode(real)
            if pred.dim() != 4 or pred.shape[1] != 3:
                raise ValueError(
                    f"x0_pred: the perceptual reward needs decoded images (B, 3, H, W) in [-1, 1], got shape {tuple(pred.shape)}; "
                    "pass decode= (the VAE decoder for latent models)"
                )
            net = self.net.to(pred.device)
            dist = net(pred.float(), real.float()).reshape(k)
        reward = torch.zeros(b, device=dist.device, dtype=torch.float32)
        reward[:k] = -dist
        mask = torch.zeros(b, device=dist.device, dtype=torch.bool)
        mask[:k] = True
        return reward, mask
