"""Run a few CPU training steps of a patched official REPA, SiT or DiT checkout, offline.

Used by ``examples/check_patches.sh``; run it directly as
``python examples/check_driver.py {repa,sit,dit} PATCHED_DIR``.

The patched ``train.py`` is executed unmodified on disk. To run it on a CPU without internet, this
driver applies shims *at run time only* (users of the patches need none of them):

- single-process ``torch.distributed`` on gloo instead of NCCL, CPU instead of CUDA (textual
  substitutions in the source it executes, each asserted to match exactly once or more);
- a tiny deterministic stand-in for ``AutoencoderKL.from_pretrained`` (8x average pooling to 4
  channels), ``wandb`` and ``torchdiffeq`` stubs when they are not installed;
- random-weight encoders: a DINOv2-S with 2 blocks, written to a local checkpoint file and read
  back through ``vrpo_loss.encoders.load_encoder`` (SiT, DiT), or returned by ``torch.hub.load``
  (REPA loads its encoders through ``torch.hub``);
- synthetic data in each repository's own format (REPA: ``images/`` PNGs plus ``vae-sd/`` latent
  moments and ``dataset.json``; SiT and DiT: an ``ImageFolder`` of PNGs).

- ``--arm all-heads``: diffusers' ``AutoencoderKL`` built from SD-VAE's config with random weights
  (the real decoder's architecture and latent scaling), ``lpips.LPIPS(pnet_rand=True)`` (the VGG
  backbone cannot be downloaded; LPIPS's own linear layers ship with the wheel);
- the host's ``cleanup()`` (SiT, DiT) or ``accelerator.end_training()`` (REPA), which destroy the
  process group, are skipped, so that the checks below can use
  the process group after ``main()`` returns.

What it checks, besides the run itself:

- the package's path formulas against the host's own functions (REPA ``SILoss.interpolant``; SiT's
  ``path_sampler.plan`` and ``get_score_from_velocity`` for every path and prediction; DiT's
  ``q_sample`` / ``_predict_xstart_from_eps``), in float64;
- at every step, that the ``x0_pred`` the patch passes agrees with the host's own denoising loss:
  ``mean((x0_pred - x0)^2) = c(t) * loss`` with ``c`` from the host's coefficients;
- after training, that the checkpoint reloads strictly as the sampling script does (``ema``);
- ``--arm ddp`` (under ``torchrun``/``accelerate launch`` with 2 processes): the alignment module's
  state (running statistics, step, parameters) is equal on both ranks, and the model and alignment
  module reloaded strictly from the checkpoint of step 3 reproduce step 4's losses exactly (the
  step replayed with the random state it ran with).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import socket
import sys
import tempfile
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RES = 256  # the repositories only accept 256 or 512
STEPS = 3  # single-process arms: steps, local batch
BATCH = 2
DDP_STEPS, DDP_CKPT = 4, 3  # two-process arm: steps, checkpoint step (then step 4 is replayed from it)
ARMS = {  # flags of each arm, beside the host's own
    "repa": ["--alignment", "repa"],
    "vrpo": ["--alignment", "vrpo"],
    "all-heads": ["--alignment", "vrpo", "--perceptual-weight", "1", "--perceptual-every", "2", "--perceptual-subset", "1",
                  "--decodability-weight", "0.5", "--sample-weight", "0.5", "--align-opt", "metrics_every=1"],
    "ddp": ["--alignment", "vrpo", "--decodability-weight", "0.5", "--sample-weight", "0.5"],
}


# ---------------------------------------------------------------------------------------------
# stand-ins for things that would be downloaded
# ---------------------------------------------------------------------------------------------
class _Dist:
    def __init__(self, mean):
        self.mean = mean

    def sample(self):
        return self.mean


class TinyVAE(nn.Module):
    """AutoencoderKL stand-in: pixels (B,3,H,W) in [-1,1] <-> latents (B,4,H/8,W/8)."""

    def encode(self, x):
        z = F.avg_pool2d(x, 8)
        return types.SimpleNamespace(latent_dist=_Dist(torch.cat([z, z.mean(1, keepdim=True)], 1)))

    def decode(self, z):
        return types.SimpleNamespace(sample=F.interpolate(z[:, :3], scale_factor=8))


def sd_vae():
    """diffusers' AutoencoderKL with SD-VAE's architecture (``stabilityai/sd-vae-ft-*``), random weights."""
    from diffusers.models import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=2,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         block_out_channels=[128, 256, 512, 512])


def _install_stubs(real_vae: bool) -> None:
    try:  # import before the stubs exist, so its "is wandb installed?" probes see the truth
        import accelerate  # noqa: F401
    except ImportError:
        pass
    if real_vae:
        import diffusers.models
        import lpips

        diffusers.models.AutoencoderKL.from_pretrained = classmethod(lambda cls, *a, **k: sd_vae())
        init = lpips.LPIPS.__init__

        def lpips_init(self, *a, **k):  # random backbone (no download); the linear layers from the wheel
            weights = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{k.get('net', 'alex')}.pth")
            init(self, *a, **{**k, "pretrained": True, "pnet_rand": True, "model_path": weights})

        lpips.LPIPS.__init__ = lpips_init
    try:
        import diffusers.models  # noqa: F401

        if not real_vae:
            diffusers.models.AutoencoderKL.from_pretrained = classmethod(lambda cls, *a, **k: TinyVAE())
    except ImportError:
        diffusers = types.ModuleType("diffusers")
        models = types.ModuleType("diffusers.models")
        models.AutoencoderKL = types.SimpleNamespace(from_pretrained=lambda *a, **k: TinyVAE())
        diffusers.models = models
        sys.modules["diffusers"], sys.modules["diffusers.models"] = diffusers, models
    for name in ("wandb", "torchdiffeq"):
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            mod.odeint = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("torchdiffeq stub"))
            mod.Image = lambda *a, **k: None
            mod.init = mod.log = lambda *a, **k: None
            sys.modules[name] = mod


def _tiny_dinov2(name: str = "vit_small_patch14_dinov2"):
    import timm

    return timm.create_model(name, pretrained=False, img_size=224 * (RES // 256), num_classes=0, depth=2)


class HubDINOv2(nn.Module):
    """What ``torch.hub.load('facebookresearch/dinov2', ...)`` returns, as far as REPA uses it."""

    def __init__(self, hub_name: str):
        super().__init__()
        timm_name = {"s": "vit_small", "b": "vit_base", "l": "vit_large", "g": "vit_giant"}[hub_name[len("dinov2_vit")]]
        reg = hub_name.endswith("_reg")
        self.vit = _tiny_dinov2(f"{timm_name}_patch14_{'reg4_' if reg else ''}dinov2")
        self.embed_dim = self.vit.embed_dim
        self.pos_embed = self.vit.pos_embed
        self.head = nn.Identity()

    def forward_features(self, x):
        x = self.vit.forward_features(x)
        return {"x_norm_patchtokens": x[:, self.vit.num_prefix_tokens:]}


# ---------------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------------
def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, 3, RES // 32, RES // 32)).astype(np.float32)
    up = F.interpolate(torch.from_numpy(low), size=RES, mode="bilinear", align_corners=False)
    return up.clamp(0, 255).round().to(torch.uint8).numpy()  # (n, 3, H, W), smooth blobs


def make_imagefolder(root: str, n: int) -> None:
    from PIL import Image

    for i, img in enumerate(_images(n)):
        d = os.path.join(root, f"class{i % 2}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(os.path.join(d, f"{i:03d}.png"))


def make_repa_data(root: str, n: int) -> None:
    from PIL import Image

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "vae-sd"), exist_ok=True)
    labels = []
    vae = TinyVAE()
    for i, img in enumerate(_images(n)):
        Image.fromarray(img.transpose(1, 2, 0)).save(os.path.join(root, "images", f"{i:05d}.png"))
        x = torch.from_numpy(img)[None].float() / 127.5 - 1
        mean = vae.encode(x).latent_dist.sample() / 0.18215
        moments = torch.cat([mean, torch.full_like(mean, 0.01)], 1)  # REPA stores (mean, std)
        np.save(os.path.join(root, "vae-sd", f"{i:05d}.npy"), moments[0].numpy())  # (8, H/8, W/8)
        labels.append([f"{i:05d}.npy", i % 10])
    with open(os.path.join(root, "vae-sd", "dataset.json"), "w") as f:
        json.dump({"labels": labels}, f)


# ---------------------------------------------------------------------------------------------
# running the patched train.py
# ---------------------------------------------------------------------------------------------
def _sub(src: str, old: str, new: str, *, count: int = 1) -> str:
    found = src.count(old)
    if found < count:
        raise SystemExit(f"check_driver: CPU shim expected {old!r} at least {count}x in train.py, found {found}x")
    return src.replace(old, new)


CPU_SHIMS = {
    "sit": [
        ('assert torch.cuda.is_available(), "Training currently requires at least one GPU."', "pass"),
        ('dist.init_process_group("nccl")', 'dist.init_process_group("gloo")'),
        ("device = rank % torch.cuda.device_count()", 'device = torch.device("cpu")'),
        ("torch.cuda.set_device(device)", "pass"),
        ("device_ids=[device]", "device_ids=None"),
        ("torch.cuda.synchronize()", "pass"),
        ('logger.info("Done!")\n    cleanup()', 'logger.info("Done!")'),
    ],
    "dit": [
        ('assert torch.cuda.is_available(), "Training currently requires at least one GPU."', "pass"),
        ('dist.init_process_group("nccl")', 'dist.init_process_group("gloo")'),
        ("device = rank % torch.cuda.device_count()", 'device = torch.device("cpu")'),
        ("torch.cuda.set_device(device)", "pass"),
        ("device_ids=[rank]", "device_ids=None"),
        ("torch.cuda.synchronize()", "pass"),
        ('logger.info("Done!")\n    cleanup()', 'logger.info("Done!")'),
    ],
    "repa": [
        ("log_with=args.report_to", "log_with=None"),
        ("global_step == 1 or", "False and"),  # skip the 50-step sampling of 64 images at step 1
        ('"model": model.module.state_dict()', '"model": accelerator.unwrap_model(model).state_dict()'),
        ("accelerator.end_training()", "pass"),  # it destroys the process group, which the checks use
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _say(msg: str) -> None:
    if _rank() == 0:
        print(msg, flush=True)


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


# ---------------------------------------------------------------------------------------------
# recording the alignment calls and the host's loss calls
# ---------------------------------------------------------------------------------------------
class Recorder:
    """Wraps ``VRPOAlignment.forward`` and the host's loss function; keeps what each call saw."""

    def __init__(self, kind: str):
        import vrpo_loss

        self.kind, self.vrpo_loss = kind, vrpo_loss
        self.align, self.host, self.on = [], [], True
        cls = vrpo_loss.VRPOAlignment
        self.align_forward = orig_align = cls.forward
        rec = self

        def forward(module, features, targets, t=None, denoise_loss=None, x0_pred=None, x0=None):
            out = orig_align(module, features, targets, t=t, denoise_loss=denoise_loss, x0_pred=x0_pred, x0=x0)
            if rec.on:
                rec.align.append(dict(module=module, features=_clone(features), targets=_clone(targets), t=_clone(t),
                                      x0_pred=_clone(x0_pred), x0=_clone(x0), loss=_clone(out.loss),
                                      per_sample=_clone(out.per_sample), metrics=sorted(out.metrics)))
            return out

        cls.forward = forward
        owner, name = self._host_loss()
        self.host_loss = orig_host = getattr(owner, name)

        def host_loss(this, model, *args, **kwargs):
            rng = torch.get_rng_state()
            out = orig_host(this, model, *args, **kwargs)
            if rec.on:
                rec.host.append(dict(this=this, model=model, rng=rng, args=_clone(args), kwargs=_clone(kwargs), out=_clone(out)))
            return out

        setattr(owner, name, host_loss)

    def _host_loss(self):
        if self.kind == "repa":
            import loss

            return loss.SILoss, "__call__"
        if self.kind == "sit":
            import transport.transport as tr

            return tr.Transport, "training_losses"
        import diffusion.respace as rs

        return rs.SpacedDiffusion, "training_losses"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def check_paths(kind: str) -> None:
    """The package's clean-sample formulas against the host's own path functions, in float64."""
    from vrpo_loss.hosts import x0_from_prediction, x0_from_velocity

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.98 + 0.01
    errs = []
    if kind == "repa":
        from loss import SILoss

        for path in ("linear", "cosine"):
            a, s, da, ds = SILoss(path_type=path).interpolant(t.view(-1, 1, 1, 1))
            got = x0_from_velocity(a * x + s * eps, da * x + ds * eps, t, path=path)
            errs.append((f"{path}/v", _rel(got, x)))
    elif kind == "sit":
        from transport import create_transport

        for path in ("Linear", "GVP", "VP"):
            for pred in ("velocity", "noise", "score"):
                tr = create_transport(path, pred, None, 1e-5, 1e-3)
                ts, x0, x1 = tr.sample(x)
                ts = ts.to(torch.float64)
                ts, xt, ut = tr.path_sampler.plan(ts, eps, x)
                out = {"velocity": ut, "noise": eps, "score": tr.path_sampler.get_score_from_velocity(ut, xt, ts)}[pred]
                got = x0_from_prediction(xt, out, ts, path=path, prediction=pred, time_reversed=True)
                errs.append((f"{path}/{pred}", _rel(got, x)))
    else:
        from diffusion import create_diffusion

        d = create_diffusion(timestep_respacing="")
        ti = torch.randint(0, d.num_timesteps, (6,), generator=g)
        got = d._predict_xstart_from_eps(d.q_sample(x, ti, noise=eps), ti, eps)
        errs.append(("eps (its own _predict_xstart_from_eps)", _rel(got, x)))
    tol = 1e-5 if kind == "dit" else 1e-9  # DiT's _extract_into_tensor casts its coefficients to fp32
    bad = [(n, e) for n, e in errs if not e < tol]
    _say(f"[check] {kind}: x0 formulas vs the host's own path functions (float64{', fp32 coefficients' if kind == 'dit' else ''}, max rel. error): "
         + ", ".join(f"{n} {e:.1e}" for n, e in errs))
    if bad:
        raise SystemExit(f"[check] FAIL: x0 formulas disagree with the host's path functions: {bad}")


def check_x0_against_loss(kind: str, rec: Recorder) -> float:
    """At each step: mean((x0_pred - x0)^2) equals c(t) * the host's own loss of that step."""
    worst = 0.0
    for call, host in zip(rec.align, rec.host):
        if call["x0_pred"] is None:
            raise SystemExit(f"[check] FAIL: {kind}: the patch passed no x0_pred")
        err = ((call["x0_pred"] - call["x0"]).double() ** 2).mean(dim=(1, 2, 3))
        t = call["t"].double()
        if kind == "dit":
            ti = host["args"][1]
            c = torch.from_numpy(host["this"].sqrt_recipm1_alphas_cumprod)[ti] ** 2
            loss = host["out"]["mse"].double()
        else:
            if kind == "repa":
                a, s, da, ds = host["this"].interpolant(t.view(-1, 1, 1, 1))
                loss = host["out"][0].double()
            else:
                ts = (1 - t).view(-1, 1, 1, 1)
                (a, da), (s, ds) = host["this"].path_sampler.compute_alpha_t(ts), host["this"].path_sampler.compute_sigma_t(ts)
                loss = host["out"]["loss"].double()
            c = (s / (ds * a - s * da)).flatten() ** 2
        worst = max(worst, _rel(err, c * loss))
    if not worst < 1e-3:
        raise SystemExit(f"[check] FAIL: {kind}: x0_pred disagrees with the host's denoising loss (rel. error {worst:.2e})")
    return worst


# ---------------------------------------------------------------------------------------------
# running the patched train.py
# ---------------------------------------------------------------------------------------------
def _prepare(kind: str, work: str, n: int) -> dict:
    """Synthetic data and the random encoder file, written once (rank 0; the other rank waits)."""
    data = os.path.join(work, f"data-{n}")
    enc_ckpt = os.path.join(work, "dinov2_vits14_random.pth")
    done = os.path.join(work, f"prepared-{n}")
    if _rank() == 0 and not os.path.exists(done):
        torch.manual_seed(0)
        if kind == "repa":
            make_repa_data(data, n)
        else:
            make_imagefolder(data, n)
            torch.save(_tiny_dinov2().state_dict(), enc_ckpt)
        open(done, "w").close()
    for _ in range(600):
        if os.path.exists(done):
            break
        time.sleep(0.5)
    return dict(data=data, enc_ckpt=enc_ckpt)


def _argv(kind: str, arm: str, work: str, files: dict, out_dir: str) -> list:
    steps, ckpt = (DDP_STEPS, DDP_CKPT) if arm == "ddp" else (STEPS, STEPS)
    batch = BATCH * int(os.environ.get("WORLD_SIZE", "1"))
    if kind == "repa":
        return [
            "--exp-name", "check", "--output-dir", out_dir, "--data-dir", files["data"], "--model", "SiT-B/2",  # REPA's SiT-S/* do not build (hidden 384, decoder 768)
            "--enc-type", "dinov2-vit-s", "--encoder-depth", "2", "--batch-size", str(batch),
            "--max-train-steps", str(steps), "--checkpointing-steps", str(ckpt),
            "--sampling-steps", "1000000", "--mixed-precision", "no", "--num-workers", "0",
            "--resolution", str(RES), "--report-to", "none",
        ] + ARMS[arm]
    argv = [
        "--data-path", files["data"], "--results-dir", out_dir, "--model", ('DiT' if kind == 'dit' else 'SiT') + '-S/2',
        "--image-size", str(RES), "--epochs", "1", "--global-batch-size", str(batch),
        "--num-workers", "0", "--log-every", "1", "--ckpt-every", str(ckpt),
        "--enc-type", "dinov2-vit-s", "--enc-checkpoint", files["enc_ckpt"], "--encoder-depth", "2",
    ]
    return argv + (["--sample-every", "1000000"] if kind == "sit" else []) + ARMS[arm]


def run(kind: str, repo: str, arm: str, work: str) -> None:
    repo = os.path.abspath(repo)
    os.chdir(repo)
    sys.path.insert(0, repo)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = DDP_STEPS if arm == "ddp" else STEPS
    _install_stubs(real_vae=arm == "all-heads")
    rec = Recorder(kind)
    check_paths(kind)
    files = _prepare(kind, work, steps * BATCH * world)
    out_dir = os.path.join(work, f"out-{arm}")
    torch.manual_seed(0)
    if kind == "repa":
        torch.hub.load = lambda repo_or_dir, model, *a, **k: HubDINOv2(model)
    else:
        if "RANK" not in os.environ:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.update(ENTITY="none", PROJECT="none")
        # load_encoder builds the full-depth architecture; the random checkpoint has 2 blocks.
        import vrpo_loss.encoders as enc_mod

        real = enc_mod.load_encoder
        enc_mod.load_encoder = lambda *a, **k: real(*a, depth=2, **k)
    argv = _argv(kind, arm, work, files, out_dir)
    src = open(os.path.join(repo, "train.py")).read()
    for old, new in CPU_SHIMS[kind]:
        src = _sub(src, old, new)
    sys.argv = ["train.py"] + argv
    _say(f"[check] {kind}: vrpo_loss from {os.path.dirname(rec.vrpo_loss.__file__)}")
    _say(f"[check] {kind}: {'%d processes: ' % world if world > 1 else ''}python train.py {' '.join(argv)}")
    exec(compile(src, os.path.join(repo, "train.py"), "exec"), {"__name__": "__main__", "__file__": os.path.join(repo, "train.py")})

    if len(rec.align) != steps or len(rec.host) != steps:
        raise SystemExit(f"[check] FAIL: expected {steps} alignment and loss calls, saw {len(rec.align)} and {len(rec.host)}")
    for i, c in enumerate(rec.align, 1):
        trange = None if c["t"] is None else (round(float(c["t"].min()), 4), round(float(c["t"].max()), 4))
        _say(f"[check] {kind} --arm {arm}: step {i} alignment loss {float(c['loss']):+.4f}, per_sample {tuple(c['per_sample'].shape)}, t in {trange}")
    if not all(bool(torch.isfinite(c["loss"])) for c in rec.align):
        raise SystemExit("[check] FAIL: non-finite alignment loss")
    _say(f"[check] {kind} --arm {arm}: x0_pred agrees with the host's own denoising loss at every step "
         f"(mean (x0_pred - x0)^2 = c(t) * loss, max rel. error {check_x0_against_loss(kind, rec):.1e})")
    if arm == "all-heads":
        check_all_heads(kind, rec)
    if arm == "ddp":
        check_ranks(kind, rec)
        check_resume(kind, rec, out_dir)
    elif _rank() == 0:
        reload_checkpoint(kind, out_dir)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_all_heads(kind: str, rec: Recorder) -> None:
    cfg = rec.align[0]["module"].config
    seen = [c["metrics"] for c in rec.align]
    got = [i + 1 for i, m in enumerate(seen) if "rewards/perceptual/mean" in m]
    want = [i + 1 for i in range(len(seen)) if i % cfg.perceptual_every == 0]
    if got != want or not all("loss_heads" in m and "rewards/decodability/mean" in m for m in seen):
        raise SystemExit(f"[check] FAIL: {kind}: heads missing: perceptual at steps {got} (expected {want}); metrics {seen[0]}")
    _say(f"[check] {kind} --arm all-heads: perceptual reward (SD-VAE decoder, LPIPS-VGG) at steps {got}, "
         f"decodability reward and head loss at every step, sample weights on (sample_weight={cfg.sample_weight}); "
         f"metrics: {', '.join(seen[0])}")


def _state(module) -> dict:
    return {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in module.state_dict().items()}


def check_ranks(kind: str, rec: Recorder) -> None:
    """The alignment module's whole state (running statistics, step, parameters) on both ranks."""
    import torch.distributed as dist

    mine = _state(rec.align[-1]["module"])
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    if _rank() != 0:
        return
    bad = []
    for k, v in states[0].items():
        for other in states[1:]:
            w = other[k]
            if k == "_extra_state":  # the Gaussian noise seed is drawn per rank (the rank is hashed in too)
                v, w = v["step"], w["step"]
            same = torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w
            if not same:
                bad.append(k)
    stats = [k for k in mine if k.startswith("normalizer.")]
    count = float(mine["normalizer.count"].sum()) if "normalizer.count" in mine else float("nan")
    if bad:
        raise SystemExit(f"[check] FAIL: {kind}: alignment state differs across ranks: {bad}")
    _say(f"[check] {kind} --arm ddp: alignment state equal on both ranks after {len(rec.align)} steps "
         f"({len(mine)} entries: running statistics {stats}, {count:.0f} samples counted = steps x global batch; "
         f"step {mine['_extra_state']['step']}; projector/decodability parameters)")


def _checkpoints(out_dir: str) -> list:
    ckpts = []
    for root, _dirs, files in os.walk(out_dir):
        ckpts += [os.path.join(root, f) for f in files if f.endswith(".pt")]
    if not ckpts:
        raise SystemExit(f"[check] FAIL: no checkpoint written under {out_dir}")
    return sorted(ckpts)


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def host_model(kind: str) -> nn.Module:
    """A fresh model as each repository's sampling script builds it."""
    if kind == "repa":  # as generate.py: SiT_models[...](..., z_dims, encoder_depth)
        from models.sit import SiT_models

        return SiT_models["SiT-B/2"](input_size=RES // 8, num_classes=1000, use_cfg=True, z_dims=[384],
                                     encoder_depth=2, fused_attn=True, qk_norm=False)
    import models as host_models

    table = host_models.SiT_models if kind == "sit" else host_models.DiT_models
    return table[f"{'SiT' if kind == 'sit' else 'DiT'}-S/2"](input_size=RES // 8, num_classes=1000)


def reload_checkpoint(kind: str, out_dir: str) -> None:
    path = _checkpoints(out_dir)[-1]
    ckpt = _load(path)
    model = host_model(kind)
    if kind == "repa":  # generate.py: load_state_dict(ckpt['ema'])
        model.load_state_dict(ckpt["ema"])
    else:  # sample.py: find_model(path) returns ckpt['ema']; load_state_dict strictly
        from download import find_model

        # torch >= 2.6 loads weights_only by default; the repositories' checkpoints hold argparse args
        with torch.serialization.safe_globals([argparse.Namespace]):
            model.load_state_dict(find_model(path))
    extra = sorted(k for k in ckpt if k not in ("model", "ema", "opt", "args", "steps"))
    print(f"[check] {kind}: checkpoint {os.path.basename(path)} reloads strictly from 'ema' as the "
          f"sampling script does; extra entries {extra}", flush=True)


def _same(name: str, a: torch.Tensor, b: torch.Tensor, rows: list) -> None:
    exact = torch.equal(a, b)
    rows.append(f"{name} {'identical' if exact else f'max diff {float((a - b).abs().max()):.1e}'}")
    if not exact and not torch.allclose(a, b, rtol=1e-6, atol=1e-7):
        raise SystemExit(f"[check] FAIL: resumed {name} differs: {a.flatten()[:4].tolist()} vs {b.flatten()[:4].tolist()}")


def check_resume(kind: str, rec: Recorder, out_dir: str) -> None:
    """Reload model and alignment module strictly from the step-3 checkpoint; replay step 4 with its random state."""
    from vrpo_loss import VRPOAlignment
    from vrpo_loss.hooks import FeatureTap
    from vrpo_loss.hosts import config_from_args

    path = [p for p in _checkpoints(out_dir) if os.path.basename(p) == f"{DDP_CKPT:07d}.pt"][0]
    ckpt = _load(path)
    model = host_model(kind)
    model.load_state_dict(ckpt["model"])  # strict
    model.train()
    live = rec.align[DDP_CKPT]["module"].config
    align = VRPOAlignment(config_from_args(ckpt["args"], hidden_dim=live.hidden_dim, target_dims=live.target_dims))
    align.load_state_dict(ckpt["align"])  # strict
    align.train()
    host, call = rec.host[DDP_CKPT], rec.align[DDP_CKPT]  # the step after the checkpoint
    rows, rec.on = [], False
    torch.set_rng_state(host["rng"])
    if kind == "repa":
        live_align, host["this"].align = host["this"].align, align
        denoise, proj = rec.host_loss(host["this"], model, *host["args"], **host["kwargs"])
        host["this"].align = live_align
        _same("denoising loss", denoise.detach(), host["out"][0], rows)
        _same("alignment loss", proj.detach(), call["loss"], rows)
    else:
        tap = FeatureTap(model, depth=ckpt["args"].encoder_depth)
        out = rec.host_loss(host["this"], model, *host["args"], **host["kwargs"])
        _same("denoising loss", out["loss"].detach(), host["out"]["loss"], rows)
        features = tap.pop()
        _same("tapped features", features.detach(), call["features"], rows)
        got = align(features, call["targets"], t=call["t"], denoise_loss=out["loss"].detach(), x0_pred=call["x0_pred"], x0=call["x0"])
        _same("alignment loss", got.loss.detach(), call["loss"], rows)
        _same("alignment per_sample", got.per_sample.detach(), call["per_sample"], rows)
    print(f"[check] {kind} --arm ddp rank {_rank()}: model and alignment module reloaded strictly from "
          f"{os.path.basename(path)}; step {DDP_CKPT + 1} replayed: " + ", ".join(rows), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["repa", "sit", "dit"])
    p.add_argument("repo", help="a checkout with the patch applied")
    p.add_argument("--arm", choices=sorted(ARMS), default="vrpo",
                   help="repa / vrpo: the A/B arms; all-heads: every reward head on; ddp: the two-process checks "
                        "(launch with torchrun --nproc_per_node 2, or accelerate launch for REPA)")
    p.add_argument("--work", default=None, help="scratch directory (default: a new temporary one)")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix=f"vrpo-check-{a.kind}-")
    run(a.kind, a.repo, a.arm, os.path.abspath(work))
    _say(f"[check] {a.kind} --arm {a.arm}: OK")


if __name__ == "__main__":
    main()
