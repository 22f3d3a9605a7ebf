import dataclasses
import pathlib
import subprocess
import sys

import pytest
import torch

from vrpo_loss import VRPOAlignment, VRPOConfig, VRPOOutput

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_field_has_help():
    for f in dataclasses.fields(VRPOConfig):
        assert f.metadata.get("help"), f.name


def test_readme_options_table_is_in_sync():
    readme = (ROOT / "README.md").read_text()
    assert VRPOConfig.help() in readme, "regenerate the README's options table: python -c 'import vrpo_loss; print(vrpo_loss.VRPOConfig.help())'"


def test_import_stays_light():
    code = ("import sys, vrpo_loss, vrpo_loss.encoders, vrpo_loss.hooks; "
            "print([m for m in ('timm', 'transformers', 'lpips', 'torchvision') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_replace_validates():
    cfg = VRPOConfig()
    assert cfg.replace(tau=0.5).tau == 0.5
    try:
        cfg.replace(tau=-1.0)
    except ValueError as e:
        assert "tau" in str(e)
    else:
        raise AssertionError("replace did not validate")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = 'pip install ".[test]" && ruff check . && python -m pytest -q'
    assert cmd in readme and cmd in ci.splitlines()


def test_config_object_and_kwargs():
    cfg = VRPOConfig(hidden_dim=None, target_dims=(8,), tau=0.2)
    a = VRPOAlignment(cfg, tau=0.3)
    assert a.config.tau == 0.3 and cfg.tau == 0.2
    out = a(torch.randn(2, 4, 8), torch.randn(2, 4, 8))
    assert isinstance(out, VRPOOutput)
    with pytest.raises(TypeError, match="unknown option"):
        VRPOAlignment(hidden_dim=None, target_dims=(8,), group=4)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(mode="rl"), ValueError, r"mode: expected one of 'vrpo', 'repa', got 'rl'"),
        (dict(policy="beta"), ValueError, r"policy: expected one of 'gaussian', 'correspondence'"),
        (dict(adv_scale="std"), ValueError, r"adv_scale: expected one of 'group', 'batch', 'none'"),
        (dict(space="torus", policy="gaussian"), ValueError, r"space: expected one of"),
        (dict(policy="gaussian", group_size=1), ValueError, r"group_size: expected an int >= 2, got 1.*a group of one"),
        (dict(policy="gaussian", group_size=3), ValueError, r"antithetic sampling needs an even group_size"),
        (dict(tau=0.0), ValueError, r"tau: expected a value >= 0.0001"),
        (dict(policy="gaussian", learn_sigma=True, sigma=5.0), ValueError, r"sigma: expected a value in \[sigma_min, sigma_max\]"),
        (dict(sample_weight=1.0, w_min=1.5), ValueError, r"w_min, w_max"),
        (dict(target_dims=()), ValueError, r"target_dims"),
        (dict(hidden_dim=0), ValueError, r"hidden_dim: expected a positive int or None"),
        (dict(time_bins=0), ValueError, r"time_bins: expected an int >= 1"),
        (dict(policy_coeff=-1.0), ValueError, r"policy_coeff: expected a value >= 0"),
    ],
)
def test_bad_options(kw, err, match):
    with pytest.raises(err, match=match):
        VRPOConfig(**kw)
    with pytest.raises(err, match=match):
        VRPOAlignment(**kw)


def test_group_size_is_refused_without_the_gaussian_policy_and_config_type_checked():
    with pytest.raises(ValueError, match="^group_size: acts only with .*policy='gaussian'"):
        VRPOConfig(policy="correspondence", group_size=1)
    with pytest.raises(ValueError, match="^group_size: expected an int >= 2"):
        VRPOConfig(policy="gaussian", group_size=1)
    with pytest.raises(TypeError, match="config: expected a VRPOConfig"):
        VRPOAlignment({"mode": "repa"})


@pytest.mark.parametrize("option", ["clip_eps", "clip_frac"])
def test_removed_options_raise_naming_the_option(option):
    with pytest.raises(TypeError, match=option):
        VRPOAlignment(**{option: 0.2})
    with pytest.raises(TypeError, match=option):
        VRPOConfig(**{option: 0.2})


def test_components_take_their_defaults_from_the_config():
    from vrpo_loss.projector import build_projector
    from vrpo_loss.rewards import DecodabilityReward, PerceptualReward
    from vrpo_loss.statistics import TimeBinnedNormalizer

    cfg = VRPOConfig()
    p = PerceptualReward()
    assert (p.every, p.subset, p.backbone) == (cfg.perceptual_every, cfg.perceptual_subset, cfg.perceptual_net)
    norm = TimeBinnedNormalizer(heads=1)
    assert (norm.time_bins, norm.momentum, norm.eps, norm.clip) == (cfg.time_bins, cfg.stats_momentum, cfg.adv_eps, cfg.adv_clip)
    assert DecodabilityReward(target_dims=(4,), patch_dim=2, patch=1).mlps[0][0].out_features == cfg.decodability_hidden
    assert build_projector(3, 4)[0].out_features == cfg.projector_dim
    built = VRPOAlignment(perceptual_weight=1.0, sample_weight=1.0, perceptual_every=7, hidden_dim=None)
    assert built.sample_heads[1].every == 7 and built.policy.config is built.config
