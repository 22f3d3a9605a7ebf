"""The overhead benchmark runs end to end at a tiny size (its GPU path's code, on the CPU, under bf16 autocast)."""

import importlib.util
import pathlib

import pytest
import torch

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_shapes_flag_selects_sit_b_and_xl_in_bf16(overhead):
    args = overhead.parse(["--gpu-shapes"])
    assert args.presets == ["B/2", "XL/2"] and args.batch == 32 and args.amp == "bf16" and args.device == "cuda"
    assert overhead.PRESETS["XL/2"] == dict(hidden=1152, depth=28, heads=16, tap=8)
    assert overhead.PRESETS["B/2"]["hidden"] == 768 and overhead.PRESETS["B/2"]["tap"] == 4


def test_tiny_run_every_arm_bf16(overhead):
    argv = ["--presets", "tiny", "--batch", "2", "--warmup", "1", "--steps", "2", "--groups", "2", "4",
            "--amp", "bf16", "--lpips-subset", "1", "--threads", "1", "--stub-upsamples", "1",
            # small widths: bf16 matmuls on a CPU without bf16 instructions run a slow fallback (seconds each)
            "--target-dim", "32", "--projector-dim", "64"]
    result = overhead.main(argv, log=None)
    rows = {r["arm"]: r for r in result["rows"]}
    assert set(rows) == {"none", "repa", "vrpo", "vrpo-nodiag", "vrpo-novalidate", "repa-novalidate", "vrpo-gaussian-G2", "vrpo-gaussian-G4", "vrpo+lpips"}
    # every ratio is the arm's own measurement over REPA's, and the quartiles bracket the median
    for r in rows.values():
        assert r["time_ratio"] == pytest.approx(r["median_s"] / rows["repa"]["median_s"])
        assert r["mem_ratio"] == pytest.approx(r["peak_mib"] / rows["repa"]["peak_mib"])
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"] and r["steps"] == 2
    # the projector's parameters and optimizer state are counted: REPA needs more memory than no alignment
    assert rows["none"]["peak_mib"] < rows["repa"]["peak_mib"]
    assert "| vrpo |" in overhead.table(result["rows"])


def test_tiny_run_adaptive_arms(overhead):
    argv = ["--presets", "tiny", "--batch", "2", "--warmup", "1", "--steps", "2", "--threads", "1", "--no-memory",
            "--arms", "repa", "adaptive"]
    rows = {r["arm"]: r for r in overhead.main(argv, log=None)["rows"]}
    assert set(rows) == {"repa", "vrpo-agreement", "vrpo-achievability", "vrpo-achievability-every10"}
    assert all(r["time_ratio"] == pytest.approx(r["median_s"] / rows["repa"]["median_s"]) for r in rows.values())


def test_sit_tap_is_the_block_output(overhead):
    import torch

    model = overhead.SiT(**overhead.PRESETS["tiny"])
    x = torch.randn(2, 4, 32, 32)
    out = model(x, torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == x.shape and model.tapped.shape == (2, 256, 64)


def test_sd_vae_decoder_has_sd_vae_architecture(overhead):
    # SD-VAE (sd-vae-ft-ema): 83.65M parameters, of which the decoder holds 49,490,179
    pytest.importorskip("diffusers")
    import torch

    dec = overhead.SDVAEDecoder()
    assert sum(p.numel() for p in dec.decoder.parameters()) == 49_490_179
    assert not any(p.requires_grad for p in dec.parameters())
    with torch.no_grad():
        img = dec(torch.randn(1, 4, 8, 8))
    assert img.shape == (1, 3, 64, 64) and img.abs().max() <= 1


def test_count_aten_ops_counts_top_level_and_nested_ops(overhead):
    import torch

    x = torch.randn(4, 5)
    got = overhead.count_aten_ops(lambda: (x * 2 + 1).sum())
    assert got["top"] == 3 and got["by_name"] == {"aten::mul": 1, "aten::add": 1, "aten::sum": 1}
    nested = overhead.count_aten_ops(lambda: torch.nn.functional.normalize(x, dim=-1))  # norm, clamp_min, expand_as, div
    assert nested["top"] == 4 and nested["all"] > nested["top"]


def test_vrpo_adds_at_most_60_ops_over_repa_at_defaults(overhead):
    """Deterministic: the alignment module's forward and backward per training step, REPA against VRPO's defaults,
    at every step of one period of the metric schedule (the counts do not depend on the shapes)."""
    args = overhead.parse(["--presets", "tiny", "--batch", "2", "--arms", "repa", "vrpo"])
    rows = {r["arm"]: r for r in overhead.op_counts(args, 64, 2, "cpu", log=None)}
    assert rows["vrpo"]["steps"] == 10 and rows["repa"]["top_min"] == rows["repa"]["top_max"]
    assert rows["vrpo"]["extra_top_mean"] <= 60  # mean over the period
    assert rows["vrpo"]["top_min"] - rows["repa"]["top_min"] <= 60  # every off step
    assert rows["vrpo"]["top_max"] > rows["vrpo"]["top_min"]  # the metric step does the full metrics


def test_op_counts_include_the_gaussian_arms_whose_off_steps_skip_the_metrics(overhead):
    """The Gaussian arms are counted beside REPA's and VRPO's; their metrics stage runs on metric steps only."""
    args = overhead.parse(["--presets", "tiny", "--batch", "2", "--arms", "repa", "gaussian", "--groups", "4"])
    rows = {r["arm"]: r for r in overhead.op_counts(args, 64, 2, "cpu", log=None)}
    g = rows["vrpo-gaussian-G4"]
    assert g["extra_top_mean"] == g["top_mean"] - rows["repa"]["top_mean"]
    assert len(set(g["by_step"][1:])) == 1 and g["by_step"][1] < g["by_step"][0]
    assert "aten::abs" not in overhead.count_period(overhead.build_arms(args, 64, "cpu", compile_align=False)[
        "vrpo-gaussian-G4"], _inputs(args), 2)[1]["by_name"]  # adv/clip_frac is a metric: not on an off step


def _inputs(args):
    """Features (B 2, N 16, D 64) with gradient, targets, t and the denoising loss, from seed 0."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 16, 64, generator=g).requires_grad_(True), torch.randn(2, 16, args.target_dim, generator=g),
            torch.rand(2, generator=g), torch.rand(2, generator=g))


def test_adaptive_strength_reads_the_anchors_cosine_and_builds_metrics_on_metric_steps_only(overhead):
    """Deterministic: ``adaptive="achievability"`` computes no second cosine (the same norms as VRPO's
    defaults on every step) and its per-bin metrics come on the metric step only (its off steps all
    cost the same, 90 ops or fewer over VRPO's: binning, the statistics' update, the strengths)."""
    args = overhead.parse(["--presets", "tiny", "--batch", "2", "--arms", "vrpo", "adaptive"])
    arms = {k: m for k, m in overhead.build_arms(args, 64, "cpu", compile_align=False).items()
            if k in ("vrpo", "vrpo-achievability")}
    per = {k: overhead.count_period(m, _inputs(args), 3) for k, m in arms.items()}
    norms = {k: [c["by_name"].get("aten::linalg_vector_norm", 0) for c in v] for k, v in per.items()}
    assert norms["vrpo-achievability"] == norms["vrpo"]
    off = [c["top"] for c in per["vrpo-achievability"][1:]]
    assert off[0] == off[1] and off[0] - per["vrpo"][1]["top"] <= 90
    extra = [a["by_name"].get("aten::unbind", 0) - v["by_name"].get("aten::unbind", 0)
             for a, v in zip(per["vrpo-achievability"], per["vrpo"])]
    assert extra[0] == extra[1] + 2  # the per-bin metrics (strengths, running cosines): on the metric step only


def test_lpips_arm_runs_the_perceptual_head_on_every_step(overhead, monkeypatch):
    """The arm times the head's per-call cost: at the defaults' sample_weight 0 it would run on metric steps only."""
    import torch

    args = overhead.parse(["--presets", "tiny", "--arms", "lpips", "--lpips-subset", "1", "--stub-upsamples", "1",
                           "--target-dim", "32", "--projector-dim", "64"])
    calls = []
    forward = overhead.ConvDecoder.forward
    monkeypatch.setattr(overhead.ConvDecoder, "forward", lambda self, z: calls.append(1) or forward(self, z))
    arm = overhead.build_arms(args, 64, torch.device("cpu"))["vrpo+lpips"]
    trainer = overhead.Trainer(overhead.SiT(**overhead.PRESETS["tiny"]), {"vrpo+lpips": arm}, batch=2,
                               device=torch.device("cpu"), amp_dtype=None, target_dim=32)
    per_step = []
    for _ in range(5):
        before = len(calls)
        trainer.step("vrpo+lpips")
        per_step.append(len(calls) - before)
    assert per_step == [2] * 5  # the prediction and the clean latents decoded, each step
