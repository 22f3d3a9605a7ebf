"""VRPO's overhead over REPA: time and peak memory of one full training step of a SiT-style model.

One run times every arm on the same model, data and optimizer, alternating the arms step by step
(the order rotates each round), after a warm-up, and reports medians over many steps and the ratios
to REPA, for time and for peak memory:

- ``none``: the denoising loss alone (no projector, no alignment);
- ``repa``: ``VRPOAlignment(mode="repa")``, REPA's projection loss (the projector in the module);
- ``vrpo``: ``VRPOAlignment()`` at its defaults (``--vrpo-kw`` adds options);
- ``vrpo-nodiag``, ``vrpo-novalidate``: the defaults with ``diagnostics_every=0``, with ``validate=False``
  (and ``repa-novalidate``: REPA with ``validate=False``);
- ``vrpo-gaussian-G<k>``: the Gaussian policy with group size ``k`` (``--groups``);
- ``vrpo-agreement``, ``vrpo-achievability``, ``vrpo-achievability-every10`` (``--arms adaptive``): the defaults with the adaptive strength (the last with ``adaptive_every=10``);
- ``vrpo+lpips``: the defaults plus the perceptual reward computed on *every* step and used as the
  sample weight (``sample_weight=1``; its per-call cost; divide the difference to ``vrpo`` by
  ``perceptual_every`` for the amortised cost).

The model is a compact SiT (patch embedding, adaLN-Zero blocks, final layer, as in SiT/DiT) on
SD-VAE-shaped latents (4 x 32 x 32, patch 2: 256 tokens); the tokens after block ``tap`` are taken
with a forward hook, as a host would. The encoder targets are fixed random tensors of DINOv2-B's
shape (256 tokens of width 768): the encoder's own forward pass is the same for REPA and VRPO, so it
is excluded from every arm. The perceptual head decodes with a small conv decoder (latents to
3 x 256 x 256 images), a stand-in that costs far less than SD-VAE's decoder, or with ``--decoder
sd-vae`` with SD-VAE's own decoder architecture (diffusers, random weights: the same cost); see
``docs/performance.md``.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over one step (after a reset); on the CPU,
the allocator's bookkeeping recorded by ``torch.profiler`` (``profile_memory=True``): the largest
running sum of the allocations and frees during one step, plus the bytes that persist across steps
(parameters, optimizer state). Both count tensor memory, not the process's resident set.

Operation counts (``--count-ops``; ``--count-only`` skips the timing): ``torch.profiler`` counts the
ATen ops of the alignment module's forward and backward (projector inside, ``t`` and
``denoise_loss`` passed) at each training step of one period of VRPO's metric schedule, for REPA
and the VRPO arms; "top-level" ops (not called from inside another op) are the CPU's proxy for the
kernel launches of a launch-bound GPU step. The counts do not depend on the batch size.

    python benchmarks/overhead.py                       # CPU, SiT-S/2 shapes, batch 8
    python benchmarks/overhead.py --presets B/2 --batch 32 --count-only --arms repa vrpo nodiag
    python benchmarks/overhead.py --gpu-shapes          # GPU: SiT-B/2 and SiT-XL/2, batch 32, bf16
    python benchmarks/overhead.py --lpips-sweep 1 2 4 8 # per-call perceptual cost vs subset size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vrpo_loss import VRPOAlignment  # noqa: E402

PRESETS = {
    # name: hidden, depth, heads, tap (REPA's encoder_depth)
    "tiny": dict(hidden=64, depth=3, heads=2, tap=2),
    "S/2": dict(hidden=384, depth=12, heads=6, tap=4),
    "B/2": dict(hidden=768, depth=12, heads=12, tap=4),
    "XL/2": dict(hidden=1152, depth=28, heads=16, tap=8),
}


# ----------------------------------------------------------------------------- a compact SiT
def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq=256):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq // 2
        f = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        a = t.float()[:, None] * 1000 * f[None]
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a)], dim=-1))


class Block(nn.Module):
    """SiT/DiT block: adaLN-Zero modulated attention and MLP."""

    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(approximate="tanh"), nn.Linear(4 * hidden, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, c):
        b, n, d = x.shape
        s1, g1, a1, s2, g2, a2 = self.ada(c).chunk(6, dim=-1)
        q, k, v = self.qkv(modulate(self.norm1(x), s1, g1)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + a1.unsqueeze(1) * self.proj(h)
        return x + a2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s2, g2))


class SiT(nn.Module):
    def __init__(self, *, hidden, depth, heads, tap, size=32, channels=4, patch=2, classes=1000, **_):
        super().__init__()
        self.size, self.patch, self.channels = size, patch, channels
        self.x_embed = nn.Conv2d(channels, hidden, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2, hidden) * 0.02)
        self.t_embed = TimestepEmbedder(hidden)
        self.y_embed = nn.Embedding(classes + 1, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, patch * patch * channels)
        self.tapped: Optional[torch.Tensor] = None
        self.blocks[tap - 1].register_forward_hook(lambda mod, inp, out: setattr(self, "tapped", out))

    def forward(self, x, t, y):
        h = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos
        c = self.t_embed(t) + self.y_embed(y)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.ada(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm(h), shift, scale))
        b, g, p = x.shape[0], self.size // self.patch, self.patch
        return h.view(b, g, g, p, p, self.channels).permute(0, 5, 1, 3, 2, 4).reshape(b, self.channels, self.size, self.size)


class ConvDecoder(nn.Module):
    """Decode stand-in for the perceptual head: 4 x 32 x 32 latents to 3 x 256 x 256 images in [-1, 1]
    (``upsamples`` doublings: 3, SD-VAE's 8x; fewer for a quick test)."""

    def __init__(self, width=64, upsamples=3):
        super().__init__()
        layers = [nn.Conv2d(4, width, 3, padding=1), nn.SiLU()]
        for _ in range(upsamples):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, 3, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers).requires_grad_(False).eval()

    def forward(self, z):
        return self.net(z)


# ----------------------------------------------------------------------------- arms
class SDVAEDecoder(nn.Module):
    """SD-VAE's decoder (``stabilityai/sd-vae-ft-ema``'s architecture, 49.5M parameters) built by diffusers from
    its config, with random weights: the same cost as the real one, which needs a model-hub download.
    Decodes latents scaled as REPA stores them (``z * 0.18215``)."""

    def __init__(self):
        super().__init__()
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:  # pragma: no cover - optional
            raise SystemExit("--decoder sd-vae needs diffusers: pip install diffusers") from e
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=2,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            block_out_channels=[128, 256, 512, 512])
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder
        self.requires_grad_(False).eval()

    def forward(self, z):
        return self.decoder(self.post_quant_conv(z / 0.18215)).clamp(-1, 1)


def make_decoder(kind: str, device, stub_upsamples: int = 3) -> nn.Module:
    return (SDVAEDecoder() if kind == "sd-vae" else ConvDecoder(upsamples=stub_upsamples)).to(device)


def lpips_net(device):
    import warnings

    import lpips  # the LPIPS linear layers ship with the wheel; pnet_rand avoids the backbone download

    warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
    return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).to(device).eval().requires_grad_(False)


def build_arms(args, hidden: int, device, compile_align: Optional[bool] = None) -> Dict[str, Optional[nn.Module]]:
    base = dict(hidden_dim=hidden, target_dims=(args.target_dim,))
    if args.projector_dim is not None:
        base["projector_dim"] = args.projector_dim
    extra = json.loads(args.vrpo_kw) if args.vrpo_kw else {}
    arms: Dict[str, Optional[nn.Module]] = {}
    wanted = args.arms
    if "none" in wanted:
        arms["none"] = None
    if "repa" in wanted:
        arms["repa"] = VRPOAlignment(mode="repa", **base)
    if "vrpo" in wanted:
        arms["vrpo"] = VRPOAlignment(**base, **extra)
    if "novalidate" in wanted:
        if "repa" in wanted:
            arms["repa-novalidate"] = VRPOAlignment(mode="repa", validate=False, **base)
        arms["vrpo-novalidate"] = VRPOAlignment(**base, **{**extra, "validate": False})
    if "nodiag" in wanted:
        arms["vrpo-nodiag"] = VRPOAlignment(**base, **{**extra, "diagnostics_every": 0})
    if "adaptive" in wanted:
        for mode in ("agreement", "achievability"):
            arms[f"vrpo-{mode}"] = VRPOAlignment(**base, **{**extra, "adaptive": mode})
        # the statistics on the metric steps only (adaptive_every = metrics_every, 10)
        arms["vrpo-achievability-every10"] = VRPOAlignment(**base, **{**extra, "adaptive": "achievability",
                                                                      "adaptive_every": 10})
    if "gaussian" in wanted:
        for g in args.groups:
            arms[f"vrpo-gaussian-G{g}"] = VRPOAlignment(**base, **{**extra, "policy": "gaussian", "group_size": g})
    if "lpips" in wanted:
        arms["vrpo+lpips"] = VRPOAlignment(
            # sample_weight > 0: at sample_weight 0 the sample-level stage (the perceptual head with it) runs on
            # metric steps only, and this arm would time the defaults instead of the head's per-call cost
            **base, **{**extra, "perceptual_weight": 1.0, "perceptual_every": 1, "perceptual_subset": args.lpips_subset,
                       "sample_weight": 1.0},
            decode=make_decoder(args.decoder, device, args.stub_upsamples), perceptual_net=lpips_net(device),
        )
    for m in arms.values():
        if m is not None:
            m.to(device)
    if args.compile_align if compile_align is None else compile_align:
        arms = {k: (torch.compile(m) if m is not None else None) for k, m in arms.items()}
    return arms


# ----------------------------------------------------------------------------- one training step
class Trainer:
    """Shared model and optimizer; each arm adds its alignment module and that module's optimizer."""

    def __init__(self, model, arms, *, batch, device, amp_dtype, proj_coeff=0.5, lr=1e-4, seed=0, target_dim=768):
        self.model, self.arms, self.device, self.amp_dtype, self.proj_coeff = model, arms, device, amp_dtype, proj_coeff
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr)
        self.align_opts = {k: torch.optim.AdamW(m.parameters(), lr=lr) for k, m in arms.items() if m is not None and any(True for _ in m.parameters())}
        g = torch.Generator().manual_seed(seed)
        self.x0 = torch.randn(batch, model.channels, model.size, model.size, generator=g).to(device)
        self.labels = torch.randint(0, 1000, (batch,), generator=g).to(device)
        self.targets = torch.randn(batch, (model.size // model.patch) ** 2, target_dim, generator=g).to(device)

    def step(self, arm: str) -> None:
        align = self.arms[arm]
        x0 = self.x0
        b = x0.shape[0]
        t = torch.rand(b, device=self.device)  # 0 = clean data, 1 = noise (REPA's linear path)
        noise = torch.randn_like(x0)
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * noise
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            v = self.model(xt, t, self.labels)
            denoise = (v.float() - (noise - x0)).pow(2).mean(dim=(1, 2, 3))
            loss = denoise.mean()
            if align is not None:
                x0_pred = (xt - tt * v.float()).detach()
                out = align(self.model.tapped, self.targets, t=t, denoise_loss=denoise, x0_pred=x0_pred, x0=x0)
                loss = loss + self.proj_coeff * out.loss
        self.model.tapped = None
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if arm in self.align_opts:
            self.align_opts[arm].step()
            self.align_opts[arm].zero_grad(set_to_none=True)

    def persistent_bytes(self, arm: str) -> int:
        """Bytes that live across steps: parameters, buffers and optimizer state of the model and the arm."""
        mods = [self.model] + ([self.arms[arm]] if self.arms[arm] is not None else [])
        opts = [self.opt] + ([self.align_opts[arm]] if arm in self.align_opts else [])
        n = sum(p.numel() * p.element_size() for m in mods for p in list(m.parameters()) + list(m.buffers()))
        n += sum(v.numel() * v.element_size() for o in opts for s in o.state.values() for v in s.values() if torch.is_tensor(v))
        n += sum(x.numel() * x.element_size() for x in (self.x0, self.labels, self.targets))
        return n


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(trainer: Trainer, arm: str):
    """Seconds of one step as ``(time, wall)``: CUDA events on a GPU (both); on the CPU the process's
    CPU time (robust to the process being descheduled on a shared machine) and the wall time."""
    dev = trainer.device
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(dev)
        start.record()
        trainer.step(arm)
        end.record()
        end.synchronize()
        dt = start.elapsed_time(end) / 1e3
        return dt, dt
    w0, c0 = time.perf_counter(), time.process_time()
    trainer.step(arm)
    return time.process_time() - c0, time.perf_counter() - w0


def peak_bytes(trainer: Trainer, arm: str) -> int:
    """Peak tensor memory of one step (after warm-up), persistent state included."""
    dev = trainer.device
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        trainer.step(arm)
        sync(dev)
        return torch.cuda.max_memory_allocated(dev)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.step(arm)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nb in events:
        live += nb
        peak = max(peak, live)
    return trainer.persistent_bytes(arm) + peak


# ----------------------------------------------------------------------------- operation counts
def count_aten_ops(fn) -> dict:
    """ATen operations of one call of ``fn`` (forward and backward both, if ``fn`` runs both), by ``torch.profiler``.

    ``top``: ``aten::`` events whose CPU parent is not an ``aten::`` event (an op called from Python
    or from an autograd node, not from inside another op): the proxy, on a CPU, for the kernel
    launches of a launch-bound step. ``all``: every ``aten::`` event. ``by_name``: ``top`` per op name.
    """
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return dict(top=len(top), all=len(events), by_name=dict(Counter(e.name for e in top)))


def count_period(align: nn.Module, inputs: tuple, steps: int) -> List[dict]:
    """Op counts of ``align``'s forward and backward at training steps ``0 .. steps - 1`` (after one untimed warm-up call)."""
    h, y, t, dl = inputs

    def call():
        align(h, y, t=t, denoise_loss=dl).loss.backward()

    call()
    align.step = 0
    return [count_aten_ops(call) for _ in range(steps)]


def op_counts(args, hidden: int, batch: int, device, log=print) -> List[dict]:
    """Top-level and all ATen ops per training step of the alignment module alone (projector inside, ``t``
    and ``denoise_loss`` passed), for REPA and the VRPO arms (the Gaussian ones included), over one period of VRPO's
    metric schedule."""
    keep = {"repa", "vrpo", "vrpo-nodiag", "vrpo-novalidate", "repa-novalidate", "vrpo-agreement", "vrpo-achievability",
            "vrpo-achievability-every10"}
    arms = {k: m for k, m in build_arms(args, hidden, device, compile_align=False).items()
            if k in keep or k.startswith("vrpo-gaussian-G")}
    cfgs = [m.config for k, m in arms.items() if k.startswith("vrpo")]
    steps = max([math.lcm(c.metrics_every, max(1, c.diagnostics_every)) for c in cfgs] or [1])
    g = torch.Generator().manual_seed(args.seed)
    tokens = 256  # SD-VAE latents 32 x 32, patch 2
    inputs = (torch.randn(batch, tokens, hidden, generator=g).to(device).requires_grad_(True),
              torch.randn(batch, tokens, args.target_dim, generator=g).to(device), torch.rand(batch, generator=g).to(device),
              torch.rand(batch, generator=g).to(device))
    rows = []
    for arm, align in arms.items():
        per = count_period(align, inputs, steps)
        tops, alls = [c["top"] for c in per], [c["all"] for c in per]
        rows.append(dict(arm=arm, steps=steps, top_mean=statistics.fmean(tops), top_min=min(tops), top_max=max(tops),
                         all_mean=statistics.fmean(alls), all_min=min(alls), all_max=max(alls), by_step=tops,
                         by_name_max_step=per[tops.index(max(tops))]["by_name"]))
        if log:
            log(f"  ops {arm}: top-level {min(tops)}-{max(tops)} (mean {statistics.fmean(tops):.1f}) over {steps} steps")
    by_arm = {r["arm"]: r for r in rows}
    for r in rows:  # over REPA with the same validate setting
        ref = by_arm.get("repa-novalidate" if r["arm"].endswith("-novalidate") else "repa")
        r["extra_top_mean"] = r["top_mean"] - ref["top_mean"] if ref else None
        r["extra_top_max"] = r["top_max"] - ref["top_max"] if ref else None
    return rows


def ops_table(rows: List[dict]) -> str:
    out = ["| shapes | arm | top-level ATen ops per step: min-max (mean) | over REPA: mean, metric step | all ATen ops: min-max (mean) |",
           "|---|---|---|---|---|"]
    for r in rows:
        extra = "-" if r["extra_top_mean"] is None else f"{r['extra_top_mean']:+.1f}, {r['extra_top_max']:+d}"
        out.append(f"| SiT-{r['preset']} | {r['arm']} | {r['top_min']}-{r['top_max']} ({r['top_mean']:.1f}) | {extra} "
                   f"| {r['all_min']}-{r['all_max']} ({r['all_mean']:.1f}) |")
    return "\n".join(out)


def run(args, preset: str, batch: int, device, amp_dtype, log=print) -> List[dict]:
    torch.manual_seed(args.seed)
    shape = PRESETS[preset]
    model = SiT(**shape).to(device)
    if args.compile:
        model = torch.compile(model)
        model.channels, model.size, model.patch = model._orig_mod.channels, model._orig_mod.size, model._orig_mod.patch
    arms = build_arms(args, shape["hidden"], device)
    trainer = Trainer(model, arms, batch=batch, device=device, amp_dtype=amp_dtype, seed=args.seed, target_dim=args.target_dim)
    if args.compile:  # the hook writes to the original module
        trainer.model = _CompiledView(model)
    names = list(arms)
    times: Dict[str, List[float]] = {k: [] for k in names}
    walls: Dict[str, List[float]] = {k: [] for k in names}
    rounds = args.warmup + args.steps
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no arm always runs first
        for arm in order:
            dt, wall = time_step(trainer, arm)
            if r >= args.warmup:
                times[arm].append(dt)
                walls[arm].append(wall)
        if r + 1 == args.warmup or r + 1 == rounds:
            check_finite(trainer)
        if log is not None and (r + 1) % max(1, rounds // 5) == 0:
            log(f"  [{preset} B={batch}] round {r + 1}/{rounds}")
    peaks = {arm: peak_bytes(trainer, arm) for arm in names} if args.memory else {}
    rows = []
    ref_t = statistics.median(times["repa"]) if "repa" in times else None
    ref_m = peaks.get("repa")
    for arm in names:
        med = statistics.median(times[arm])
        q = statistics.quantiles(times[arm], n=4) if len(times[arm]) >= 2 else [med, med, med]
        row = dict(preset=preset, batch=batch, arm=arm, median_s=med, q1_s=q[0], q3_s=q[2], mean_s=statistics.fmean(times[arm]),
                   steps=len(times[arm]), time_ratio=med / ref_t if ref_t else None,
                   times_s=times[arm], wall_median_s=statistics.median(walls[arm]), wall_ratio=statistics.median(walls[arm]) / statistics.median(walls["repa"]) if ref_t else None)
        if peaks:
            row.update(peak_mib=peaks[arm] / 2**20, mem_ratio=peaks[arm] / ref_m if ref_m else None)
        rows.append(row)
    return rows


def check_finite(trainer: Trainer) -> None:
    """Stop if training has made the model non-finite: timings of NaN arithmetic mean nothing."""
    bad = [n for n, p in trainer.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise SystemExit(f"non-finite parameters after training steps ({', '.join(bad[:4])}, ...): the timings would "
                         "be of NaN arithmetic. Seen with --compile under bf16 autocast on the CPU (inductor), "
                         "with no alignment at all; use fp32 (--amp none) or eager there.")


class _CompiledView:
    """A compiled model seen through the attributes the trainer reads (the hook sets ``tapped`` on the original)."""

    def __init__(self, compiled):
        self._c = compiled

    def __call__(self, *a):
        return self._c(*a)

    def __getattr__(self, name):
        return getattr(self._c._orig_mod, name)

    def __setattr__(self, name, value):
        if name == "_c":
            object.__setattr__(self, name, value)
        else:
            setattr(self._c._orig_mod, name, value)


def lpips_sweep(args, device, amp_dtype, log=print) -> List[dict]:
    """Per-call cost of the perceptual reward (decode stand-in + LPIPS-VGG on pred and real) vs subset size."""
    from vrpo_loss.rewards import PerceptualReward, RewardContext

    dec = make_decoder(args.decoder, device)
    net = lpips_net(device)
    rows = []
    b = max(args.lpips_sweep)
    x0 = torch.randn(b, 4, 32, 32, device=device)
    pred = x0 + 0.1 * torch.randn_like(x0)
    for k in args.lpips_sweep:
        for what, decode in (("decode+lpips", dec), ("decode only", None)):
            head = PerceptualReward(decode=dec, net=net, every=1, subset=k)
            ctx = RewardContext(x0_pred=pred, x0=x0, step=0)
            ts = []
            for i in range(args.lpips_reps + 1):
                sync(device)
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    if decode is None:
                        with torch.no_grad():
                            dec(pred[:k]), dec(x0[:k])
                    else:
                        head.sample_reward(ctx)
                sync(device)
                if i:
                    ts.append(time.perf_counter() - t0)
            rows.append(dict(subset=k, what=what, median_s=statistics.median(ts)))
            if log:
                log(f"  lpips subset {k} {what}: {statistics.median(ts) * 1e3:.0f} ms")
    return rows


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def table(rows: List[dict]) -> str:
    out = ["| shapes | batch | arm | median step (ms) | IQR (ms) | time / REPA | wall median (ms) | wall / REPA | peak memory (MiB) | memory / REPA |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr = f"{r['time_ratio']:.3f}" if r.get("time_ratio") else "-"
        pm = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        mr = f"{r['mem_ratio']:.3f}" if r.get("mem_ratio") else "-"
        wr = f"{r['wall_ratio']:.3f}" if r.get("wall_ratio") else "-"
        out.append(f"| SiT-{r['preset']} | {r['batch']} | {r['arm']} | {r['median_s'] * 1e3:.0f} | {r['q1_s'] * 1e3:.0f}-{r['q3_s'] * 1e3:.0f} | {tr} "
                   f"| {r['wall_median_s'] * 1e3:.0f} | {wr} | {pm} | {mr} |")
    return "\n".join(out)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-shapes", action="store_true", help="SiT-B/2 and SiT-XL/2 shapes, batch 32, bf16 autocast, on CUDA")
    p.add_argument("--presets", nargs="+", default=None, choices=list(PRESETS), help="model shapes (default S/2 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8 on CPU, 32 with --gpu-shapes)")
    p.add_argument("--device", default=None, help="default cuda with --gpu-shapes, else cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default=None, help="autocast dtype (default bf16 with --gpu-shapes)")
    p.add_argument("--arms", nargs="+", default=["none", "repa", "vrpo", "nodiag", "novalidate", "gaussian", "lpips"],
                   choices=["none", "repa", "vrpo", "nodiag", "novalidate", "gaussian", "lpips", "adaptive"])
    p.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16, 32], help="group sizes of the Gaussian arms")
    p.add_argument("--vrpo-kw", default="", help='JSON of extra VRPOConfig options for every VRPO arm, e.g. \'{"tau": 0.05}\'')
    p.add_argument("--lpips-subset", type=int, default=8, help="perceptual_subset of the vrpo+lpips arm")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--steps", type=int, default=15, help="timed rounds (each round runs every arm once)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory pass")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the SiT model (all arms alike)")
    p.add_argument("--compile-align", action="store_true", help="also torch.compile each arm's alignment module")
    p.add_argument("--decoder", choices=["stub", "sd-vae"], default="stub",
                   help="decoder of the perceptual head: a small conv stand-in, or SD-VAE's decoder (needs diffusers; random weights, same cost)")
    p.add_argument("--stub-upsamples", type=int, default=3, help="doublings of the stub decoder (3: 256x256 images "
                   "from 32x32 latents, as SD-VAE; fewer for a quick test)")
    p.add_argument("--target-dim", type=int, default=768, help="width of the encoder's tokens (768: DINOv2-B, REPA's default)")
    p.add_argument("--projector-dim", type=int, default=None, help="the projector's hidden width (default: the package's, "
                   "REPA's 2048); smaller for a quick test: bf16 matmuls on a CPU without bf16 instructions are slow")
    p.add_argument("--lpips-sweep", type=int, nargs="*", default=None, help="also time the perceptual head per call for these subset sizes")
    p.add_argument("--lpips-reps", type=int, default=3)
    p.add_argument("--count-ops", action="store_true",
                   help="also count the ATen ops of the alignment module's forward and backward per step (REPA and VRPO arms; torch.profiler)")
    p.add_argument("--count-only", action="store_true", help="count the ops, skip the timing (implies --count-ops)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.presets is None:
        args.presets = ["B/2", "XL/2"] if args.gpu_shapes else ["S/2"]
    if args.batch is None:
        args.batch = 32 if args.gpu_shapes else 8
    if args.device is None:
        args.device = "cuda" if args.gpu_shapes else "cpu"
    if args.amp is None:
        args.amp = "bf16" if args.gpu_shapes else "none"
    return args


def main(argv=None, log=print):
    args = parse(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    if log:
        log(f"machine: {machine(device)}")
        log(f"command: python benchmarks/overhead.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    rows, ops = [], []
    for preset in args.presets:
        if args.count_ops or args.count_only:
            ops += [dict(preset=preset, batch=args.batch, **r) for r in op_counts(args, PRESETS[preset]["hidden"], args.batch, device, log=log)]
        if not args.count_only:
            rows += run(args, preset, args.batch, device, amp_dtype, log=log)
    result = {"machine": machine(device), "rows": rows}
    if ops:
        result["ops"] = ops
    if args.lpips_sweep:
        result["lpips"] = lpips_sweep(args, device, amp_dtype, log=log)
    if log:
        if ops:
            log(ops_table(ops))
        if rows:
            log(table(rows))
        if args.lpips_sweep:
            log("| subset | what | per call (ms) |\n|---|---|---|")
            for r in result["lpips"]:
                log(f"| {r['subset']} | {r['what']} | {r['median_s'] * 1e3:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
