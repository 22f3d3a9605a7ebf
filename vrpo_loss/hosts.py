"""Helpers for host training scripts (REPA, SiT, DiT): what the patches in ``examples/`` call.

- :func:`x0_from_velocity`, :func:`x0_from_prediction`: the clean-sample prediction ``x0_pred``
  from what a host's model already outputs (velocity, noise or score) on its interpolation path, for
  the perceptual and decodability rewards.
- :class:`LatentDecoder`: the ``decode`` of the perceptual reward: the host's VAE with its latent
  scaling, images in [-1, 1].
- :func:`add_alignment_args`, :func:`config_from_args` (in :mod:`vrpo_loss.cli`): command-line
  flags for :class:`~vrpo_loss.VRPOConfig`, whose defaults stay the package's.
- :func:`align_logs`: ``out.metrics`` as floats under ``align/``, averaged over ranks.

**Time convention** (the package's, REPA's): ``t`` in [0, 1], 0 = clean data, 1 = noise, and
``x_t = alpha(t) * x0 + sigma(t) * eps``. The paths:

==========  =====================================  ======================================
``path``    ``alpha(t)``, ``sigma(t)``             host names
==========  =====================================  ======================================
linear      ``1 - t``, ``t``                       REPA ``linear``, SiT ``Linear``
cosine      ``cos(pi t / 2)``, ``sin(pi t / 2)``   REPA ``cosine``, SiT ``GVP`` (alias ``gvp``)
vp          ``exp(-t^2 (b1 - b0) / 4 - t b0 / 2)``,  SiT ``VP`` (``b0, b1 = 0.1, 20``)
            ``sqrt(1 - alpha^2)``
==========  =====================================  ======================================

The velocity is ``dx_t / dt`` in this time (REPA's target ``d_alpha * x0 + d_sigma * eps``). SiT's
time runs the other way (its ``t = 1`` is clean, its velocity points from noise to data): pass its
``t`` and output with ``time_reversed=True``.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple, Union

import torch
import torch.distributed as dist

from .cli import add_alignment_args, config_from_args

__all__ = ["PATHS", "path_coefficients", "x0_from_velocity", "x0_from_prediction", "LatentDecoder",
           "align_logs", "add_alignment_args", "config_from_args"]

PATHS = ("linear", "cosine", "vp")
_ALIASES = {"gvp": "cosine"}
_PREDICTIONS = ("velocity", "noise", "score")
VP_BETA = (0.1, 20.0)  # SiT's VPCPlan(sigma_min, sigma_max)


def _path(path: str) -> str:
    name = str(path).lower()
    name = _ALIASES.get(name, name)
    if name not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(PATHS)} (or 'gvp' = 'cosine'; case-insensitive), got {path!r}")
    return name


def _time(t, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t: expected a tensor with one time per sample, got {type(t).__name__}")
    if t.numel() != x.shape[0]:
        raise ValueError(f"t: expected {x.shape[0]} values (one per sample of x_t {tuple(x.shape)}), got shape {tuple(t.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    return t.to(dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))


def path_coefficients(t: torch.Tensor, path: str = "linear") -> Tuple[torch.Tensor, ...]:
    """``alpha(t), sigma(t), d alpha / dt, d sigma / dt`` of a path, in the package's time.

    Shape:
        t: any shape; each output has t's shape.
    """
    name = _path(path)
    if name == "linear":
        one = torch.ones_like(t)
        return 1 - t, t, -one, one
    if name == "cosine":
        a = t * (math.pi / 2)
        return torch.cos(a), torch.sin(a), -(math.pi / 2) * torch.sin(a), (math.pi / 2) * torch.cos(a)
    b0, b1 = VP_BETA
    dlog = -(0.5 * t * (b1 - b0) + 0.5 * b0)  # d log alpha / dt
    alpha = torch.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)
    sigma = torch.sqrt(1 - alpha**2)
    d_alpha = alpha * dlog
    return alpha, sigma, d_alpha, -alpha * d_alpha / sigma


def _check_pair(x_t: torch.Tensor, out: torch.Tensor, name: str) -> None:
    for n, v in (("x_t", x_t), (name, out)):
        if not isinstance(v, torch.Tensor) or not torch.is_floating_point(v):
            raise TypeError(f"{n}: expected a floating-point tensor, got {type(v).__name__ if not isinstance(v, torch.Tensor) else v.dtype}")
    if x_t.shape != out.shape:
        raise ValueError(f"{name}: expected the shape of x_t {tuple(x_t.shape)}, got {tuple(out.shape)}; "
                         "with a learned sigma, pass only the mean channels (the first half)")


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, *, path: str = "linear") -> torch.Tensor:
    """Clean sample from a velocity ``v = dx_t/dt`` (package time, 0 = clean): the exact inverse of the path.

    ``linear``: ``x_t - t v``; ``cosine``: ``cos(pi t/2) x_t - (2/pi) sin(pi t/2) v``; ``vp``:
    ``alpha x_t + sigma^2 v / alpha'`` (finite at ``t = 0``). Computed in at least fp32; no detach
    (detach the inputs for the rewards, which take no gradient).

    Shape:
        x_t, v: (B, ...); t: (B,) or (B, 1, ..., 1). Output: x_t's shape.
    """
    _check_pair(x_t, v, "v")
    name = _path(path)
    s = _time(t, x_t)
    x_t, v = x_t.to(s.dtype), v.to(s.dtype)
    if name == "linear":
        return x_t - s * v
    if name == "cosine":
        a = s * (math.pi / 2)
        return torch.cos(a) * x_t - (2 / math.pi) * torch.sin(a) * v
    alpha, sigma, d_alpha, _ = path_coefficients(s, name)
    return alpha * x_t + sigma**2 * v / d_alpha


def x0_from_prediction(
    x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, *, path: str = "linear", prediction: str = "velocity",
    time_reversed: bool = False,
) -> torch.Tensor:
    """Clean sample from a model's output: velocity, noise ``eps`` or score ``-eps / sigma``.

    Args:
        prediction: ``"velocity"``, ``"noise"`` or ``"score"`` (SiT's ``--prediction`` names).
        time_reversed: ``t`` and the velocity are in a time where 1 is clean (SiT's): ``t`` becomes
            ``1 - t`` and the velocity changes sign; noise and score are the same in both times.

    Shape:
        x_t, pred: (B, ...); t: (B,) or (B, 1, ..., 1). Output: x_t's shape.
    """
    if prediction not in _PREDICTIONS:
        raise ValueError(f"prediction: expected one of {', '.join(_PREDICTIONS)}, got {prediction!r}")
    _check_pair(x_t, pred, "pred")
    if time_reversed:
        t = 1 - t
    if prediction == "velocity":
        return x0_from_velocity(x_t, -pred if time_reversed else pred, t, path=path)
    s = _time(t, x_t)
    alpha, sigma, _, _ = path_coefficients(s, path)
    x_t, pred = x_t.to(s.dtype), pred.to(s.dtype)
    eps = pred if prediction == "noise" else -sigma * pred
    return (x_t - sigma * eps) / alpha


class LatentDecoder:
    """``decode`` for the perceptual reward: ``vae.decode((z - bias) / scale).sample``, clamped to [-1, 1].

    Args:
        vae: a ``diffusers`` ``AutoencoderKL`` (or anything whose ``decode(z).sample`` is an image).
        scale, bias: the host's latent scaling, ``z = latent * scale + bias`` (SD-VAE: 0.18215, 0;
            REPA: its ``latents_scale`` / ``latents_bias`` tensors of shape (1, 4, 1, 1)).

    A plain callable, not an ``nn.Module``: the VAE stays out of the alignment module's
    parameters, ``state_dict`` and DDP. Runs under ``no_grad`` in the VAE's dtype.

    Shape:
        z: (B, 4, H/8, W/8) -> (B, 3, H, W) float32 in [-1, 1].
    """

    def __init__(self, vae, *, scale: Union[float, torch.Tensor] = 0.18215, bias: Union[float, torch.Tensor] = 0.0):
        if not callable(getattr(vae, "decode", None)):
            raise TypeError(f"vae: expected an autoencoder with a decode() method (diffusers AutoencoderKL), got {type(vae).__name__}")
        self.vae, self.scale, self.bias = vae, scale, bias

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        param = next(iter(self.vae.parameters()), None) if hasattr(self.vae, "parameters") else None
        z = (z.float() - self.bias) / self.scale
        if param is not None:
            z = z.to(device=param.device, dtype=param.dtype)
        out = self.vae.decode(z)
        return getattr(out, "sample", out).float().clamp(-1, 1)

    def __repr__(self) -> str:
        return f"LatentDecoder({type(self.vae).__name__})"


def align_logs(metrics: Dict[str, torch.Tensor], *, prefix: str = "align/") -> Dict[str, float]:
    """``out.metrics`` as Python floats under ``prefix``, averaged over ranks, with one host read.

    Vector metrics become ``<key>/<i>``. Under ``torch.distributed`` this is a collective: call it
    on every rank at the same step (the metric keys depend only on the config and the step).

    Shape:
        metrics: dict of detached tensors (scalars or vectors). Output: dict of floats.
    """
    keys, values = [], []
    for k in sorted(metrics):
        v = metrics[k].detach().float().reshape(-1)
        keys += [f"{prefix}{k}"] if v.numel() == 1 else [f"{prefix}{k}/{i}" for i in range(v.numel())]
        values.append(v)
    if not values:
        return {}
    flat = torch.cat([v.to(values[0].device) for v in values])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat / dist.get_world_size()
    return dict(zip(keys, flat.tolist()))

