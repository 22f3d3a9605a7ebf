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

Afterwards it reloads the saved checkpoint the way each repository's sampling script does
(strictly, from the ``ema`` entry), and prints the alignment losses it saw.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import socket
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RES = 256  # the repositories only accept 256 or 512
STEPS = 3
BATCH = 2


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


def _install_stubs() -> None:
    try:  # import before the stubs exist, so its "is wandb installed?" probes see the truth
        import accelerate  # noqa: F401
    except ImportError:
        pass
    try:
        import diffusers.models  # noqa: F401

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
    ],
    "dit": [
        ('assert torch.cuda.is_available(), "Training currently requires at least one GPU."', "pass"),
        ('dist.init_process_group("nccl")', 'dist.init_process_group("gloo")'),
        ("device = rank % torch.cuda.device_count()", 'device = torch.device("cpu")'),
        ("torch.cuda.set_device(device)", "pass"),
        ("device_ids=[rank]", "device_ids=None"),
        ("torch.cuda.synchronize()", "pass"),
    ],
    "repa": [
        ("log_with=args.report_to", "log_with=None"),
        ("global_step == 1 or", "False and"),  # skip the 50-step sampling of 64 images at step 1
        ('"model": model.module.state_dict()', '"model": accelerator.unwrap_model(model).state_dict()'),
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_alignment_calls():
    import vrpo_loss

    seen = []
    cls = vrpo_loss.VRPOAlignment
    orig = cls.forward

    def forward(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        t = kwargs.get("t")
        seen.append((float(out.loss.detach()), tuple(out.per_sample.shape), None if t is None else (float(t.min()), float(t.max()))))
        return out

    cls.forward = forward
    return seen, vrpo_loss


def run(kind: str, repo: str, alignment: str, work: str) -> None:
    repo = os.path.abspath(repo)
    os.chdir(repo)
    sys.path.insert(0, repo)
    torch.manual_seed(0)
    _install_stubs()
    seen, vrpo_loss = _record_alignment_calls()
    out_dir = os.path.join(work, f"out-{alignment}")
    common = ["--alignment", alignment]

    if kind == "repa":
        data = os.path.join(work, "data")
        if not os.path.isdir(data):
            make_repa_data(data, STEPS * BATCH)
        torch.hub.load = lambda repo_or_dir, model, *a, **k: HubDINOv2(model)
        argv = [
            "--exp-name", "check", "--output-dir", out_dir, "--data-dir", data, "--model", "SiT-B/2",  # REPA's SiT-S/* do not build (hidden 384, decoder 768)
            "--enc-type", "dinov2-vit-s", "--encoder-depth", "2", "--batch-size", str(BATCH),
            "--max-train-steps", str(STEPS), "--checkpointing-steps", str(STEPS),
            "--sampling-steps", "1000000", "--mixed-precision", "no", "--num-workers", "0",
            "--resolution", str(RES), "--report-to", "none",
        ]
    else:
        data = os.path.join(work, "data")
        if not os.path.isdir(data):
            make_imagefolder(data, STEPS * BATCH)
        enc_ckpt = os.path.join(work, "dinov2_vits14_random.pth")
        if not os.path.isfile(enc_ckpt):
            torch.save(_tiny_dinov2().state_dict(), enc_ckpt)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0", ENTITY="none", PROJECT="none")
        argv = [
            "--data-path", data, "--results-dir", out_dir, "--model", ('DiT' if kind == 'dit' else 'SiT') + '-S/2',
            "--image-size", str(RES), "--epochs", "1", "--global-batch-size", str(BATCH),
            "--num-workers", "0", "--log-every", "1", "--ckpt-every", str(STEPS),
            "--enc-type", "dinov2-vit-s", "--enc-checkpoint", enc_ckpt, "--encoder-depth", "2",
        ]
        if kind == "sit":
            argv += ["--sample-every", "1000000"]
        # load_encoder builds the full-depth architecture; the random checkpoint has 2 blocks.
        import vrpo_loss.encoders as enc_mod

        real = enc_mod.load_encoder
        enc_mod.load_encoder = lambda *a, **k: real(*a, depth=2, **k)
    argv += common

    src = open(os.path.join(repo, "train.py")).read()
    for old, new in CPU_SHIMS[kind]:
        src = _sub(src, old, new)
    sys.argv = ["train.py"] + argv
    print(f"[check] {kind}: vrpo_loss from {os.path.dirname(vrpo_loss.__file__)}", flush=True)
    print(f"[check] {kind}: python train.py {' '.join(argv)}", flush=True)
    code = compile(src, os.path.join(repo, "train.py"), "exec")
    exec(code, {"__name__": "__main__", "__file__": os.path.join(repo, "train.py")})
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

    if len(seen) != STEPS:
        raise SystemExit(f"[check] FAIL: expected {STEPS} alignment calls, saw {len(seen)}")
    for i, (loss, shape, trange) in enumerate(seen, 1):
        print(f"[check] {kind} --alignment {alignment}: step {i} alignment loss {loss:+.4f}, per_sample {shape}, t in {trange}")
    if not all(np.isfinite(loss) for loss, _, _ in seen):
        raise SystemExit("[check] FAIL: non-finite alignment loss")
    reload_checkpoint(kind, repo, out_dir)


def reload_checkpoint(kind: str, repo: str, out_dir: str) -> None:
    ckpts = []
    for root, _dirs, files in os.walk(out_dir):
        ckpts += [os.path.join(root, f) for f in files if f.endswith(".pt")]
    if not ckpts:
        raise SystemExit(f"[check] FAIL: no checkpoint written under {out_dir}")
    path = sorted(ckpts)[-1]
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if kind == "repa":  # as generate.py: SiT_models[...](..., z_dims, encoder_depth); load_state_dict(ckpt['ema'])
        from models.sit import SiT_models

        model = SiT_models["SiT-B/2"](input_size=RES // 8, num_classes=1000, use_cfg=True, z_dims=[384],
                                      encoder_depth=2, fused_attn=True, qk_norm=False)
        model.load_state_dict(ckpt["ema"])
    else:  # as sample.py: find_model(path) returns ckpt['ema']; load_state_dict strictly
        import models as host_models
        from download import find_model

        table = host_models.SiT_models if kind == "sit" else host_models.DiT_models
        model = table[f"{'SiT' if kind == 'sit' else 'DiT'}-S/2"](input_size=RES // 8, num_classes=1000)
        # torch >= 2.6 loads weights_only by default; the repositories' checkpoints hold argparse args
        with torch.serialization.safe_globals([argparse.Namespace]):
            model.load_state_dict(find_model(path))
    extra = sorted(k for k in ckpt if k not in ("model", "ema", "opt", "args", "steps"))
    print(f"[check] {kind}: checkpoint {os.path.basename(path)} reloads strictly from 'ema' as the "
          f"sampling script does; extra entries {extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["repa", "sit", "dit"])
    p.add_argument("repo", help="a checkout with the patch applied")
    p.add_argument("--alignment", choices=["repa", "vrpo"], default="vrpo")
    p.add_argument("--work", default=None, help="scratch directory (default: a new temporary one)")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix=f"vrpo-check-{a.kind}-")
    run(a.kind, a.repo, a.alignment, os.path.abspath(work))
    print(f"[check] {a.kind} --alignment {a.alignment}: OK")


if __name__ == "__main__":
    main()
