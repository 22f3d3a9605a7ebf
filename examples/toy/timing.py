"""Wall time per training step of each arm, measured fairly on a shared or noisy machine.

The arms are stepped round-robin (one step of each in turn), so a change in machine load hits every
arm alike, and the median over steps is reported. Uses the benchmark's model and batch sizes, with
random encoder targets (the cost does not depend on their values).

    python examples/toy/timing.py --arms none repa vrpo "vrpo:policy=gaussian,group_size=8" --steps 40
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model import ToySiT  # noqa: E402
from run import SETTING  # noqa: E402
from train import Arm, build_alignment  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", nargs="+", default=["none", "repa", "vrpo"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=SETTING["batch"])
    p.add_argument("--image-size", type=int, default=SETTING["image_size"])
    p.add_argument("--patch", type=int, default=SETTING["patch"])
    p.add_argument("--dim", type=int, default=SETTING["dim"])
    p.add_argument("--depth", type=int, default=SETTING["depth"])
    p.add_argument("--projector-dim", type=int, default=SETTING["projector_dim"])
    p.add_argument("--target-dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the timings here as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    runs = []
    for spec in a.arms:
        arm = Arm.parse(spec, {"repa": 1.0, "vrpo": 1.0})
        model = ToySiT(image_size=a.image_size, patch=a.patch, dim=a.dim, depth=a.depth)
        align = build_alignment(arm, a.dim, a.target_dim, a.projector_dim)
        params = list(model.parameters()) + (list(align.parameters()) if align is not None else [])
        runs.append((arm, model, align, torch.optim.AdamW(params, lr=1e-4), []))
    x, y = torch.randn(a.batch, 1, a.image_size, a.image_size), torch.randint(0, 10, (a.batch,))
    feats = torch.randn(a.batch, (a.image_size // a.patch) ** 2, a.target_dim).relu()
    for i in range(a.warmup + a.steps):
        for arm, model, align, opt, times in runs:
            tic = time.perf_counter()
            t = torch.rand(a.batch)
            eps = torch.randn_like(x)
            tb = t.view(-1, 1, 1, 1)
            v, h = model((1 - tb) * x + tb * eps, t, y)
            denoise = ((v - (eps - x)) ** 2).flatten(1).mean(1)
            loss = denoise.mean()
            if align is not None:
                loss = loss + arm.coeff * align(h, feats, t=t, denoise_loss=denoise.detach()).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= a.warmup:
                times.append(time.perf_counter() - tic)
    base = float(np.median(runs[0][4]))
    rows = ["| arm | ms/step (median) | IQR | relative to first |", "|---|---|---|---|"]
    result = {}
    for arm, *_, times in runs:
        ms = 1000 * np.array(times)
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        result[arm.label] = {"median_ms": med, "q1_ms": q1, "q3_ms": q3}
        rows.append(f"| `{arm.label}` | {med:.0f} | {q1:.0f}-{q3:.0f} | {med / (1000 * base):.2f}x |")
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}), {a.threads} threads"
    text = "\n".join(rows) + f"\n\nBatch {a.batch}, {a.steps} steps per arm round-robin after {a.warmup} warm-up; {machine}.\n"
    print(text)
    if a.out:
        json.dump({"machine": machine, "args": vars(a), "timings": result}, open(a.out, "w"), indent=1)
    return result


if __name__ == "__main__":
    main()
