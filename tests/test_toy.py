"""Fast smoke tests of the toy benchmark (examples/toy): a few steps at tiny sizes."""
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "toy"))

from evaluate import frechet_distance, gaussian_stats, train_classifier  # noqa: E402
from model import ToySiT, sample  # noqa: E402
from stats import steps_to_reach  # noqa: E402
from train import Arm, parse_kv, train_run  # noqa: E402


def test_model_shapes_and_sampler():
    torch.manual_seed(0)
    m = ToySiT(dim=32, depth=3, heads=2, align_depth=2)
    x, t, y = torch.randn(5, 1, 16, 16), torch.rand(5), torch.randint(0, 10, (5,))
    v, h = m(x, t, y)
    assert v.shape == x.shape and h.shape == (5, 64, 32)
    out = sample(m, y, torch.randn(5, 1, 16, 16), steps=3, method="heun")
    assert out.shape == (5, 1, 16, 16) and out.abs().max() <= 1


def test_frechet_distance():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2000, 4))
    st = gaussian_stats(f)
    assert abs(frechet_distance(st, st)) < 1e-6
    shifted = (st[0] + np.array([3.0, 0, 0, 0]), st[1])
    assert frechet_distance(st, shifted) == pytest.approx(9.0, rel=1e-6)


def test_evaluation_classifier_does_not_depend_on_prior_draws_or_threads(tmp_path):
    # the FD is measured in this classifier's features: it must come out the same whatever drew
    # from the global generator before (a cold or warm encoder cache) and whatever the thread count
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 1, 16, 16, generator=g), torch.randint(0, 10, (128,), generator=g)
    threads = torch.get_num_threads()
    nets = []
    for i, (draws, n_threads) in enumerate([(0, 1), (1000, 2)]):
        torch.randn(draws)
        torch.set_num_threads(n_threads)
        nets.append(train_classifier(x, y, str(tmp_path / str(i)), epochs=1))
    torch.set_num_threads(threads)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k


def test_steps_to_reach():
    assert steps_to_reach([100, 200], [400.0, 100.0], 200.0) == pytest.approx(100 + 100 * math.log(2) / math.log(4))
    assert steps_to_reach([100, 200], [150.0, 100.0], 200.0) == 100.0
    assert steps_to_reach([100, 200], [400.0, 300.0], 200.0) is None


def test_arm_parsing():
    a = Arm.parse("vrpo@0.5:policy=correspondence,tau=0.1,antithetic=false")
    assert (a.mode, a.coeff) == ("vrpo", 0.5)
    assert a.kwargs == {"policy": "correspondence", "tau": 0.1, "antithetic": False}
    assert Arm.parse("repa", {"repa": 2.0}).coeff == 2.0
    assert Arm.parse("none").coeff == 0.0
    # an option of the no-alignment arm is in its label, so its runs are not mistaken for plain none's
    assert (Arm.parse("none").label, Arm.parse("none:groups=4").label) == ("none", "none:groups=4")
    assert parse_kv("group_size=8") == {"group_size": 8}
    # "none" is None, except for string options, where it is a value
    assert parse_kv("adv_scale=none,sigma_final=none") == {"adv_scale": "none", "sigma_final": None}
    with pytest.raises(ValueError):
        Arm.parse("dino")


def test_repa_arms_take_config_kwargs_and_stop_fraction():
    a = Arm.parse("repa@4:target_norm=zscore,projector=conv,token_grid=4x4")
    assert (a.mode, a.coeff) == ("repa", 4.0)
    assert a.kwargs == {"target_norm": "zscore", "projector": "conv", "token_grid": (4, 4)}
    assert a.label == "repa@4:target_norm=zscore,projector=conv,token_grid=4x4"
    # the peers' string options stay strings ("none" included)
    assert Arm.parse("repa@2:target_norm=none").kwargs == {"target_norm": "none"}
    # a float stop_step in (0, 1) is a fraction of the run; an int is a step count
    assert Arm.parse("repa@4:stop_step=0.5").resolve(1000) == {"stop_step": 500}
    assert Arm.parse("repa@4:stop_step=0.25").resolve(90) == {"stop_step": 22}
    assert Arm.parse("repa@4:stop_step=300").resolve(1000) == {"stop_step": 300}
    with pytest.raises(ValueError, match="stop_step"):
        Arm.parse("repa@4:stop_step=1.5").resolve(1000)
    with pytest.raises(ValueError, match="none"):
        Arm.parse("none@2")


def test_named_arms_are_the_finals():
    from run import FINAL_ARMS, named_arms

    names = named_arms(2.0, 1.0, "policy=correspondence,tau=0.1")
    assert all(Arm.parse(names.get(a, a)).label for a in FINAL_ARMS)  # a name, or a spec such as repa@2
    assert {"none", "repa", "vrpo", "irepa", "va-repa", "haste", "sara", "vrpo-zscore"} <= set(FINAL_ARMS)
    arms = {k: Arm.parse(v) for k, v in names.items()}
    assert arms["irepa"].kwargs == {"target_norm": "zscore", "projector": "conv"} and arms["irepa"].coeff == 4.0
    assert arms["va-repa"].kwargs == {"time_weight": "sigmoid"}
    assert arms["haste"].resolve(1000)["stop_step"] == 500
    assert arms["vrpo-zscore"].kwargs == {"policy": "correspondence", "tau": 0.1, "target_norm": "zscore"}
    assert arms["vrpo-agreement"].kwargs["adaptive"] == "agreement"
    assert arms["vrpo-achievability"].kwargs["adaptive"] == "achievability"
    assert arms["vrpo-terminate"].kwargs["adaptive_terminate"] is True


def test_pool_tokens_and_square_grid():
    from data import pool_tokens

    f = torch.arange(2 * 64 * 3, dtype=torch.float32).view(2, 64, 3)  # 8x8 grid, token i at (i // 8, i % 8)
    p = pool_tokens(f, 4)
    assert p.shape == (2, 16, 3)
    # pooled token 0 is the mean of grid tokens (0,0), (0,1), (1,0), (1,1): indices 0, 1, 8, 9
    assert torch.allclose(p[:, 0], f[:, [0, 1, 8, 9]].mean(1))
    assert torch.allclose(p[:, 5], f[:, [18, 19, 26, 27]].mean(1))  # grid cell (1, 1)
    assert pool_tokens(f, 8) is f
    with pytest.raises(ValueError, match="feats"):
        pool_tokens(f, 3)
    # the aligned tokens of the 8x8 model form a square 4x4 grid (a conv projector needs no token_grid)
    _, h = ToySiT(image_size=8, patch=2, dim=16, depth=2, heads=2, align_depth=1)(
        torch.randn(3, 1, 8, 8), torch.rand(3), torch.randint(0, 10, (3,)))
    assert h.shape == (3, 16, 16)


def test_evaluator_upsamples_small_samples(tmp_path, monkeypatch):
    import evaluate
    from data import load_digits_16

    def untrained(*args, **kwargs):  # any fixed network will do, and costs no training
        torch.manual_seed(0)
        return evaluate.DigitCNN().eval()

    monkeypatch.setattr(evaluate, "train_classifier", untrained)
    ev = evaluate.Evaluator(load_digits_16(16), str(tmp_path), n_per_class=10)
    x8 = load_digits_16(8).x_test[:100]
    x16 = load_digits_16(16).x_test[:100]
    y = load_digits_16(16).y_test[:100]
    # the 8x8 digits upsampled inside the evaluator score as the 16x16 digits do
    assert ev(x8, y)["fd"] == pytest.approx(ev(x16, y)["fd"], rel=1e-4)


def test_craft_vgg_tokens():
    pytest.importorskip("easyocr_en_models")
    from data import VGGTokens

    enc = VGGTokens()
    y = enc(torch.rand(2, 1, 16, 16) * 2 - 1)
    assert y.shape == (2, 64, 512) and torch.isfinite(y).all() and (y >= 0).all()


def test_vgg_perceptual_matches_a_float64_reference():
    """The offline perceptual distance: LPIPS's formula (unit-normalised channels, squared difference,
    spatial mean, summed over channels and taps) on VGG16-BN relu1_2/2_2/3_3, against a float64
    recomputation that reads the taps with forward hooks."""
    pytest.importorskip("easyocr_en_models")
    from data import VGGPerceptual

    torch.manual_seed(0)
    d = VGGPerceptual()
    a, b = torch.rand(3, 1, 32, 32) * 2 - 1, torch.rand(3, 1, 32, 32) * 2 - 1
    net = d.net.double()
    taps = {}
    for i in (5, 12, 22):
        net[i].register_forward_hook(lambda m, inp, out, i=i: taps.__setitem__(i, out))

    def feats(x):
        x = ((x + 1) / 2).repeat(1, 3, 1, 1)
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
        net((x - mean) / std)
        return [taps[i] / taps[i].pow(2).sum(1, keepdim=True).sqrt() for i in (5, 12, 22)]

    with torch.no_grad():
        ref = torch.zeros(3, dtype=torch.float64)
        for fa, fb in zip(feats(a.double()), feats(b.double())):
            for n in range(3):
                ref[n] += ((fa[n] - fb[n]) ** 2).sum(0).mean()
        d.float()
        for i in (5, 12, 22):
            net[i]._forward_hooks.clear()
        got = d(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1))
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    assert d(a, a).abs().max() < 1e-6 and (got > 0).all()


@pytest.mark.parametrize("spec", ["none", "repa@1", "vrpo@0.5:policy=correspondence", "vrpo@0.5:policy=gaussian,group_size=4"])
def test_train_run_smoke(spec):
    torch.manual_seed(0)
    data = SimpleNamespace(x_train=torch.rand(40, 1, 16, 16) * 2 - 1, y_train=torch.randint(0, 10, (40,)))
    feats = torch.randn(40, 64, 16)
    cfg = SimpleNamespace(dim=32, depth=2, heads=2, align_depth=1, projector_dim=32, lr=1e-3, batch=8, steps=3,
                          eval_at=(3,), eval_samples=20, sample_steps=2, sampler="euler", log_every=1,
                          diag_every=2, ema=0.9)
    seen = []

    def evaluator(x, y):
        seen.append(x.shape)
        return {"fd": 1.0, "acc": 0.5}

    rec = train_run(Arm.parse(spec), 0, data, feats, evaluator, cfg)
    assert seen == [(20, 1, 16, 16)] * 2 and [e["step"] for e in rec["evals"]] == [3]  # + the redraw
    assert "fd_redraw" in rec["evals"][-1]
    assert rec["step_ms"] > 0
    if spec.startswith("vrpo"):
        assert "signal_frac" in rec["metrics"] and "push/policy_vs_repa" in rec["metrics"]


def test_one_seed_skips_the_redraw_and_keys_its_runs_apart():
    """A one-seed demo draws the last evaluation's samples once; its runs are not reused where a redraw is read."""
    import run

    data = SimpleNamespace(x_train=torch.rand(40, 1, 16, 16) * 2 - 1, y_train=torch.randint(0, 10, (40,)))
    cfg = SimpleNamespace(dim=32, depth=2, heads=2, align_depth=1, projector_dim=32, lr=1e-3, batch=8, steps=2,
                          eval_at=(2,), eval_samples=20, sample_steps=2, sampler="euler", log_every=1, ema=0.0,
                          redraw=False)
    seen = []
    rec = train_run(Arm.parse("none"), 0, data, torch.randn(40, 64, 16), lambda x, y: seen.append(x) or
                    {"fd": 1.0, "acc": 0.5}, cfg)
    assert len(seen) == 1 and "fd_redraw" not in rec["evals"][-1]
    one = run.get_args(["--setting", "digits", "--arms", "none", "--seeds", "0"])
    two = run.get_args(["--setting", "digits", "--arms", "none", "--seeds", "0", "1"])
    assert (one.redraw, two.redraw) == (False, True)
    arm = run.parse_arms(two)[0]
    assert run.run_key(arm, 0, one) != run.run_key(arm, 0, two)


def test_train_run_native_resolution_and_ema():
    torch.manual_seed(0)
    data = SimpleNamespace(x_train=torch.rand(40, 1, 8, 8) * 2 - 1, y_train=torch.randint(0, 10, (40,)))
    feats = torch.randn(40, 16, 16)
    seen = []

    def evaluator(x, y):
        seen.append(x.clone())
        return {"fd": 1.0, "acc": 0.5}

    base = dict(dim=16, depth=2, heads=2, align_depth=1, projector_dim=16, lr=1e-2, batch=8, steps=4, eval_at=(4,),
                eval_samples=10, sample_steps=2, sampler="euler", log_every=1, diag_every=0)
    train_run(Arm.parse("repa@1"), 0, data, feats, evaluator, SimpleNamespace(**base, ema=0.0))
    train_run(Arm.parse("repa@1"), 0, data, feats, evaluator, SimpleNamespace(**base, ema=0.9))
    assert seen[0].shape == (10, 1, 8, 8)
    # same seed, same training: only the evaluated weights differ (the average, not the last iterate)
    assert not torch.allclose(seen[0], seen[2])
