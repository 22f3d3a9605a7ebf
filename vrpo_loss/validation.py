"""Input checks of :class:`~vrpo_loss.VRPOAlignment`.

Shape, dtype and device checks read only metadata, cost nothing and always run. Value checks (NaN/Inf,
``t`` in [0, 1]) need the data: :func:`start_value_check` batches them into one boolean tensor and
starts its copy to the host; :meth:`ValueCheck.finish` reads it once, the single host-device
synchronisation that ``validate=True`` allows. The module starts the check first and finishes it
last, after all of its own work is queued: on a GPU the read then waits only for the flags (queued
early), not for the module's work, so the GPU never runs dry, while ``ValueCheck.ok`` (on the
device) keeps the running statistics from being updated by a batch that will be refused.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["ValueCheck", "as_list", "check_inputs", "check_input_values", "check_optional", "start_value_check"]


def as_list(x, name: str) -> List[torch.Tensor]:
    """A tensor or a list/tuple of tensors, as a list."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, torch.Tensor) for v in x):
        return list(x)
    raise TypeError(f"{name}: expected a tensor or a non-empty list of tensors (one per encoder), got {type(x).__name__}")


def _float(x: torch.Tensor, name: str, hint: str = "") -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}{hint}")


def check_inputs(
    features: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    hidden_dim: Optional[int],
    target_dims: Tuple[int, ...],
    resample_tokens: bool,
) -> None:
    """Check shapes, dtypes and devices (metadata only); token grids may differ only when ``resample_tokens``."""
    e = len(target_dims)
    if len(features) != e or len(targets) != e:
        raise ValueError(
            f"features, targets: expected one tensor per encoder ({e} encoders, from target_dims={target_dims}), "
            f"got {len(features)} features and {len(targets)} targets"
        )
    for i, (h, y) in enumerate(zip(features, targets)):
        fn, tn = f"features[{i}]", f"targets[{i}]"
        _float(h, fn)
        _float(y, tn, "; encoder tokens must be floating point (fp16/bf16 are upcast to fp32)")
        if h.dim() != 3:
            raise ValueError(f"{fn}: expected rank 3 (B, N, D), got shape {tuple(h.shape)}; flatten the token grid first")
        if y.dim() != 3:
            raise ValueError(f"{tn}: expected rank 3 (B, N, C), got shape {tuple(y.shape)}; use the encoder's patch tokens without CLS")
        want = hidden_dim if hidden_dim is not None else target_dims[i]
        if h.shape[-1] != want:
            what = "hidden_dim" if hidden_dim is not None else f"target_dims[{i}] (hidden_dim=None: features already projected)"
            raise ValueError(f"{fn}: expected last dimension {want} ({what}), got shape {tuple(h.shape)}")
        if y.shape[-1] != target_dims[i]:
            raise ValueError(f"{tn}: expected last dimension {target_dims[i]} (target_dims[{i}]), got shape {tuple(y.shape)}")
        if y.shape[0] != h.shape[0]:
            raise ValueError(f"{tn}: batch size {y.shape[0]} does not match {fn}'s {h.shape[0]}")
        if y.device != h.device:
            raise ValueError(
                f"{tn}: expected a tensor on {fn}'s device {h.device}, got device {y.device}; move the encoder's tokens "
                f"to the features' device (targets.to(features.device)), or run the encoder there"
            )
        if y.shape[1] != h.shape[1] and not resample_tokens:
            raise ValueError(
                f"{tn}: {y.shape[1]} encoder tokens but {h.shape[1]} diffusion tokens; run the encoder at the resolution "
                "whose patch grid matches the diffusion model's, or pass resample_tokens=True to resample the targets"
            )
    b, dev = features[0].shape[0], features[0].device
    for i, h in enumerate(features[1:], 1):
        if h.device != dev:
            raise ValueError(f"features[{i}]: expected a tensor on features[0]'s device {dev}, got device {h.device}; "
                             "give every encoder's features on one device")
    if any(h.shape[0] != b for h in features):
        raise ValueError(f"features: every encoder's features must have the same batch size, got {[h.shape[0] for h in features]}")


def _same_device(x: torch.Tensor, name: str, device: Optional[torch.device]) -> None:
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected a tensor on the features' device {device}, got device {x.device}; "
                         f"move it there ({name}.to(features.device))")


def check_optional(batch: int, t, denoise_loss, x0_pred, x0, device: Optional[torch.device] = None):
    """Check and flatten the optional per-sample inputs; returns ``(t, denoise_loss)`` as (B,) or None.

    ``device``: the features' device, which ``t`` and ``denoise_loss`` must be on (None: not checked).
    """
    if t is not None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t: expected a tensor of shape ({batch},), got {type(t).__name__}")
        _float(t, "t", "; VRPO's time is in [0, 1] with 0 = clean data (DiT: pass (t + 1).float() / 1000)")
        if t.numel() != batch:
            raise ValueError(f"t: expected {batch} values (one per sample), got shape {tuple(t.shape)}")
        _same_device(t, "t", device)
        t = t.reshape(batch)
    if denoise_loss is not None:
        if not isinstance(denoise_loss, torch.Tensor):
            raise TypeError(f"denoise_loss: expected a tensor of shape ({batch},), got {type(denoise_loss).__name__}")
        _float(denoise_loss, "denoise_loss")
        if denoise_loss.numel() != batch:
            raise ValueError(f"denoise_loss: expected the per-sample loss, {batch} values, got shape {tuple(denoise_loss.shape)}; do not reduce it over the batch")
        _same_device(denoise_loss, "denoise_loss", device)
        denoise_loss = denoise_loss.detach().reshape(batch)
    for name, x in (("x0_pred", x0_pred), ("x0", x0)):
        if x is not None:
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name}: expected a tensor, got {type(x).__name__}")
            _float(x, name)
            if x.shape[0] != batch:
                raise ValueError(f"{name}: expected batch size {batch}, got shape {tuple(x.shape)}")
    if x0_pred is not None and x0 is not None and x0_pred.shape != x0.shape:
        raise ValueError(f"x0_pred: expected the shape of x0 {tuple(x0.shape)}, got {tuple(x0_pred.shape)}")
    return t, denoise_loss


class ValueCheck:
    """A value check under way: the flags are computed and on their way to the host.

    Attributes:
        ok: 0-dim bool tensor on the device, True when every check passed (for masking updates).
    """

    def __init__(self, named: Sequence[Tuple[str, torch.Tensor, str]], flags: torch.Tensor):
        self.named = list(named)
        self.ok = flags.all()
        if flags.device.type == "cuda":
            self._host = flags.to("cpu", non_blocking=True)  # pinned; ready once the event has passed
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = flags.cpu(), None

    @torch.compiler.disable
    def finish(self) -> None:
        """Read the flags (the one synchronisation) and raise a ValueError naming the first bad input."""
        if self._event is not None:
            self._event.synchronize()
        for (name, x, kind), ok in zip(self.named, self._host.tolist()):
            if not ok:
                if kind == "unit":
                    raise ValueError(
                        f"{name}: expected finite values in [0, 1] (0 = clean data, 1 = noise), got min {x.min().item():.4g}, "
                        f"max {x.max().item():.4g}; SiT hosts pass 1 - t, DiT hosts (t + 1) / 1000 for its integer t in [0, 1000)"
                    )
                bad = int((~torch.isfinite(x)).sum())
                raise ValueError(
                    f"{name}: found {bad} NaN/Inf values of {x.numel()}; nothing was updated. Under fp16, cast encoder "
                    "outputs to fp32 before normalising (REPA issue #46), or lower the learning rate"
                )


@torch.compiler.disable
def start_value_check(named: Sequence[Tuple[str, torch.Tensor, str]]) -> ValueCheck:
    """Compute the value checks on the device and start their copy to the host (no synchronisation).

    Args:
        named: ``(name, tensor, kind)`` with kind ``"finite"`` or ``"unit"`` (finite and in [0, 1]).
    """
    flags = []
    for _, x, kind in named:
        ok = torch.isfinite(x).all()
        if kind == "unit":
            ok = ok & (x >= 0).all() & (x <= 1).all()
        flags.append(ok)
    if not flags:
        return ValueCheck([], torch.ones(1, dtype=torch.bool))
    return ValueCheck(named, torch.stack(flags))


def check_input_values(features: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], t: Optional[torch.Tensor],
                       denoise_loss: Optional[torch.Tensor]) -> ValueCheck:
    """Start the value check of one call's inputs (features and targets finite, ``t`` in [0, 1]).

    Read it with :meth:`ValueCheck.finish` at the end of the call, once its work is queued.
    """
    named = [(f"features[{i}]", h.detach(), "finite") for i, h in enumerate(features)]
    named += [(f"targets[{i}]", y.detach(), "finite") for i, y in enumerate(targets)]
    if t is not None:
        named.append(("t", t.detach(), "unit"))
    if denoise_loss is not None:
        named.append(("denoise_loss", denoise_loss, "finite"))
    return start_value_check(named)
