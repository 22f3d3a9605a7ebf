"""The toy benchmark: does VRPO beat REPA on a small class-conditional SiT trained on sklearn digits?

    python examples/toy/run.py                      # default: none / REPA / VRPO, 3 seeds x 300 steps (~18 min on a 2-core CPU)
    python examples/toy/run.py --full               # longer runs (GPU or patience)
    python examples/toy/run.py --arms none repa@1 repa@2 "vrpo@0.5:policy=correspondence,tau=0.05" --seeds 0

An arm is ``none``, ``repa[@coeff]`` or ``vrpo[@coeff][:VRPOConfig kwargs]``; a bare ``repa`` or
``vrpo`` takes ``--repa-coeff`` / ``--vrpo-coeff`` and ``--vrpo`` kwargs. Every (arm, seed) run is
stored under ``<out>/runs/`` and reused when the command is repeated with the same settings.
Writes ``results.json`` (every number), ``results.md`` (the table), plots and sample grids to --out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)  # the package, when it is not installed

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data import encoder_features, load_digits_16  # noqa: E402
from evaluate import Evaluator  # noqa: E402
from train import Arm, parse_kv, train_run  # noqa: E402

PRESETS = {
    "default": dict(steps=300, batch=64, eval_at=(100, 200, 300), eval_samples=300, sample_steps=10, ref_step=200,
                    workers=2),
    "full": dict(steps=2000, batch=128, eval_at=(250, 500, 1000, 1500, 2000), eval_samples=450,
                 sample_steps=20, ref_step=1000, workers=1),
}
# the arms' chosen settings (docs/ablation.md)
DEFAULT_ARMS = ["none", "repa", "vrpo"]
DEFAULT_REPA_COEFF = 4.0  # REPA's best of 0.5, 1, 2, 4 at the early budget
DEFAULT_VRPO_COEFF = 1.0  # correspondence policy: best of 0.5, 1, 2; pushes ~4.8x REPA per unit
DEFAULT_VRPO_KWARGS = "policy=correspondence,tau=0.1"


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, help="arms to run (see module docstring)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--full", action="store_true", help="longer preset: %s" % PRESETS["full"])
    p.add_argument("--steps", type=int, help="training steps per run (overrides the preset)")
    p.add_argument("--eval-at", type=int, nargs="+", help="steps at which to evaluate")
    p.add_argument("--ref-step", type=int, help="early budget: target quality = best REPA's FD here")
    p.add_argument("--batch", type=int)
    p.add_argument("--eval-samples", type=int, help="generated samples per evaluation (10 classes)")
    p.add_argument("--sample-steps", type=int, help="ODE steps of the sampler")
    p.add_argument("--sampler", choices=("euler", "heun"), default="euler")
    p.add_argument("--coeff", type=float, help="alignment loss weight for both repa and vrpo")
    p.add_argument("--repa-coeff", type=float, default=DEFAULT_REPA_COEFF)
    p.add_argument("--vrpo-coeff", type=float, default=DEFAULT_VRPO_COEFF)
    p.add_argument("--vrpo", default=DEFAULT_VRPO_KWARGS, help="VRPOConfig kwargs for a bare 'vrpo' arm, "
                   "e.g. policy=correspondence,tau=0.1")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--align-depth", type=int, default=2, help="align the tokens after this block")
    p.add_argument("--projector-dim", type=int, default=512, help="hidden width of REPA's projector MLP")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--encoder", choices=("vgg", "dinov2"), default="vgg")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all")
    p.add_argument("--workers", type=int, help="runs trained in parallel processes (threads split "
                   "between them; on a small CPU two single-thread workers beat one two-thread process)")
    p.add_argument("--log-every", type=int, default=5, help="average out.metrics every this many steps")
    p.add_argument("--diag-every", type=int, default=25, help="measure the policy term's push on the "
                   "diffusion tokens against REPA's every this many steps (0: never)")
    p.add_argument("--cache-dir", default=os.path.join(ROOT, "cache", "toy"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "toy"))
    p.add_argument("--title", default="toy benchmark")
    a = p.parse_args(argv)
    preset = PRESETS["full" if a.full else "default"]
    for k, v in preset.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    a.eval_at = tuple(sorted(set(a.eval_at) | {a.steps}))
    if a.coeff is not None:
        a.repa_coeff = a.vrpo_coeff = a.coeff
    return a


def run_key(arm: Arm, seed: int, a) -> str:
    """Runs are reused only when every setting that changes their numbers is the same."""
    sig = json.dumps([arm.label, seed, a.steps, a.batch, list(a.eval_at), a.eval_samples, a.sample_steps,
                      a.sampler, a.lr, a.dim, a.depth, a.heads, a.align_depth, a.projector_dim, a.encoder])
    return hashlib.sha1(sig.encode()).hexdigest()[:10]


def safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "@.=-" else "_" for c in label)


def steps_to_reach(steps, fds, target):
    """First step at which the curve reaches ``target`` (linear in log FD between evaluations)."""
    prev = None
    for s, f in zip(steps, fds):
        if f <= target:
            if prev is None:
                return float(s)  # already there at the first evaluation (an upper bound)
            (s0, f0) = prev
            w = (math.log(f0) - math.log(target)) / (math.log(f0) - math.log(f))
            return s0 + w * (s - s0)
        prev = (s, f)
    return None


def summarise(records, arms, a):
    summary = {}
    for arm in arms:
        recs = [r for r in records if r["arm"] == arm.label]
        steps = [e["step"] for e in recs[0]["evals"]]
        fd = np.array([[e["fd"] for e in r["evals"]] for r in recs])
        acc = np.array([[e["acc"] for e in r["evals"]] for r in recs])
        sd = lambda m: (m.std(0, ddof=1) if len(m) > 1 else np.zeros(m.shape[1])).tolist()  # noqa: E731
        metrics = {}
        for k in recs[0]["metrics"]:
            metrics[k] = float(np.mean([r["metrics"][k] for r in recs]))
        summary[arm.label] = dict(mode=arm.mode, coeff=arm.coeff, kwargs=arm.kwargs, seeds=[r["seed"] for r in recs],
                                  steps=steps, fd_mean=fd.mean(0).tolist(), fd_sd=sd(fd), acc_mean=acc.mean(0).tolist(),
                                  acc_sd=sd(acc), step_ms=float(np.mean([r["step_ms"] for r in recs])), metrics=metrics)
    repa = [k for k, s in summary.items() if s["mode"] == "repa" and a.ref_step in s["steps"]]
    if repa:
        best = min(repa, key=lambda k: summary[k]["fd_mean"][summary[k]["steps"].index(a.ref_step)])
        target = summary[best]["fd_mean"][summary[best]["steps"].index(a.ref_step)]
        for s in summary.values():
            n = steps_to_reach(s["steps"], s["fd_mean"], target)
            s["steps_to_target"] = n
            s["speedup_vs_best_repa"] = (a.ref_step / n) if n else None
        return summary, dict(best_repa=best, ref_step=a.ref_step, target_fd=target)
    return summary, None


DIAG_COLUMNS = [("signal_frac", "signal frac."), ("push/policy_vs_repa", "policy push / REPA"),
                ("push/policy_cos", "policy-REPA cos on h")]


def markdown(summary, ref, a, floor, clf_acc, wall, records):
    steps = next(iter(summary.values()))["steps"]
    head = ["arm"] + [f"FD @{s}" for s in steps] + [f"acc @{steps[-1]}", "ms/step"]
    if ref:
        head += [f"steps to FD {ref['target_fd']:.0f}", "speed-up"]
    diag_cols = [(k, name) for k, name in DIAG_COLUMNS if any(k in s["metrics"] for s in summary.values())]
    head += [name for _, name in diag_cols]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summary.items():
        one = len(s["seeds"]) == 1  # no spread to show
        cells = [f"`{label}`"] + [f"{m:.0f}" if one else f"{m:.0f} ± {d:.0f}" for m, d in zip(s["fd_mean"], s["fd_sd"])]
        cells += [f"{s['acc_mean'][-1]:.2f}" if one else f"{s['acc_mean'][-1]:.2f} ± {s['acc_sd'][-1]:.2f}",
                  f"{s['step_ms']:.0f}"]
        if ref:
            n = s["steps_to_target"]
            cells += [f"{n:.0f}" if n else f"> {steps[-1]}",
                      f"{s['speedup_vs_best_repa']:.2f}x" if s["speedup_vs_best_repa"] else "-"]
        for k, _ in diag_cols:
            v = s["metrics"].get(k)
            cells += [f"{v:.2f}" if v is not None else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    seeds = sorted({x for s in summary.values() for x in s["seeds"]})
    note = [f"\nFD: Frechet distance of {a.eval_samples} class-conditional samples ({a.sampler}, {a.sample_steps} "
            f"steps) to the 450 held-out digits in the evaluation classifier's 64-d features (real-vs-real floor "
            f"{floor:.1f}; classifier test accuracy {clf_acc:.3f}); mean ± sd over seeds {seeds}; acc: that "
            f"classifier's accuracy on the samples; ms/step: training only (no evaluation)."]
    if ref:
        note.append(f"Target: `{ref['best_repa']}` (best REPA) at step {ref['ref_step']}, FD {ref['target_fd']:.1f}; "
                    "steps to reach it interpolate log FD between evaluations; speed-up = "
                    f"{ref['ref_step']} / steps.")
    if diag_cols:
        note.append("signal frac.: `out.metrics['signal_frac']`, cosine of the policy term's gradient on the projected "
                    "tokens with REPA's; policy push / REPA and policy-REPA cos on h: norm ratio and cosine of the policy "
                    "term's gradient on the diffusion tokens against REPA's loss gradient (run means).")
    run_s = sum(r.get("wall_s", 0.0) for r in records)
    note.append(f"Batch {a.batch}, lr {a.lr}, encoder {a.encoder}; wall time of this invocation {wall / 60:.1f} min"
                + (f", of its runs together {run_s / 60:.1f} min" if run_s else "") + ".")
    return "\n".join(rows) + "\n" + "\n".join(note) + "\n"


def plots(summary, a, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summary)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2 + 0.16 * ((n + 1) // 2)))
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20")
    style = {"none": dict(ls="--", marker="x"), "repa": dict(ls="-", marker="o"), "vrpo": dict(ls="-.", marker="s")}
    for i, (label, s) in enumerate(summary.items()):
        kw = dict(color="black" if s["mode"] == "none" else colors(i % colors.N), ms=4, **style[s["mode"]])
        st, m, d = np.array(s["steps"]), np.array(s["fd_mean"]), np.array(s["fd_sd"])
        wall = st * s["step_ms"] / 1000
        for ax, xs in ((axes[0], st), (axes[1], wall)):
            ax.plot(xs, m, label=label if ax is axes[0] else None, **kw)
            ax.fill_between(xs, np.maximum(m - d, 1e-3), m + d, alpha=0.12, color=kw["color"])
        am, ad = np.array(s["acc_mean"]), np.array(s["acc_sd"])
        axes[2].plot(st, am, **kw)
        axes[2].fill_between(st, am - ad, am + ad, alpha=0.12, color=kw["color"])
    where = "GPU" if torch.cuda.is_available() else "CPU, in-run"
    for ax, xl, yl in ((axes[0], "training steps", "FD (lower is better)"),
                       (axes[1], f"training wall time (s, {where})", "FD"),
                       (axes[2], "training steps", "classifier accuracy on samples")):
        ax.set_xlabel(xl), ax.set_ylabel(yl), ax.grid(alpha=0.3)
    axes[0].set_yscale("log"), axes[1].set_yscale("log")
    fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle(a.title)
    fig.tight_layout(rect=(0, 0.04 * ((n + 1) // 2) / (1 + 0.04 * ((n + 1) // 2)) + 0.02, 1, 1))
    fig.savefig(os.path.join(out, "quality.png"), dpi=80)
    plt.close(fig)


def _worker(a, job, position):
    """One (arm, seed) run in a worker process (data, features and classifier come from the cache)."""
    from tqdm import tqdm

    torch.set_num_threads(max(1, a.threads // a.workers))
    arm, seed, path, grid = job
    data = load_digits_16()
    feats = encoder_features(data.x_train, a.encoder, a.cache_dir, progress=False)
    evaluator = Evaluator(data, a.cache_dir, n_per_class=a.eval_samples // 10)
    with tqdm(total=a.steps, desc=f"{arm.label[:28]} s{seed}", unit="step", position=position, leave=False) as bar:
        rec = train_run(arm, seed, data, feats, evaluator, a, grid_path=grid, progress=bar)
    json.dump(rec, open(path, "w"), indent=1)
    return rec


def main(argv=None):
    a = get_args(argv)
    torch.set_num_threads(a.threads)
    from tqdm import tqdm

    defaults_c = {"repa": a.repa_coeff, "vrpo": a.vrpo_coeff}
    arms = [Arm.parse(s, defaults_c, parse_kv(a.vrpo)) for s in a.arms]
    os.makedirs(os.path.join(a.out, "runs"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "grids"), exist_ok=True)
    t0 = time.time()
    data = load_digits_16()
    feats = encoder_features(data.x_train, a.encoder, a.cache_dir)
    evaluator = Evaluator(data, a.cache_dir, n_per_class=a.eval_samples // 10)
    records = []
    todo = []
    for seed in a.seeds:
        for arm in arms:
            path = os.path.join(a.out, "runs", f"{safe(arm.label)}_s{seed}_{run_key(arm, seed, a)}.json")
            if os.path.exists(path):
                records.append(json.load(open(path)))
            else:
                todo.append((arm, seed, path))
    jobs = [(arm, seed, path, os.path.join(a.out, "grids", f"{safe(arm.label)}.png") if seed == a.seeds[0] else None)
            for arm, seed, path in todo]
    if a.workers > 1 and len(jobs) > 1:
        # independent runs in parallel processes, threads split between them
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_worker, a, job, 1 + i % a.workers) for i, job in enumerate(jobs)]
            for f in tqdm(as_completed(futs), total=len(futs), desc=f"{len(jobs)} runs, {a.workers} workers",
                          unit="run", position=0):
                records.append(f.result())
    else:
        bar = tqdm(total=len(todo) * a.steps, desc=f"{len(todo)} runs", unit="step", smoothing=0.05)
        for arm, seed, path, grid in jobs:
            rec = train_run(arm, seed, data, feats, evaluator, a, grid_path=grid, progress=bar)
            json.dump(rec, open(path, "w"), indent=1)
            records.append(rec)
        bar.close()
    wall = time.time() - t0
    summary, ref = summarise(records, arms, a)
    md = markdown(summary, ref, a, evaluator.floor, evaluator.test_acc, wall, records)
    cmd = "python examples/toy/run.py " + " ".join(f'"{x}"' if any(c in x for c in " :,") else x
                                                     for x in (argv if argv is not None else sys.argv[1:]))
    machine = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
               else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {a.threads} threads"
               + (f" in {a.workers} worker processes" if a.workers > 1 and len(todo) > 1 else ""))
    header = f"# {a.title}\n\nCommand: `{cmd}`  \nMachine: {machine}; torch {torch.__version__}\n\n"
    open(os.path.join(a.out, "results.md"), "w").write(header + md)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()
           if k not in ("out", "cache_dir", "workers", "threads")}
    json.dump(dict(command=cmd, machine=machine, config=cfg, floor=evaluator.floor, classifier_test_acc=evaluator.test_acc,
                   wall_s=wall, reference=ref, summary=summary, runs=records),
              open(os.path.join(a.out, "results.json"), "w"), indent=1)
    plots(summary, a, a.out)
    print(header + md)
    return summary


if __name__ == "__main__":
    main()
