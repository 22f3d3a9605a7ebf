"""The toy benchmark: a small class-conditional SiT, alignment losses as arms, two settings.

``--setting glyphs`` (the default): 26 classes of characters rendered from ~100 typefaces (held-out
faces for the evaluator), 32x32, trained in the 8x8x4 latent space of a tiny ``AutoencoderKL``
(64 tokens); the target encoder sees the 32x32 glyph. ``--setting digits``: sklearn's 8x8 digits in
pixel space (16 tokens), the first setting, kept as the record of what it measured.

    python examples/toy/run.py                       # quick: none / REPA / VRPO, one seed, 300 steps (a demo)
    python examples/toy/run.py --preset standard     # the finals: every arm, 5 paired seeds (~2 h a call; rerun continues)
    python examples/toy/run.py --preset gpu          # every arm, 8 seeds, a larger model, parallel runs on one GPU
    python examples/toy/run.py --preset standard --setting digits   # the digits finals (aggregates the cache)
    python examples/toy/run.py --arms none repa@2 "repa@2:time_weight=sigmoid" "vrpo@1:tau=0.05" --seeds 0 1

An arm is a name (``none``, ``repa``, ``vrpo``, ``irepa``, ``va-repa``, ``haste``, ``sara``,
``vrpo-zscore``: see ``named_arms``) or a spec ``none`` | ``repa[@coeff][:VRPOConfig kwargs]`` |
``vrpo[@coeff][:VRPOConfig kwargs]``; ``stop_step`` in (0, 1) is a fraction of the run's steps.
Every (arm, seed) run is stored under ``<out>/runs/`` and reused when the command is repeated with
the same settings, so a rerun only aggregates. Writes ``results.json`` (every number), ``results.md``
(the table), ``quality.png`` (FD curves with 95% bands), ``forest.png`` (steps ratios) to --out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)  # the package, when it is not installed

import torch  # noqa: E402

import report  # noqa: E402
from data import encoder_features, load_digits_16, pool_tokens, standardise_channels  # noqa: E402
from evaluate import Evaluator  # noqa: E402
from stats import steps_to_reach  # noqa: E402,F401  (re-exported)
from train import Arm, build_alignment, parse_kv, train_run  # noqa: E402

# The settings (docs/benchmark.md, "Calibration"), each with its arms' coefficients (docs/ablation.md: the sweeps).
SETTINGS = {
    # native 8x8 digits, 2x2 patches (a 4x4 token grid), pixel space;
    # REPA 8: best mean FD at the early budget of 2, 4, 8, 16; VRPO 2: of 0.5, 1, 2, 4 (seeds 0, 1)
    "digits": dict(image_size=8, patch=2, dim=64, depth=4, heads=4, align_depth=2, projector_dim=128, batch=128,
                   lr=4e-3, lr_schedule="constant", ema=0.99, steps=1200,
                   eval_at=(100, 200, 300, 400, 600, 800, 1000, 1200), ref_step=200,
                   eval_samples=500, sample_steps=10, sampler="euler", space="pixel", encoder="vgg",
                   repa_coeff=8.0, vrpo_coeff=2.0),
    # glyphs in the autoencoder's 8x8x4 latents, 1x1 patches (an 8x8 token grid);
    # REPA 8: best mean FD at the early budget of 2, 4, 8, 16; VRPO 1: of 0.5, 1, 2 (seeds 0, 1; results/glyphs/sweep)
    "glyphs": dict(image_size=32, patch=1, dim=96, depth=4, heads=4, align_depth=2, projector_dim=256, batch=64,
                   lr=2e-3, lr_schedule="constant", ema=0.99, steps=1200, eval_at=(200, 400, 600, 800, 1000, 1200),
                   ref_step=600,  # (at step 400 the samples' class accuracy is 0.08-0.13, barely above chance)
                   eval_samples=520, sample_steps=16, sampler="euler", space="latent", encoder="vgg",
                   repa_coeff=8.0, vrpo_coeff=1.0),
}
SETTING = SETTINGS["digits"]  # the first setting's numbers, under its old name
VRPO_KWARGS = "policy=correspondence,tau=0.1"
HASTE_STOP = 0.5  # fraction of the run after which HASTE's alignment is off
SARA_STRUCTURE = 1.0  # structure_coeff of the SARA-style arm
FINAL_ARMS = ["none", "repa", "vrpo", "irepa", "va-repa", "haste", "sara", "vrpo-zscore", "vrpo-agreement",
              "vrpo-achievability", "vrpo-terminate"]
# the coefficient sweeps and the global target statistics, run beside the finals where a GPU affords them
GPU_SWEEP_ARMS = ["repa@4", "repa@16", "vrpo@0.5:policy=correspondence,tau=0.1", "vrpo@2:policy=correspondence,tau=0.1",
                  "repa@8:target_stats=global", "vrpo@1:policy=correspondence,tau=0.1,target_stats=global"]
STANDARD_BUDGET = 105  # minutes; a run of the standard setting takes 8-12 on one of two busy cores
PRESETS = {
    # a demo: one seed (digits: the first 600 steps); three workers on two cores end together, where two would
    # leave the third run alone on one core
    "quick": dict(arms=["none", "repa", "vrpo"], seeds=[0], workers=3, threads=2),
    # the finals: 55 runs, about 4.8 h of two cores; one invocation starts no run after STANDARD_BUDGET minutes
    # (so it ends within about 120), and the next invocation of the same command continues from the cache
    "standard": dict(arms=FINAL_ARMS, seeds=[0, 1, 2, 3, 4], workers=2, threads=2, time_budget=STANDARD_BUDGET),
    # one H200: many runs side by side, the model scaled up (glyphs: width 192, depth 6)
    "gpu": dict(arms=FINAL_ARMS + GPU_SWEEP_ARMS, seeds=list(range(8)), workers=16, threads=16, device="cuda",
                time_budget=5.5),
}
# what a preset changes in a setting: the glyphs' demo is shorter and takes the cheaper encoder tap (its features
# cost 2 min on a fresh machine, relu4_3's 6); the gpu preset scales the model up
PRESET_SETTING = {
    ("quick", "digits"): dict(steps=600, eval_at=(100, 200, 300, 400, 600)),
    ("quick", "glyphs"): dict(steps=300, eval_at=(100, 200, 300), ref_step=200, eval_samples=260,
                              encoder="vgg-r3"),
    ("gpu", "glyphs"): dict(dim=192, depth=6, heads=6, lr=1e-3, steps=1600, eval_at=(200, 400, 600, 800, 1000, 1200, 1600)),
}


def named_arms(repa: float, vrpo: float, vrpo_kwargs: str) -> dict:
    """The finals' arms, each peer at its published setting and REPA's coefficient."""
    return {
        "none": "none",
        "repa": f"repa@{repa:g}",
        "vrpo": f"vrpo@{vrpo:g}:{vrpo_kwargs}",
        # iREPA: spatially z-scored targets, its one-conv projector, at twice REPA's coefficient (its configs: 1.0 / 0.5)
        "irepa": f"repa@{2 * repa:g}:target_norm=zscore,projector=conv",
        "va-repa": f"repa@{repa:g}:time_weight=sigmoid",  # VA-REPA: sigmoid(20 (0.7 - t)) weights
        "haste": f"repa@{repa:g}:stop_step={HASTE_STOP:g}",  # HASTE: alignment off after half the run
        "sara": f"repa@{repa:g}:structure_coeff={SARA_STRUCTURE:g}",  # SARA-style self-similarity term
        "vrpo-zscore": f"vrpo@{vrpo:g}:{vrpo_kwargs},target_norm=zscore",
        "vrpo-agreement": f"vrpo@{vrpo:g}:{vrpo_kwargs},adaptive=agreement",  # issue 11, H1: gradient agreement
        "vrpo-achievability": f"vrpo@{vrpo:g}:{vrpo_kwargs},adaptive=achievability",  # H2: running cos per bin
        "vrpo-terminate": f"vrpo@{vrpo:g}:{vrpo_kwargs},adaptive=agreement,adaptive_terminate=true",  # H3
    }


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--setting", choices=sorted(SETTINGS), default="glyphs", help="data and model (see the docstring)")
    p.add_argument("--space", choices=("latent", "pixel"), help="glyphs: train on the autoencoder's latents or on pixels")
    p.add_argument("--arms", nargs="+", help="arms to run (names or specs, see the module docstring)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--eval-at", type=int, nargs="+", help="steps at which to evaluate (the last step is added)")
    p.add_argument("--ref-step", type=int, help="early budget: target (a) is best REPA's FD here")
    p.add_argument("--batch", type=int)
    p.add_argument("--eval-samples", type=int, help="generated samples per evaluation (10 classes)")
    p.add_argument("--sample-steps", type=int, help="ODE steps of the sampler")
    p.add_argument("--sampler", choices=("euler", "heun"))
    p.add_argument("--repa-coeff", type=float, help="coefficient of the named REPA-based arms (default: the setting's)")
    p.add_argument("--vrpo-coeff", type=float, help="coefficient of the named VRPO arms (default: the setting's)")
    p.add_argument("--vrpo", default=VRPO_KWARGS, help="VRPOConfig kwargs of the named VRPO arms")
    for k in ("lr", "ema"):
        p.add_argument("--" + k, type=float)
    for k in ("image-size", "patch", "dim", "depth", "heads", "align-depth", "projector-dim"):
        p.add_argument("--" + k, type=int)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), help="learning rate over the run: constant, "
                   "or cosine decay from --lr to 0 at the last step")
    p.add_argument("--device", help="cpu or cuda (default: the preset's, else cpu)")
    p.add_argument("--encoder", choices=("vgg", "vgg-r3", "ocr", "dinov2"), help="target encoder: CRAFT's VGG16-BN at "
                   "relu4_3 of the image at 64x64 (vgg), at relu3_3 of the image at 32x32 (vgg-r3), easyocr's recognition "
                   "network english_g2 (ocr, 8x8x256), or DINOv2-B (needs its weights)")
    p.add_argument("--threads", type=int, help="CPU threads in all")
    p.add_argument("--workers", type=int, help="runs in parallel processes (threads split between them)")
    p.add_argument("--log-every", type=int, default=5, help="average out.metrics every this many steps")
    p.add_argument("--diag-every", type=int, default=25, help="measure the policy term's push against REPA's "
                   "every this many steps (0: never)")
    p.add_argument("--cache-dir", default=os.path.join(ROOT, "cache", "toy"))
    p.add_argument("--out", help="output folder (default runs/toy/<preset>)")
    p.add_argument("--time-budget", type=float, help="minutes: no run starts later than this after the command "
                   "started (runs are queued seed by seed, so whole seeds complete first); the report covers the "
                   "seeds every arm completed")
    p.add_argument("--aggregate-only", action="store_true", help="train nothing: report the cached runs, over the "
                   "seeds that every arm has")
    p.add_argument("--title", help="plot title")
    p.add_argument("--versus", help="an arm of --arms (name or spec): add a table of every arm against it "
                   "(steps to its early-budget FD, final FD), e.g. a variant against the default it would replace")
    a = p.parse_args(argv)
    setting = {**SETTINGS[a.setting], **PRESET_SETTING.get((a.preset, a.setting), {})}
    preset = {**setting, **PRESETS[a.preset]}
    if a.steps is not None and a.eval_at is None:  # a longer or shorter run: the setting's schedule, cut or extended
        a.eval_at = tuple(s for s in setting["eval_at"] if s < a.steps)
    elif a.eval_at is None and "steps" in PRESETS[a.preset]:
        a.eval_at = tuple(s for s in setting["eval_at"] if s < PRESETS[a.preset]["steps"])
    if a.ref_step is None and a.eval_at is not None and setting["ref_step"] not in set(a.eval_at) | {a.steps}:
        a.ref_step = min(a.eval_at)  # a schedule cut before the setting's early budget: its first evaluation
    for k, v in preset.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.device is None:
        a.device = "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--preset {a.preset} / --device cuda: no CUDA device here; use --preset standard on a CPU")
    a.eval_at = tuple(sorted(set(a.eval_at) | {a.steps}))
    a.redraw = len(a.seeds) > 1  # the second sample draw measures the evaluator's noise against the seeds'
    if a.ref_step not in a.eval_at:
        p.error(f"--ref-step {a.ref_step} must be one of the evaluation steps {list(a.eval_at)}")
    a.out = a.out or os.path.join(ROOT, "runs", "toy", a.preset if a.setting == "glyphs" else f"{a.setting}-{a.preset}")
    a.title = a.title or f"toy benchmark, {a.setting} ({a.preset})"
    return a


def parse_arms(a) -> list:
    names = named_arms(a.repa_coeff, a.vrpo_coeff, a.vrpo)
    arms = [Arm.parse(names.get(s, s), {"repa": a.repa_coeff, "vrpo": a.vrpo_coeff}, parse_kv(a.vrpo)) for s in a.arms]
    if getattr(a, "versus", None) and not any(a.versus in (name, arm.label) for arm, name in zip(arms, a.arms)):
        raise SystemExit(f"--versus {a.versus!r}: expected one of the arms {a.arms}; add it to --arms")
    for arm in arms:  # fail now, not in a worker: options this version of vrpo_loss does not have
        try:
            build_alignment(arm, a.dim, 512, a.projector_dim, steps=a.steps)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"arm {arm.label!r} cannot be built with this vrpo_loss: {e}")
    return arms


def run_key(arm: Arm, seed: int, a) -> str:
    """Runs are reused only when every setting that changes their numbers is the same."""
    sig = [arm.label, seed, a.steps, a.batch, list(a.eval_at), a.eval_samples, a.sample_steps, a.sampler, a.lr, a.ema,
           a.image_size, a.patch, a.dim, a.depth, a.heads, a.align_depth, a.projector_dim, a.encoder]
    sig += [a.lr_schedule] if a.lr_schedule != "constant" else []
    sig += [] if a.redraw else ["no redraw"]
    if a.setting != "digits":  # (the digits' keys stay those of the runs in its committed results)
        targets = arm.mode != "none"  # without targets, the encoder and its statistics change nothing
        sig[-1] = a.encoder if targets else None
        sig += [a.setting, a.space, "none" if targets else None]  # (an arm's target_stats is in its label)
    return hashlib.sha1(json.dumps(sig).encode()).hexdigest()[:10]


def safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "@.=-" else "_" for c in label)


def setup(a, progress=True, global_stats=False):
    """The training set in the model's space, encoder tokens on its token grid, the evaluator.

    Digits: the images at the model's resolution. Glyphs: the autoencoder's latents (``decode`` maps
    samples back to images) or the 32x32 images (``--space pixel``).
    """
    if a.setting == "digits":
        data = load_digits_16(a.image_size)
        feats = encoder_features(data.x_train, a.encoder, a.cache_dir, progress=progress)
        evaluator = Evaluator(load_digits_16(16), a.cache_dir, n_per_class=a.eval_samples // 10)
    else:
        from types import SimpleNamespace

        from autoencoder import encode_cached, train_autoencoder
        from glyphs import load_glyphs

        g = load_glyphs(a.cache_dir, progress=progress)
        evaluator = Evaluator(g, a.cache_dir, n_per_class=a.eval_samples // g.num_classes, epochs=10)
        feats = encoder_features(g.x_train, a.encoder, a.cache_dir, progress=progress)
        data = SimpleNamespace(x_train=g.x_train, y_train=g.y_train, num_classes=g.num_classes)
        if a.space == "latent":
            codec = train_autoencoder(g.x_train, a.cache_dir, progress=progress).to(a.device)
            data.x_train, data.decode = encode_cached(codec, g.x_train, a.cache_dir), codec.decode
    grid = data.x_train.shape[-1] // a.patch
    feats = pool_tokens(feats, grid)
    # an arm's target_stats=global: each encoder channel standardised over the whole training set
    return data, {"none": feats, "global": standardise_channels(feats) if global_stats else None}, evaluator


def _finished(path: str):
    """The record of a run already on disk (this cache, or another invocation on the same --out), or None."""
    return json.load(open(path)) if os.path.exists(path) else None


def _worker(a, job, position):
    """One (arm, seed) run in a worker process (data, features and classifier come from the cache)."""
    from tqdm import tqdm

    arm, seed, path = job
    if a.deadline is not None and time.time() > a.deadline:
        return None  # the time budget is spent: this run does not start
    if (rec := _finished(path)) is not None:  # another invocation on the same --out finished it meanwhile
        return rec
    torch.set_num_threads(max(1, a.threads // a.workers))
    data, feats, evaluator = setup(a, progress=False, global_stats=arm.kwargs.get("target_stats") == "global")
    with tqdm(total=a.steps, desc=f"{arm.label[:28]} s{seed}", unit="step", position=position, leave=False) as bar:
        rec = train_run(arm, seed, data, feats, evaluator, a, progress=bar)
    json.dump(rec, open(path, "w"), indent=1)
    return rec


def execute(a, arms, data, feats, evaluator):
    """Run the (arm, seed) pairs not in the cache; returns every record."""
    from tqdm import tqdm

    records, todo = [], []
    for seed in a.seeds:
        for arm in arms:
            path = os.path.join(a.out, "runs", f"{safe(arm.label)}_s{seed}_{run_key(arm, seed, a)}.json")
            rec = _finished(path)
            if rec is not None:
                records.append(rec)
            else:
                todo.append((arm, seed, path))
    if a.aggregate_only:
        return records, 0
    if a.workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_worker, a, job, 1 + i % a.workers) for i, job in enumerate(todo)]
            for f in tqdm(as_completed(futs), total=len(futs), desc=f"{len(todo)} runs, {a.workers} workers",
                          unit="run", position=0):
                if f.result() is not None:
                    records.append(f.result())
    else:
        with tqdm(total=len(todo) * a.steps, desc=f"{len(todo)} runs", unit="step", smoothing=0.05) as bar:
            for arm, seed, path in todo:
                if a.deadline is not None and time.time() > a.deadline:
                    break
                if (rec := _finished(path)) is not None:  # another invocation on the same --out finished it meanwhile
                    records.append(rec)
                    bar.update(a.steps)
                    continue
                rec = train_run(arm, seed, data, feats, evaluator, a, progress=bar)
                json.dump(rec, open(path, "w"), indent=1)
                records.append(rec)
    return records, len(todo)


def left_note(a, arms, records) -> str:
    """What the time budget left undone, and how to go on ("" when every (arm, seed) is in)."""
    left = len(arms) * len(a.seeds) - len(records)
    if left <= 0:
        return ""
    why = ("--aggregate-only" if a.aggregate_only else
           f"the {a.time_budget:g}-minute time budget" if a.time_budget else "the time budget")
    return (f"**{left} of {len(arms) * len(a.seeds)} runs not yet done** ({why}): the table covers the seeds every "
            "arm completed; run the same command again to continue from the cache.\n\n")


def main(argv=None):
    a = get_args(argv)
    a.deadline = time.time() + 60 * a.time_budget if a.time_budget else None
    torch.set_num_threads(a.threads)
    arms = parse_arms(a)
    os.makedirs(os.path.join(a.out, "runs"), exist_ok=True)
    t0 = time.time()
    data, feats, evaluator = setup(a, global_stats=any(arm.kwargs.get("target_stats") == "global" for arm in arms))
    records, n_new = execute(a, arms, data, feats, evaluator)
    wall = time.time() - t0
    try:
        summary, reference = report.summarise(records, arms, a.ref_step, evaluator.floor)
    except ValueError as e:  # e.g. a time budget spent before any seed had every arm
        raise SystemExit(f"no report: {e} ({len(records)} runs done in {(time.time() - t0) / 60:.1f} min)")
    checks = report.calibration_checks(summary, reference)
    ref_set = ("450 held-out digits" if a.setting == "digits" else
               f"{evaluator.n_test} glyphs of the held-out typefaces")
    md = report.markdown(summary, reference, checks, evaluator.floor, a.eval_samples, a.sample_steps, ref_set)
    if a.versus:
        base = next(arm.label for arm, name in zip(arms, a.arms) if a.versus in (name, arm.label))
        md += "\n" + report.versus_markdown(report.versus(summary, base, a.ref_step), base, a.ref_step)
    cmd = "python examples/toy/run.py " + " ".join(f'"{x}"' if any(c in x for c in " :,") else x
                                                     for x in (argv if argv is not None else sys.argv[1:]))
    machine = (torch.cuda.get_device_name(0) if a.device == "cuda" and torch.cuda.is_available()
               else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {a.threads} threads"
               + (f" in {a.workers} worker processes" if a.workers > 1 else ""))
    run_min = sum(r.get("wall_s", 0.0) for r in records) / 60
    header = (f"# {a.title}\n\nCommand: `{cmd}`  \nMachine: {machine}; torch {torch.__version__}  \n"
              f"Wall time of this invocation {wall / 60:.1f} min ({n_new} new runs); the runs' own wall times "
              f"(training and evaluation) add up to {run_min:.1f} min.\n\n" + left_note(a, arms, records))
    open(os.path.join(a.out, "results.md"), "w").write(header + md)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items() if k not in ("out", "cache_dir")}
    json.dump(dict(command=cmd, machine=machine, config=cfg, floor=evaluator.floor, classifier_test_acc=evaluator.test_acc,
                   wall_s=wall, reference=reference, checks=checks, summary=summary, runs=records),
              open(os.path.join(a.out, "results.json"), "w"), indent=1)
    report.plots(summary, reference, a.title, a.out)
    print(header + md)
    return summary


if __name__ == "__main__":
    main()
