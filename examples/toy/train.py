"""One training run of the toy benchmark: an arm (none / REPA / VRPO at some settings) and a seed.

The loss is the flow-matching velocity MSE plus ``coeff * align(h, y).loss``, where ``align`` is
``vrpo_loss.VRPOAlignment`` in ``mode="repa"`` or ``mode="vrpo"`` (it owns REPA's projector), ``h``
the model's tokens after block ``align_depth`` and ``y`` the cached encoder tokens of the same images.
Runs with the same seed see the same model initialisation, batches, times and noise, so arms are
compared on paired runs.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vrpo_loss import VRPOConfig

from evaluate import save_grid
from model import ToySiT, sample

# string-valued options of the peer methods (parsed as strings even before VRPOConfig declares them)
PEER_STR_OPTIONS = ("target_norm", "projector", "time_weight", "target_stats")
# the benchmark's own arm options (not VRPOConfig's): target_stats=global standardises each encoder channel
# over the whole training set before the arm sees the targets (none: the raw tokens); groups=G draws each
# batch as B/G images times G (t, noise) draws of each, for every arm alike (none:groups=G too);
# group_weight=kappa weights each draw's alignment loss by its group-relative advantage (issue 21, R4: see
# GroupWeight)
BENCH_OPTIONS = ("target_stats", "groups", "group_weight")


@dataclass
class Arm:
    """An arm: ``mode`` in {"none", "repa", "vrpo"}, the loss weight ``coeff``, VRPOConfig kwargs."""

    mode: str
    coeff: float = 0.0
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    @staticmethod
    def parse(spec: str, default_coeff: dict | None = None, default_kwargs: dict | None = None) -> "Arm":
        """``none`` | ``repa[@coeff][:key=value,...]`` | ``vrpo[@coeff][:key=value,...]``.

        The kwargs are VRPOConfig's (``repa@4:target_norm=zscore,projector=conv``); a bare ``vrpo``
        takes ``default_kwargs``. ``stop_step`` in (0, 1) is a fraction of the run (see ``resolve``).
        """
        head, _, kw = spec.partition(":")
        mode, _, coeff = head.partition("@")
        if mode not in ("none", "repa", "vrpo"):
            raise ValueError(f"arm {spec!r}: mode must be none, repa or vrpo (e.g. 'repa@4:time_weight=sigmoid')")
        kwargs = dict(default_kwargs or {}) if mode == "vrpo" and not kw else {}
        kwargs.update(parse_kv(kw))
        if mode == "none" and (coeff or set(kwargs) - {"groups"}):
            raise ValueError(f"arm {spec!r}: 'none' takes no coefficient and no options but groups=G")
        c = float(coeff) if coeff else (default_coeff or {}).get(mode, 0.0)
        opts = ":" + ",".join(f"{k}={_fmt(v)}" for k, v in kwargs.items()) if kwargs else ""
        label = ("none" if mode == "none" else f"{mode}@{c:g}") + opts  # (none:groups=4 is not none)
        return Arm(mode, 0.0 if mode == "none" else c, kwargs, label)

    def resolve(self, steps: int) -> dict:
        """The VRPOConfig kwargs of a run of ``steps`` steps: a ``stop_step`` in (0, 1) becomes
        ``round(stop_step * steps)``; an int is a step count and is kept."""
        kw = dict(self.kwargs)
        stop = kw.get("stop_step")
        if isinstance(stop, float):
            if not 0 < stop < 1:
                raise ValueError(f"arm {self.label!r}: stop_step as a float must be a fraction in (0, 1) of the "
                                 f"run's steps, got {stop}; pass an int for a step count")
            kw["stop_step"] = max(1, round(stop * steps))
        return kw


def _fmt(v) -> str:
    return "x".join(str(x) for x in v) if isinstance(v, tuple) else str(v)


def parse_kv(text: str) -> dict:
    """``"policy=correspondence,tau=0.1,antithetic=false"`` -> dict with ints/floats/bools parsed.

    ``none`` is None, except for VRPOConfig's string options (``adv_scale=none`` is the string);
    ``token_grid=4x4`` is the tuple (4, 4).
    """
    str_fields = {f.name for f in dataclasses.fields(VRPOConfig) if f.type in (str, "str")} | set(PEER_STR_OPTIONS)
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        k, _, v = item.partition("=")
        low = v.lower()
        if k in str_fields:
            out[k] = v
        elif k == "token_grid" and "x" in low:
            out[k] = tuple(int(n) for n in low.split("x"))
        elif low in ("true", "false"):
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


def build_alignment(arm: Arm, hidden_dim: int, target_dim: int, projector_dim: int, steps: int = 0,
                    diagnostics_every: int | None = None, decode=None):
    """The arm's ``VRPOAlignment`` (None for ``none``); ``steps`` resolves a fractional ``stop_step``.

    An arm with ``perceptual_weight > 0`` gets the perceptual reward offline: ``decode`` (the
    autoencoder's, latents -> grey images; None for pixel models) and the benchmark's VGG16-BN as the
    distance (``data.VGGPerceptual``), since LPIPS's pretrained backbones cannot be fetched here.
    """
    if arm.mode == "none":
        return None
    from vrpo_loss import VRPOAlignment

    kw = arm.resolve(steps) if steps else dict(arm.kwargs)
    for k in BENCH_OPTIONS:
        kw.pop(k, None)
    if diagnostics_every is not None and arm.mode == "vrpo":
        kw.setdefault("diagnostics_every", diagnostics_every)  # detached diagnostic: no effect on training
    if kw.get("projector", "mlp") == "mlp":  # (iREPA's conv projector has no hidden width)
        kw["projector_dim"] = projector_dim
    extra = {}
    if kw.get("perceptual_weight", 0) > 0:
        from data import VGGPerceptual

        to_image = decode if decode is not None else (lambda x: x)
        extra = dict(perceptual_net=VGGPerceptual(), decode=lambda z: to_image(z).clamp(-1, 1).expand(-1, 3, -1, -1))
    return VRPOAlignment(hidden_dim=hidden_dim, target_dims=(target_dim,), mode=arm.mode, **kw, **extra)


class GroupWeight:
    """Issue 21, R4: GRPO's group in a diffusion model. Each batch holds G (t, noise) draws of each image;
    each draw's rewards, the semantic ``cos(mu, y)`` (``1 - out.terms["anchor"]``) and the fidelity
    ``-denoise_loss``, are normalised against running statistics of their timestep bin
    (``vrpo_loss.statistics.TimeBinnedNormalizer``), averaged, centred over the draws of the same image
    (the group-relative advantage), and mapped to a bounded weight with mean one
    (``vrpo_loss.factors.bounded.bounded_unit_mean``, gain ``kappa``, in [0.5, 2]): an adaptive,
    per-image version of VA-REPA's timestep gate. The weight multiplies each draw's alignment loss
    (``out.per_sample``, which is ``factor * alignment`` for arms without reward-head losses).
    """

    def __init__(self, kappa: float, groups: int, time_bins: int = 10):
        from vrpo_loss.statistics import TimeBinnedNormalizer

        if groups < 2:
            raise ValueError(f"group_weight: a group-relative advantage needs groups >= 2 draws of each image, got {groups}")
        self.kappa, self.groups = kappa, groups
        self.stats = TimeBinnedNormalizer(heads=2, time_bins=time_bins)

    def __call__(self, out, t: torch.Tensor, denoise: torch.Tensor) -> torch.Tensor:
        from vrpo_loss.factors.bounded import bounded_unit_mean

        if "loss_heads" in out.metrics:  # a head's loss is not scaled by the pipeline's factor
            raise ValueError("group_weight: arms with reward-head losses are not supported")
        rewards = torch.stack([1 - out.terms["anchor"], -denoise.detach().float()])  # (2, B)
        adv = self.stats.to(t.device)(rewards, t=t).mean(0)  # (B,) per-bin advantages, their mean
        rel = (adv.view(-1, self.groups) - adv.view(-1, self.groups).mean(1, keepdim=True)).flatten()
        return bounded_unit_mean(rel, gain=self.kappa, low=0.5, high=2.0).detach()


def clean_inputs(align, x0: torch.Tensor, x0_pred: torch.Tensor) -> dict:
    """The clean input and the model's prediction of it (``x_t - t v``, detached), for an arm whose reward
    heads read them (the decodability head: ``x0``; the perceptual reward: both); else nothing."""
    c = align.config
    if c.decodability_weight > 0 or c.perceptual_weight > 0:
        return dict(x0=x0, x0_pred=x0_pred.detach())
    return {}


def push_diagnostic(align, h: torch.Tensor, y: torch.Tensor, vrpo_loss: torch.Tensor) -> dict:
    """How the policy term pushes the diffusion tokens ``h``, relative to REPA's loss on the same tokens.

    ``g_vrpo`` is the gradient of VRPO's loss on ``h`` (through the projector), ``g_repa`` that of
    REPA's ``-mean cos(proj(h), y)``; the policy term's part is ``g_vrpo - anchor_coeff * g_repa``
    (exact when sample weighting is off: the anchor is then REPA's loss plus a constant). Returns its
    norm relative to REPA's (``push/policy_vs_repa``), their cosine (``push/policy_cos``), and the
    whole VRPO push relative to REPA's (``push/total_vs_repa``).
    """
    g_vrpo = torch.autograd.grad(vrpo_loss, h, retain_graph=True)[0]
    hd = h.detach().requires_grad_()
    mu = align.project([hd])[0].float()
    g_repa = torch.autograd.grad(-F.cosine_similarity(mu, y.float(), dim=-1).mean(), hd)[0]
    g_pol = g_vrpo - align.config.anchor_coeff * g_repa
    n_repa = g_repa.norm().clamp_min(1e-20)
    return {"push/policy_vs_repa": float(g_pol.norm() / n_repa),
            "push/policy_cos": float(F.cosine_similarity(g_pol.flatten(), g_repa.flatten(), dim=0)),
            "push/total_vs_repa": float(g_vrpo.norm() / n_repa)}


def _evaluate(model, evaluator, y_eval, noise, cfg, dev, decode=None):
    """Samples of ``model`` (decoded to images when it trains in a latent space) and their scores."""
    xs = sample(model, y_eval.to(dev), noise.to(dev), steps=cfg.sample_steps, method=cfg.sampler,
                clamp=decode is None)
    xs = (decode(xs) if decode is not None else xs).cpu()
    return xs, evaluator(xs, y_eval)


def train_run(arm: Arm, seed: int, data, feats: torch.Tensor, evaluator, cfg, grid_path: str | None = None,
              progress=None) -> dict:
    """Train one (arm, seed) for ``cfg.steps`` steps, evaluating at ``cfg.eval_at``; returns a record.

    ``feats`` may be a dict of target sets by ``target_stats`` ("none", "global"): the arm's is used.
    ``data.x_train`` holds the training images at the model's resolution (or their latents, with
    ``data.decode`` mapping latents to images for evaluation), ``data.num_classes`` the classes (10 if
    absent), ``feats`` the encoder tokens on the model's token grid (``pool_tokens``). With ``cfg.ema`` > 0 the evaluated model is an
    exponential moving average of the weights (decay ``min(ema, (1 + step) / (10 + step))``). At the
    last evaluation the samples are drawn a second
    time from other noise (``fd_redraw``): the evaluator's own noise, same model, two sample draws (unless
    ``cfg.redraw`` is False: a one-seed demo has no interval for it to inform).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    if isinstance(feats, dict):
        feats = feats[arm.kwargs.get("target_stats", "none")]
    torch.manual_seed(seed)
    size, chans = data.x_train.shape[-1], data.x_train.shape[1]
    n_classes, decode = getattr(data, "num_classes", 10), getattr(data, "decode", None)
    model = ToySiT(image_size=size, channels=chans, patch=getattr(cfg, "patch", 2), dim=cfg.dim, depth=cfg.depth,
                   heads=cfg.heads, num_classes=n_classes, align_depth=cfg.align_depth)
    align = build_alignment(arm, cfg.dim, feats.shape[-1], cfg.projector_dim, steps=cfg.steps,
                            diagnostics_every=getattr(cfg, "diag_every", None), decode=decode)
    dev = torch.device(getattr(cfg, "device", "cpu"))
    model.to(dev)
    ema_decay = getattr(cfg, "ema", 0.0)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay else None  # the model that is evaluated
    if align is not None:
        align.to(dev)
    params = list(model.parameters()) + (list(align.parameters()) if align is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
             if getattr(cfg, "lr_schedule", "constant") == "cosine" else None)
    g = torch.Generator().manual_seed(seed)  # batches, times and noise: identical across arms
    x_all, y_all, feats = data.x_train.to(dev), data.y_train.to(dev), feats.to(dev)
    n_cls = cfg.eval_samples // n_classes
    y_eval = torch.arange(n_classes).repeat_interleave(n_cls)
    shape = (len(y_eval), chans, size, size)
    noise_eval = torch.randn(shape, generator=torch.Generator().manual_seed(10_000 + seed))
    noise_redraw = torch.randn(shape, generator=torch.Generator().manual_seed(20_000 + seed))

    record = {"arm": arm.label, "mode": arm.mode, "coeff": arm.coeff, "kwargs": arm.kwargs, "seed": seed,
              "evals": [], "metrics": {}}
    sums, counts, train_time, diag, diag_n = {}, {}, 0.0, {}, 0
    perm, pos = torch.randperm(len(x_all), generator=g), 0
    groups = int(arm.kwargs.get("groups", 1))
    if cfg.batch % groups:
        raise ValueError(f"arm {arm.label!r}: groups={groups} must divide the batch {cfg.batch}")
    images = cfg.batch // groups  # groups=G: B/G images, G (t, noise) draws of each
    group_weight = GroupWeight(arm.kwargs["group_weight"], groups) if "group_weight" in arm.kwargs else None
    for step in range(1, cfg.steps + 1):
        if pos + images > len(perm):
            perm, pos = torch.randperm(len(x_all), generator=g), 0
        idx = perm[pos:pos + images].repeat_interleave(groups)
        pos += images
        t = torch.rand(len(idx), generator=g).to(dev)
        eps = torch.randn(len(idx), chans, size, size, generator=g).to(dev)
        idx = idx.to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        x0, yc = x_all[idx], y_all[idx]
        tb = t.view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * eps
        v, h = model(xt, t, yc)
        denoise = ((v - (eps - x0)) ** 2).flatten(1).mean(1)  # (B,)
        loss = denoise.mean()
        if align is not None:
            yf = feats[idx].float()  # cached in half precision
            out = align(h, yf, t=t, denoise_loss=denoise.detach(), **clean_inputs(align, x0, xt - tb * v))
            if group_weight is None:
                loss = loss + arm.coeff * out.loss
            else:
                loss = loss + arm.coeff * (group_weight(out, t, denoise) * out.per_sample).mean()
            if arm.mode == "vrpo" and getattr(cfg, "diag_every", 0) and step % cfg.diag_every == 0:
                tic_d = time.perf_counter()
                for k, val in push_diagnostic(align, h, yf, out.loss).items():
                    diag[k] = diag.get(k, 0.0) + val
                diag_n += 1
                tic += time.perf_counter() - tic_d  # not training time
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if ema is not None:  # decay warmed up, (1 + step) / (10 + step), so early averages do not lag
            d = min(ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - tic
        if align is not None and step % cfg.log_every == 0:
            for k, val in out.metrics.items():
                if torch.is_tensor(val) and val.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + float(val)
                    counts[k] = counts.get(k, 0) + 1  # a key averages over the steps that report it (metrics_every)
        if progress is not None:
            progress.update(1)
        if step in cfg.eval_at:
            net = model if ema is None else ema
            xs, ev = _evaluate(net, evaluator, y_eval, noise_eval, cfg, dev, decode)
            ev.update(step=step, train_s=round(train_time, 3), loss=float(denoise.detach().mean()))
            if step == cfg.steps and getattr(cfg, "redraw", True):
                ev["fd_redraw"] = _evaluate(net, evaluator, y_eval, noise_redraw, cfg, dev, decode)[1]["fd"]
            record["evals"].append(ev)
            if progress is not None:
                progress.set_postfix(arm=arm.label[:24], seed=seed, step=step, fd=f"{ev['fd']:.0f}")
            if grid_path and step == cfg.steps:
                side = xs.shape[-1]
                save_grid(xs.view(n_classes, n_cls, 1, side, side)[:, :10].reshape(-1, 1, side, side), grid_path)
    record["step_ms"] = 1000 * train_time / cfg.steps
    record["wall_s"] = time.perf_counter() - start  # training, diagnostics and evaluation
    record["cpu_s"] = time.process_time() - cpu_start  # the same in CPU time (core-seconds), whatever the load
    record["metrics"] = {k: s / counts[k] for k, s in sums.items()}
    record["metrics"].update({k: s / diag_n for k, s in diag.items()} if diag_n else {})
    return record
