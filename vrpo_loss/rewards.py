"""Reward heads: what VRPO rewards, at the level of tokens or of whole samples.

A head declares its ``level`` and carries a ``weight``:

- ``"token"`` heads score each action of a token, so they vary within a group and shape the
  direction in which ``mu`` moves. They implement :meth:`RewardHead.action_reward` (Gaussian
  policy: a reward per sampled action) and :meth:`RewardHead.candidate_reward` (correspondence
  policy: a reward per candidate target).
- ``"sample"`` heads score a whole sample, the same for every action of its tokens, so they set how
  strongly each sample is aligned (through the per-sample weight). They implement
  :meth:`RewardHead.sample_reward`.

A head may also have a supervised loss of its own (:meth:`RewardHead.aux_loss`, per sample), added
to the objective. To add your own reward, subclass :class:`RewardHead` and pass an instance in
``VRPOAlignment(heads=[...])``; a CPU unit test of a head needs only tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import token_cosine

__all__ = [
    "RewardContext",
    "RewardHead",
    "SemanticReward",
    "DecodabilityReward",
    "FidelityReward",
    "PerceptualReward",
    "patchify",
]


@dataclass
class RewardContext:
    """What a head may read. Every tensor is fp32 and detached, except where noted.

    Attributes:
        targets: (B, N, C) unit-normalised tokens of the current encoder (None for sample heads).
        encoder: index of the current encoder.
        t: (B,) time in [0, 1], 0 = clean data, or None.
        denoise_loss: (B,) per-sample denoising loss, or None.
        x0_pred: predicted clean input (B, ...), or None.
        x0: clean input (B, ...), or None.
        step: training steps taken so far by the module, or None when no head of the module
            declares ``uses_step`` (the step is then not read at all, so ``torch.compile`` does not
            recompile the module as it advances).
    """

    targets: Optional[torch.Tensor] = None
    encoder: int = 0
    t: Optional[torch.Tensor] = None
    denoise_loss: Optional[torch.Tensor] = None
    x0_pred: Optional[torch.Tensor] = None
    x0: Optional[torch.Tensor] = None
    step: Optional[int] = 0


class RewardHead(nn.Module):
    """Base class of reward heads.

    Args:
        weight: the head's weight in the weighted sum of rewards of its level.
        name: key under which its metrics are reported (``rewards/<name>/mean``).

    Class attributes:
        level: ``"token"`` or ``"sample"``.
        uses_step: whether the head reads ``ctx.step``. Keep the default (True) if it does; a head
            that does not may set it False, and when no head of a module reads the step, the
            module's compiled graph does not depend on it (``torch.compile`` would otherwise
            recompile at every step, since the step is a Python int).
    """

    level: str = "token"
    name: str = "head"
    uses_step: bool = True

    def __init__(self, *, weight: float = 1.0, name: Optional[str] = None):
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight: expected a value >= 0, got {weight}")
        self.weight = float(weight)
        if name is not None:
            self.name = name
        if self.level not in ("token", "sample"):
            raise ValueError(f"level: expected 'token' or 'sample', got {self.level!r}")

    def action_reward(self, z: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        """Token level, Gaussian policy: reward of each sampled action.

        Shape:
            z: (G, B, N, C) actions (unit vectors in the 'sphere' space). Output: (G, B, N).
        """
        raise NotImplementedError(f"{type(self).__name__} does not score sampled actions")

    def candidate_reward(self, ctx: RewardContext) -> torch.Tensor:
        """Token level, correspondence policy: reward of choosing target ``j`` for token ``i``.

        Shape:
            Output: (B, N, N), indexed [b, i, j].
        """
        raise NotImplementedError(f"{type(self).__name__} does not score candidate targets")

    def sample_reward(self, ctx: RewardContext) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """Sample level: ``(reward, mask)`` or None when the head has nothing to say this step.

        Shape:
            reward: (B,); mask: (B,) bool of the samples that were scored, or None for all.
        """
        raise NotImplementedError(f"{type(self).__name__} does not score samples")

    def aux_loss(self, mu: torch.Tensor, ctx: RewardContext) -> Optional[torch.Tensor]:
        """A supervised loss of the head's own, per sample, or None.

        Shape:
            mu: (B, N, C) projected tokens (with gradient; detach what must not train).
            Output: (B,).
        """
        return None


class SemanticReward(RewardHead):
    """Semantic coherence with the encoder: ``cos(z, y)`` per action, ``cos(y_i, y_j)`` per candidate."""

    level = "token"
    name = "semantic"
    uses_step = False

    def action_reward(self, z: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        return token_cosine(z, ctx.targets)

    def candidate_reward(self, ctx: RewardContext) -> torch.Tensor:
        y = ctx.targets
        return torch.bmm(y, y.transpose(1, 2))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut an image or latent into non-overlapping patches, in raster order (as SiT/DiT tokens).

    Shape:
        x: (B, C, H, W) -> (B, (H/p) * (W/p), C * p * p).
    """
    if x.dim() != 4:
        raise ValueError(f"x0: expected (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"x0: height and width {h}x{w} must be multiples of decodability_patch={patch}")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


class DecodabilityReward(RewardHead):
    """Fidelity that depends on the action: can the token's clean patch be decoded from ``z``?

    A small MLP per encoder predicts each token's clean patch of ``x0`` from the unit vector of
    ``z``; the reward is minus its mean squared error. The MLP trains on its own supervised loss,
    fitted on ``normalize(mu).detach()`` so that it never pushes the diffusion model.

    Args:
        target_dims: token width of each encoder.
        patch_dim: channels * patch * patch of x0's patches.
        patch: patch size that maps x0's grid to the token grid.
        hidden: hidden width.
    """

    level = "token"
    name = "decodability"
    uses_step = False

    def __init__(self, *, target_dims: Sequence[int], patch_dim: int, patch: int, hidden: int = 256, weight: float = 1.0):
        super().__init__(weight=weight)
        self.patch = patch
        self.patch_dim = patch_dim
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, patch_dim)) for c in target_dims
        )

    def _patches(self, ctx: RewardContext, n: int) -> torch.Tensor:
        if ctx.x0 is None:
            raise ValueError("x0: the decodability reward needs the clean input x0 (B, C, H, W); pass x0=... or set decodability_weight=0")
        p = patchify(ctx.x0.float(), self.patch)
        if p.shape[1] != n or p.shape[2] != self.patch_dim:
            raise ValueError(
                f"x0: its patches have shape {tuple(p.shape[1:])} but the heads expect ({n}, {self.patch_dim}); "
                "set decodability_patch and decodability_channels so that x0's grid / patch equals the token grid"
            )
        return p

    def _predict(self, z: torch.Tensor, encoder: int) -> torch.Tensor:
        return self.mlps[encoder](F.normalize(z, dim=-1))

    def action_reward(self, z: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        target = self._patches(ctx, z.shape[-2])
        return -(self._predict(z, ctx.encoder) - target).pow(2).mean(-1)  # differentiable in z (control variate)

    def candidate_reward(self, ctx: RewardContext) -> torch.Tensor:
        target = self._patches(ctx, ctx.targets.shape[1])
        with torch.no_grad():
            pred = self._predict(ctx.targets, ctx.encoder)  # (B, N, P): prediction from candidate j
            cross = torch.bmm(target, pred.transpose(1, 2))  # [b, i, j] = x_i . pred_j
            sq = target.pow(2).sum(-1, keepdim=True) + pred.pow(2).sum(-1).unsqueeze(1) - 2 * cross
            return -sq / self.patch_dim

    def aux_loss(self, mu: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        target = self._patches(ctx, mu.shape[1])
        return (self._predict(mu.detach(), ctx.encoder) - target).pow(2).mean(dim=(1, 2))


class FidelityReward(RewardHead):
    """Generation fidelity: minus the per-sample denoising loss (passed in by the host, detached)."""

    level = "sample"
    name = "fidelity"
    uses_step = False

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
        backbone: LPIPS backbone when ``net`` is None.
        every: compute on steps ``0, every, 2 * every, ...``.
        subset: at most this many samples of the batch (the first ones).

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
        backbone: str = "vgg",
        every: int = 20,
        subset: int = 8,
        weight: float = 1.0,
    ):
        super().__init__(weight=weight)
        self.decode = decode
        self.backbone = backbone
        self.every = every
        self.subset = subset
        self._net = [net] if net is not None else []

    @property
    def net(self) -> nn.Module:
        if not self._net:
            import lpips  # heavy import, only when the head is used

            self._net.append(lpips.LPIPS(net=self.backbone, verbose=False))
        net = self._net[0]
        net.eval().requires_grad_(False)
        return net

    def sample_reward(self, ctx: RewardContext):
        if ctx.step % self.every != 0:
            return None
        if ctx.x0_pred is None or ctx.x0 is None:
            return None
        b = ctx.x0.shape[0]
        k = min(self.subset, b)
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
