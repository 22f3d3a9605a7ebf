"""One training run of the toy benchmark: an arm (none / REPA / VRPO at some settings) and a seed.

The loss is the flow-matching velocity MSE plus ``coeff * align(h, y).loss``, where ``align`` is
``vrpo_loss.VRPOAlignment`` in ``mode="repa"`` or ``mode="vrpo"`` (it owns REPA's projector), ``h``
the model's tokens after block ``align_depth`` and ``y`` the cached encoder tokens of the same images.
Runs with the same seed see the same model initialisation, batches, times and noise, so arms are
compared on paired runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from evaluate import save_grid
from model import ToySiT, sample


@dataclass
class Arm:
    """An arm: ``mode`` in {"none", "repa", "vrpo"}, the loss weight ``coeff``, VRPOConfig kwargs."""

    mode: str
    coeff: float = 0.0
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    @staticmethod
    def parse(spec: str, default_coeff: dict | None = None, default_kwargs: dict | None = None) -> "Arm":
        """``none`` | ``repa[@coeff]`` | ``vrpo[@coeff][:key=value,key=value]``."""
        head, _, kw = spec.partition(":")
        mode, _, coeff = head.partition("@")
        if mode not in ("none", "repa", "vrpo"):
            raise ValueError(f"arm {spec!r}: mode must be none, repa or vrpo")
        kwargs = dict(default_kwargs or {}) if mode == "vrpo" and not kw else {}
        kwargs.update(parse_kv(kw))
        c = float(coeff) if coeff else (default_coeff or {}).get(mode, 0.0)
        label = "none" if mode == "none" else f"{mode}@{c:g}" + (
            ":" + ",".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs else "")
        return Arm(mode, 0.0 if mode == "none" else c, kwargs, label)


def parse_kv(text: str) -> dict:
    """``"policy=correspondence,tau=0.1,antithetic=false"`` -> dict with ints/floats/bools parsed."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        k, _, v = item.partition("=")
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        elif low == "none":
            out[k] = None
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def build_alignment(arm: Arm, hidden_dim: int, target_dim: int, projector_dim: int):
    if arm.mode == "none":
        return None
    from vrpo_loss import VRPOAlignment

    return VRPOAlignment(hidden_dim=hidden_dim, target_dims=(target_dim,), projector_dim=projector_dim,
                         mode=arm.mode, **arm.kwargs)


def train_run(arm: Arm, seed: int, data, feats: torch.Tensor, evaluator, cfg, grid_path: str | None = None,
              progress=None) -> dict:
    """Train one (arm, seed) for ``cfg.steps`` steps, evaluating at ``cfg.eval_at``; returns a record."""
    torch.manual_seed(seed)
    model = ToySiT(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, align_depth=cfg.align_depth)
    align = build_alignment(arm, cfg.dim, feats.shape[-1], cfg.projector_dim)
    params = list(model.parameters()) + (list(align.parameters()) if align is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)  # batches, times and noise: identical across arms
    x_all, y_all = data.x_train, data.y_train
    n_cls = cfg.eval_samples // 10
    y_eval = torch.arange(10).repeat_interleave(n_cls)
    noise_eval = torch.randn(len(y_eval), 1, 16, 16, generator=torch.Generator().manual_seed(10_000 + seed))

    record = {"arm": arm.label, "mode": arm.mode, "coeff": arm.coeff, "kwargs": arm.kwargs, "seed": seed,
              "evals": [], "metrics": {}}
    sums, count, train_time = {}, 0, 0.0
    perm, pos = torch.randperm(len(x_all), generator=g), 0
    for step in range(1, cfg.steps + 1):
        if pos + cfg.batch > len(perm):
            perm, pos = torch.randperm(len(x_all), generator=g), 0
        idx = perm[pos:pos + cfg.batch]
        pos += cfg.batch
        t = torch.rand(len(idx), generator=g)
        eps = torch.randn(len(idx), 1, 16, 16, generator=g)
        tic = time.perf_counter()
        x0, yc = x_all[idx], y_all[idx]
        tb = t.view(-1, 1, 1, 1)
        v, h = model((1 - tb) * x0 + tb * eps, t, yc)
        denoise = ((v - (eps - x0)) ** 2).flatten(1).mean(1)  # (B,)
        loss = denoise.mean()
        if align is not None:
            out = align(h, feats[idx], t=t, denoise_loss=denoise.detach())
            loss = loss + arm.coeff * out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_time += time.perf_counter() - tic
        if align is not None and step % cfg.log_every == 0:
            for k, val in out.metrics.items():
                if torch.is_tensor(val) and val.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + float(val)
            count += 1
        if progress is not None:
            progress.update(1)
        if step in cfg.eval_at:
            xs = sample(model, y_eval, noise_eval, steps=cfg.sample_steps, method=cfg.sampler)
            ev = evaluator(xs, y_eval)
            ev.update(step=step, train_s=round(train_time, 3), loss=float(denoise.mean()))
            record["evals"].append(ev)
            if progress is not None:
                progress.set_postfix(arm=arm.label[:24], seed=seed, step=step, fd=f"{ev['fd']:.0f}")
            if grid_path and step == cfg.steps:
                save_grid(xs.view(10, n_cls, 1, 16, 16)[:, :10].reshape(-1, 1, 16, 16), grid_path)
    record["step_ms"] = 1000 * train_time / cfg.steps
    record["metrics"] = {k: s / max(count, 1) for k, s in sums.items()}
    return record
