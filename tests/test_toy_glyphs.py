"""The toy benchmark's glyph setting: rendering, the latent space, target statistics, a latent run."""
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "toy"))

from train import Arm, train_run  # noqa: E402

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def test_render_is_a_centred_deterministic_glyph():
    pytest.importorskip("PIL")
    if not os.path.exists(DEJAVU):
        pytest.skip("fonts-dejavu-core is not installed")
    from glyphs import render

    a = render(DEJAVU, "A", np.random.default_rng(0))
    b = render(DEJAVU, "A", np.random.default_rng(0))
    c = render(DEJAVU, "B", np.random.default_rng(0))
    assert a.shape == (32, 32) and a.dtype == np.uint8 and np.array_equal(a, b) and not np.array_equal(a, c)
    ys, xs = np.nonzero(a > 64)
    # the ink lies inside the canvas with a margin (size <= 26 px, shift <= 2 px) and near its centre
    assert 0 < ys.min() and ys.max() < 31 and 0 < xs.min() and xs.max() < 31
    assert abs(np.average(ys, weights=a[ys, xs]) - 15.5) < 4 and abs(np.average(xs, weights=a[ys, xs]) - 15.5) < 4


def test_faces_are_split_by_name_and_symbol_faces_dropped(tmp_path):
    pytest.importorskip("fontTools")
    from glyphs import find_faces, split_faces

    faces = [f"/f/{n}.ttf" for n in "abcdefghijklmnopqrstuvwxyz"]
    tr, te = split_faces(faces)
    assert sorted(tr + te) == faces and te and tr and not set(tr) & set(te)
    # stable: a face keeps its side when others are added
    tr2, te2 = split_faces(faces + ["/f/zz.ttf"])
    assert set(te) <= set(te2) and set(tr) <= set(tr2)
    if os.path.exists(DEJAVU):
        found = find_faces(dirs=(os.path.dirname(DEJAVU),))
        assert DEJAVU in found and not any("symbol" in f.lower() for f in found)


def test_standardise_channels_matches_a_float64_reference():
    from data import standardise_channels

    g = torch.Generator().manual_seed(0)
    f = (torch.randn(50, 16, 6, generator=g) * torch.tensor([1.0, 3, 0.1, 10, 1, 2]) + 5).half()
    out = standardise_channels(f, chunk=7)  # chunks that do not divide the set
    ref = f.double().flatten(0, 1)
    ref = ((ref - ref.mean(0)) / ref.std(0, unbiased=False)).view(50, 16, 6)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)


def test_autoencoder_round_trip_shapes_and_cache(tmp_path):
    pytest.importorskip("diffusers")
    import autoencoder

    x = torch.rand(8, 1, 32, 32) * 2 - 1
    codec = autoencoder.train_autoencoder(x, str(tmp_path), steps=2, batch=4, progress=False)
    z = codec.encode(x)
    assert z.shape == (8, 4, 8, 8)
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)  # the latent scale gives unit variance
    assert codec.decode(z).shape == x.shape
    again = autoencoder.train_autoencoder(x, str(tmp_path), steps=2, batch=4, progress=False)  # from the cache
    assert again.scale == codec.scale
    torch.testing.assert_close(again.encode(x), z)
    torch.testing.assert_close(autoencoder.encode_cached(codec, x, str(tmp_path)), z)


def test_latent_run_decodes_samples_for_the_evaluator():
    torch.manual_seed(0)
    decoded = []

    def decode(z):  # a stand-in decoder: latents (N, 4, 4, 4) -> images (N, 1, 8, 8)
        decoded.append(z.shape)
        return torch.nn.functional.interpolate(z.mean(1, keepdim=True), scale_factor=2).clamp(-1, 1)

    data = SimpleNamespace(x_train=torch.randn(40, 4, 4, 4), y_train=torch.randint(0, 26, (40,)), num_classes=26,
                           decode=decode)
    seen = []

    def evaluator(x, y):
        seen.append((x.shape, y.max().item()))
        return {"fd": 1.0, "acc": 0.5}

    cfg = SimpleNamespace(dim=16, depth=2, heads=2, align_depth=1, projector_dim=16, lr=1e-3, batch=8, steps=2, patch=1,
                          eval_at=(2,), eval_samples=52, sample_steps=2, sampler="euler", log_every=1, diag_every=0,
                          ema=0.0)
    rec = train_run(Arm.parse("repa@1"), 0, data, torch.randn(40, 16, 8).half(), evaluator, cfg)
    # 52 samples = 2 per class of 26, drawn as (4, 4, 4) latents and decoded before scoring (and the redraw)
    assert decoded == [(52, 4, 4, 4)] * 2 and seen == [((52, 1, 8, 8), 25)] * 2
    assert "fd_redraw" in rec["evals"][-1]


def test_glyph_setting_arguments():
    from run import SETTINGS, get_args

    a = get_args([])
    assert a.setting == "glyphs" and a.space == "latent" and a.repa_coeff == SETTINGS["glyphs"]["repa_coeff"]
    assert a.eval_at[-1] == a.steps == 300 and a.ref_step in a.eval_at and a.encoder == "vgg-r3"
    d = get_args(["--setting", "digits", "--preset", "standard"])
    assert (d.image_size, d.patch, d.steps, d.repa_coeff, d.vrpo_coeff) == (8, 2, 1200, 8.0, 2.0)
    assert d.out.endswith("digits-standard")


def test_an_arm_with_global_target_stats_trains_on_that_target_set():
    torch.manual_seed(0)
    data = SimpleNamespace(x_train=torch.rand(24, 1, 8, 8) * 2 - 1, y_train=torch.randint(0, 10, (24,)))
    raw, other = torch.randn(24, 16, 8), torch.randn(24, 16, 8)
    cfg = SimpleNamespace(dim=16, depth=2, heads=2, align_depth=1, projector_dim=16, lr=1e-2, batch=8, steps=3,
                          eval_at=(3,), eval_samples=10, sample_steps=2, sampler="euler", log_every=1, diag_every=0,
                          ema=0.0)
    seen = []

    def evaluator(x, y):
        seen.append(x.clone())
        return {"fd": 1.0, "acc": 0.5}

    train_run(Arm.parse("repa@1:target_stats=global"), 0, data, {"none": raw, "global": other}, evaluator, cfg)
    train_run(Arm.parse("repa@1"), 0, data, other, evaluator, cfg)  # the same targets, given directly
    train_run(Arm.parse("repa@1"), 0, data, {"none": raw, "global": other}, evaluator, cfg)
    assert torch.equal(seen[0], seen[2]) and not torch.equal(seen[0], seen[4])


def test_time_budget_stops_new_runs(tmp_path, monkeypatch):
    import run

    a = run.get_args(["--setting", "digits", "--arms", "none", "repa@1", "--seeds", "0", "1", "--workers", "1",
                      "--out", str(tmp_path)])
    a.deadline, a.aggregate_only = 0.0, False  # spent before the first run
    started = []
    monkeypatch.setattr(run, "train_run", lambda *x, **k: started.append(x) or {})
    records, n_new = run.execute(a, run.parse_arms(a), None, None, None)
    assert started == [] and records == []
    note = run.left_note(a, run.parse_arms(a), records)
    assert "4 of 4 runs not yet done" in note and "run the same command again" in note


def test_versus_names_an_arm_of_the_run():
    import run

    a = run.get_args(["--arms", "none", "vrpo", "vrpo-zscore", "--seeds", "0", "1", "--versus", "vrpo"])
    assert len(run.parse_arms(a)) == 3
    a = run.get_args(["--arms", "none", "vrpo-zscore", "--seeds", "0", "1", "--versus", "vrpo"])
    with pytest.raises(SystemExit, match="--versus 'vrpo'"):
        run.parse_arms(a)


def test_the_standard_preset_stops_starting_runs_within_its_budget():
    """One invocation of the finals fits the budget (about 120 minutes): no run starts after STANDARD_BUDGET
    minutes, and an explicit --time-budget still wins."""
    import run

    assert run.get_args(["--preset", "standard"]).time_budget == run.STANDARD_BUDGET <= 110
    assert run.get_args(["--preset", "standard", "--time-budget", "300"]).time_budget == 300
    assert run.get_args(["--arms", "none", "--seeds", "0"]).time_budget is None


def test_a_run_another_invocation_finished_is_read_not_trained(tmp_path, monkeypatch):
    """Two invocations sharing --out split the work: a run whose record appeared meanwhile is not retrained."""
    import json

    import run

    a = run.get_args(["--setting", "digits", "--arms", "none", "repa@1", "--seeds", "0", "--workers", "1",
                      "--out", str(tmp_path)])
    a.deadline, a.aggregate_only = None, False
    os.makedirs(tmp_path / "runs")
    arms = run.parse_arms(a)
    other = tmp_path / "runs" / f"{run.safe(arms[1].label)}_s0_{run.run_key(arms[1], 0, a)}.json"
    started = []

    def fake_train(arm, seed, *args, **kw):  # while the first run trains, the other invocation ends the second
        started.append(arm.label)
        other.write_text(json.dumps({"arm": arms[1].label, "seed": 0, "by": "other"}))
        return {"arm": arm.label, "seed": seed}

    monkeypatch.setattr(run, "train_run", fake_train)
    records, n_new = run.execute(a, arms, None, None, None)
    assert started == ["none"]
    assert sorted(r["arm"] for r in records) == ["none", "repa@1"] and records[1]["by"] == "other"


def test_a_decodability_arm_gets_the_clean_latents():
    """The decodability head reads x0 (the latents): the trainer passes it, and x_t - t v as x0_pred,
    only to arms whose heads read them."""
    from vrpo_loss import VRPOAlignment

    from train import clean_inputs

    x0, pred = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4, requires_grad=True)
    assert clean_inputs(VRPOAlignment(hidden_dim=8, target_dims=(8,)), x0, pred) == {}
    got = clean_inputs(VRPOAlignment(hidden_dim=8, target_dims=(8,), decodability_weight=0.5), x0, pred)
    assert got["x0"] is x0 and not got["x0_pred"].requires_grad
    rec = _latent_run("vrpo@1:decodability_weight=0.5,decodability_patch=1,decodability_channels=4,decodability_hidden=8")
    assert rec["evals"][-1]["fd"] == 1.0


def _latent_run(spec: str, upsample: int = 2) -> dict:
    """Two steps of a tiny latent-space run (4x4x4 latents, decoded by an upsampling stand-in) of ``spec``."""
    torch.manual_seed(0)
    data = SimpleNamespace(x_train=torch.randn(40, 4, 4, 4), y_train=torch.randint(0, 26, (40,)), num_classes=26,
                           decode=lambda z: torch.nn.functional.interpolate(z.mean(1, keepdim=True), scale_factor=upsample))
    cfg = SimpleNamespace(dim=16, depth=2, heads=2, align_depth=1, projector_dim=16, lr=1e-3, batch=8, steps=2, patch=1,
                          eval_at=(2,), eval_samples=26, sample_steps=2, sampler="euler", log_every=1, diag_every=0,
                          ema=0.0)
    return train_run(Arm.parse(spec), 0, data, torch.randn(40, 16, 8).half(), lambda x, y: {"fd": 1.0, "acc": 0.5}, cfg)


def test_a_perceptual_arm_gets_the_decoded_images_and_the_vgg_distance():
    """perceptual_weight > 0 in an arm: the trainer builds the reward offline (decode -> 3 grey
    channels, data.VGGPerceptual) and the reward reaches the sample weights' metrics."""
    pytest.importorskip("easyocr_en_models")
    rec = _latent_run("vrpo@1:sample_weight=0.5,perceptual_weight=1,perceptual_every=1,perceptual_subset=4", upsample=8)
    assert rec["metrics"]["rewards/perceptual/mean"] < 0  # minus a distance, finite


def test_group_weight_against_a_float64_loop():
    """R4's weight: per-bin normalised semantic and fidelity rewards (a first batch: the batch's own bin
    moments), averaged, centred over each image's draws, bounded with mean one."""
    from train import GroupWeight

    g = torch.Generator().manual_seed(0)
    b, groups, kappa = 12, 3, 0.8
    t = torch.tensor([0.05, 0.15, 0.12, 0.55, 0.51, 0.58, 0.91, 0.95, 0.99, 0.14, 0.53, 0.92])
    anchor, denoise = torch.rand(b, generator=g), torch.rand(b, generator=g)
    out = SimpleNamespace(terms={"anchor": anchor}, metrics={})
    got = GroupWeight(kappa, groups)(out, t, denoise)
    rewards = [[1 - float(a) for a in anchor], [-float(d) for d in denoise]]
    bins = [min(int(float(x) * 10), 9) for x in t]
    adv = []
    for i in range(b):
        per_head = []
        for r in rewards:
            same = [r[j] for j in range(b) if bins[j] == bins[i]]
            m = sum(same) / len(same)
            sd = (sum((v - m) ** 2 for v in same) / len(same)) ** 0.5
            per_head.append(max(-5.0, min(5.0, (r[i] - m) / (sd + 1e-4))))
        adv.append(sum(per_head) / 2)
    rel = [adv[i] - sum(adv[(i // groups) * groups:(i // groups + 1) * groups]) / groups for i in range(b)]
    s = [min(max(1 + kappa * x, 0.5), 2.0) for x in rel]
    want = torch.tensor([min(max(x / (sum(s) / b), 0.5), 2.0) for x in s], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_grouped_batches_draw_each_image_g_times():
    """groups=G: every arm's batch is B/G images, each G times with its own (t, noise)."""
    import train

    seen = []
    real = train.ToySiT.forward

    def spy(self, x, t, y):
        seen.append(y.clone())
        return real(self, x, t, y)

    data = SimpleNamespace(x_train=torch.rand(24, 1, 8, 8) * 2 - 1, y_train=torch.arange(24), num_classes=24)
    cfg = SimpleNamespace(dim=16, depth=2, heads=2, align_depth=1, projector_dim=16, lr=1e-2, batch=8, steps=2,
                          eval_at=(2,), eval_samples=24, sample_steps=2, sampler="euler", log_every=1, diag_every=0,
                          ema=0.0)
    train.ToySiT.forward = spy
    try:
        train.train_run(Arm.parse("none:groups=4"), 0, data, torch.randn(24, 16, 8), lambda x, y: {"fd": 1.0}, cfg)
        first = seen[0]
        seen.clear()
        train.train_run(Arm.parse("vrpo@1:groups=4,group_weight=1"), 0, data, torch.randn(24, 16, 8),
                        lambda x, y: {"fd": 1.0}, cfg)
    finally:
        train.ToySiT.forward = real
    assert first.shape == (8,) and torch.equal(first.view(2, 4), first.view(2, 4)[:, :1].expand(2, 4))
    assert torch.equal(seen[0], first)  # the same batches for every arm
    with pytest.raises(ValueError, match="groups=3 must divide"):
        train.train_run(Arm.parse("none:groups=3"), 0, data, torch.randn(24, 16, 8), lambda x, y: {"fd": 1.0}, cfg)
