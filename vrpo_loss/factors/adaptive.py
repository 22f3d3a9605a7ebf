"""Adaptive alignment strength: rewards decide where (timestep) and when (training phase) to align.

REPA's loss has one strength at every timestep and every step. VA-REPA gates it by timestep with a
fixed sigmoid, HASTE switches it off at a fixed step; both constants are set by hand per setting.
:class:`AdaptiveStrength` keeps running statistics of a reward per timestep bin (EMA, all-reduced
across ranks), turns them into a bounded strength per bin and multiplies each sample's alignment
loss by the strength of its bin (``VRPOConfig.adaptive``):

- ``"agreement"``: per sample, the cosine between the alignment loss's gradient on the diffusion
  tokens ``h`` and the rest of the loss's gradient there (the denoising part). Positive: a step along
  the alignment push also lowers the denoising loss, to first order. Hooks installed by
  :meth:`AdaptiveStrength.attach` measure it during the backward of step k; step k+1 takes it in.
- ``"achievability"``: the semantic reward, the mean ``cos(mu, y)`` of each sample: bins where the
  alignment is achieved better than on average over bins are aligned more (an adaptive VA-REPA).
- ``terminate``: a gate in [0, 1] multiplies every strength. It shrinks by the factor
  ``1 - momentum`` at each training call where the running agreement (averaged over bins) is
  negative or the running semantic reward is not above its best so far, and never grows back (an
  adaptive HASTE: no step to set by hand).

Strengths (:func:`bin_strength`): ``s_k = clamp(1 + gain * z_k, s_min, s_max)``, where ``z_k`` is
bin k's running mean less the mean over bins in units of the pooled within-bin std, divided by the
mean strength over the samples seen so far and clamped again, so that the mean is about one.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..config_checks import ADAPTIVE_CHOICES
from ..distributed import all_reduce_sum
from ..statistics import TimeBinnedNormalizer, accumulation_dtype, bin_sums, moments
from .bounded import bounded_unit_mean

__all__ = ["ADAPTIVE_CHOICES", "AdaptiveStrength", "bin_strength", "gradient_agreement"]



def gradient_agreement(g_align: torch.Tensor, g_total: torch.Tensor, *, rtol: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cosine between a gradient's alignment part and its remainder ``g_total - g_align``.

    Computed in float64. A sample is invalid (cosine 0) where either part vanishes (the remainder
    below ``rtol`` times the alignment part counts as vanished) or a value is not finite.

    Shape:
        g_align, g_total: (B, ...). Output: ``(cos, valid)``, (B,) float32 and (B,) bool.
    """
    ga = g_align.detach().flatten(1).double()
    gd = g_total.detach().flatten(1).double() - ga
    na, nd, dot = ga.norm(dim=1), gd.norm(dim=1), (ga * gd).sum(1)
    valid = torch.isfinite(dot) & torch.isfinite(na) & torch.isfinite(nd) & (na > 0) & (nd > rtol * na)
    cos = torch.where(valid, dot / (na * nd).clamp_min(1e-300), torch.zeros_like(dot))
    return cos.clamp(-1, 1).float(), valid


def bin_strength(mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, *, gain: float, s_min: float, s_max: float,
                 eps: float = 1e-4) -> torch.Tensor:
    """Bounded per-bin strengths with mean about one over the samples seen, from per-bin statistics.

    ``z_k = (mean_k - sum_j p_j mean_j) / (sqrt(sum_j p_j var_j) + eps)`` with ``p`` the bins' shares
    of ``count``; ``s_k = clamp(1 + gain * z_k, s_min, s_max)``, divided by ``sum_j p_j s_j``, clamped
    again. Unseen bins have ``z = 0``; with no bin seen every strength is one.

    Shape:
        mean, var, count: (K,). Output: (K,).
    """
    p = count / count.sum().clamp_min(1)
    centre = (p * mean).sum()
    spread = (p * var).sum().clamp_min(0).sqrt()
    z = torch.where(count > 0, (mean - centre) / (spread + eps), torch.zeros_like(mean))
    return bounded_unit_mean(z, gain=gain, low=s_min, high=s_max, weights=count)


class AdaptiveStrength(nn.Module):
    """Per-timestep-bin alignment strength from running reward statistics (see the module docstring).

    Args:
        signal: ``"agreement"`` or ``"achievability"``.
        time_bins: number K of equal bins of ``t`` in [0, 1].
        momentum: EMA momentum of the per-bin statistics (and the gate's decay per call).
        gain, s_min, s_max: of :func:`bin_strength`.
        terminate: multiply the strengths by a gate that decays when alignment stops paying.

    Buffers:
        ``stats.mean``, ``stats.var``, ``stats.count``: (R, K), row 0 the semantic reward, row 1 the
        agreement (``signal="agreement"`` only); ``gate``, ``best``: 0-dim (``terminate`` only). The
        agreement of the last backward, not yet taken in, travels in ``get_extra_state``.

    Shape:
        forward: cos (B,) the semantic reward; t (B,). Output: strength (B,), metrics.
    """

    def __init__(self, *, signal: str, time_bins: int, momentum: float, gain: float, s_min: float, s_max: float,
                 terminate: bool = False):
        super().__init__()
        # the strengths of the last update (the gate included); a buffer, so it moves with the module, but
        # not saved: recomputed from the statistics on an update and after a load (``_stale``)
        self.register_buffer("table", torch.ones(time_bins), persistent=False)
        self._stale = True
        if signal not in ADAPTIVE_CHOICES[1:]:
            raise ValueError(f"signal: expected 'agreement' or 'achievability', got {signal!r}")
        self.signal, self.gain, self.s_min, self.s_max, self.terminate = signal, gain, s_min, s_max, terminate
        self.rows = ("cos", "agreement") if signal == "agreement" else ("cos",)
        self.stats = TimeBinnedNormalizer(heads=len(self.rows), time_bins=time_bins, momentum=momentum)
        if terminate:
            self.register_buffer("gate", torch.ones(()))
            self.register_buffer("best", torch.full((), -math.inf))
        self._pending: Optional[torch.Tensor] = None  # (3, K) rank-local sums; not a buffer: DDP would broadcast it
        self._handles: List = []
        self._probe: Optional[dict] = None  # what the installed hooks read: the samples' bins, the alignment gradient

    @classmethod
    def from_config(cls, cfg) -> Optional["AdaptiveStrength"]:
        """The controller a :class:`~vrpo_loss.VRPOConfig` asks for, or None for ``adaptive="none"``."""
        if cfg.adaptive == "none":
            return None
        return cls(signal=cfg.adaptive, time_bins=cfg.time_bins, momentum=cfg.adaptive_momentum, gain=cfg.adaptive_gain,
                   s_min=cfg.adaptive_min, s_max=cfg.adaptive_max, terminate=cfg.adaptive_terminate)

    def get_extra_state(self):
        return {"pending": self._pending}

    def set_extra_state(self, state):
        self._pending = state.get("pending")
        self._stale = True  # the statistics are being loaded: the next call recomputes the strengths

    @torch.compiler.disable
    def attach(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """For ``"agreement"`` in training, install the probe and return what to project.

        The probe is an identity view of ``h`` with a hook that receives the alignment part of
        ``dL/dh``, and a hook on ``h`` that receives all of it; the hooks return nothing, so they change
        no gradient. The last backward through ``h`` before the next call is the one that counts; the
        samples' timestep bins reach the hook from :meth:`forward`, which runs before that backward.
        """
        self._probe = None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.signal != "agreement" or not self.training or not torch.is_grad_enabled():
            return list(features)
        h = features[0]
        if any(f is not h for f in features[1:]):
            raise ValueError(f"features: adaptive='agreement' expects one tensor h shared by every encoder's projector, got "
                             f"{len(features)} distinct tensors; pass the same h for each encoder or use adaptive='achievability'")
        if not h.requires_grad:
            raise ValueError("features: adaptive='agreement' reads the loss's gradient on the diffusion tokens h, but h does "
                             "not require grad; pass h as it leaves the model (not detached), or use adaptive='achievability'")
        box = self._probe = {}
        probe = h.view_as(h)

        def on_align(grad):
            box["align"] = grad

        def on_total(grad):
            if "align" in box and "bins" in box:  # else this backward did not go through the alignment loss
                with torch.no_grad():
                    cos, valid = gradient_agreement(box.pop("align"), grad)
                    self._pending = bin_sums(cos, valid, box["bins"], self.stats.time_bins)

        self._handles = [probe.register_hook(on_align), h.register_hook(on_total)]
        return [probe] * len(features)

    @torch.compiler.disable
    def _take_pending(self, device) -> torch.Tensor:
        pending, self._pending = self._pending, None
        if pending is None:
            return torch.zeros(3, self.stats.time_bins, device=device, dtype=accumulation_dtype(device))
        return pending.to(device)

    def forward(self, cos: torch.Tensor, t: torch.Tensor, commit: Optional[torch.Tensor] = None,
                metrics: bool = True, update: bool = True) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-sample strengths (detached); on an update call in training mode (``update``; the module
        says which: every ``adaptive_every`` steps) the statistics first take in this call's semantic
        reward and the last backward's agreement (one all-reduce), unless ``commit`` is False, and the
        strengths are recomputed; the other calls apply the last strengths.

        ``cos`` is each sample's semantic reward, ``mean_n cos(mu, y)`` averaged over encoders (the
        complement of the anchor term that the terms stage computes anyway: no second cosine). The
        per-bin metrics are built only where ``metrics`` is True.

        Shape:
            cos: (B,) (detached here); t: (B,). Output: strength (B,), metrics.
        """
        if t is None:
            raise ValueError(f"t: adaptive={self.signal!r} sets one alignment strength per timestep bin and needs t (B,) in [0, 1]")
        learn = self.training and update
        pending = self._take_pending(t.device) if learn and self.signal == "agreement" else None
        bins = self.stats.bins(t)
        if self._probe is not None:
            self._probe["bins"] = bins.detach()
        if learn:
            with torch.no_grad():
                cos = cos.detach()
                sums = bin_sums(cos, torch.isfinite(cos), bins, self.stats.time_bins)
                sums = sums[:, None] if pending is None else torch.stack([sums, pending], dim=1)
                ok = self.stats.update(*moments(all_reduce_sum(sums)), commit)
                if self.terminate:
                    self._decay_gate(ok)  # a refused update (bad input, non-finite statistics) moves no gate
        if learn or self._stale:
            self._refresh()
        s = self.table
        return s[bins], (self._metrics(s) if metrics else {})

    def _refresh(self) -> None:
        # the strengths from the statistics (and the gate), kept until the next update
        r = len(self.rows) - 1  # the row that sets the strength
        with torch.no_grad():
            s = bin_strength(self.stats.mean[r], self.stats.var[r], self.stats.count[r], gain=self.gain,
                             s_min=self.s_min, s_max=self.s_max)
            self.table.copy_(s * self.gate if self.terminate else s)
        self._stale = False

    def _decay_gate(self, commit: Optional[torch.Tensor]) -> None:
        mean, count = self.stats.mean, self.stats.count
        level = (mean * count).sum(-1) / count.sum(-1).clamp_min(1)  # (R,) running means over bins
        stalled = level[0] <= self.best
        if self.signal == "agreement":
            stalled = stalled | ((level[1] < 0) & (count[1].sum() > 0))
        ok = (count[0].sum() > 0) if commit is None else (count[0].sum() > 0) & commit
        self.gate.copy_(torch.where(stalled & ok, self.gate * (1 - self.stats.momentum), self.gate))
        self.best.copy_(torch.where(ok, torch.maximum(self.best, level[0]), self.best))

    def _metrics(self, s: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = {f"adaptive/strength/bin{k}": v for k, v in enumerate(s.clone().unbind())}
        means = self.stats.mean.detach().clone()
        for r, name in enumerate(self.rows):
            out.update({f"adaptive/{name}/bin{k}": v for k, v in enumerate(means[r].unbind())})
        if self.terminate:
            out["adaptive/gate"] = self.gate.detach().clone()
        return out
