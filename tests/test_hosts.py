"""Host helpers: clean predictions per host path (against each host's published interpolant, re-derived
here in float64), the latent decoder, the flags and the logging helper."""

import argparse
import math
import types

import pytest
import torch
import torch.nn as nn

from vrpo_loss import VRPOAlignment, VRPOConfig, cli, hosts
from vrpo_loss.hooks import FeatureTap
from vrpo_loss.hosts import LatentDecoder, align_logs, config_from_args, x0_from_prediction, x0_from_velocity

D64 = torch.float64


def _data(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 6, 6, generator=g, dtype=D64)
    eps = torch.randn(b, 4, 6, 6, generator=g, dtype=D64)
    t = torch.rand(b, generator=g, dtype=D64) * 0.98 + 0.01
    return x, eps, t


def _col(t):
    return t.view(-1, 1, 1, 1)


def _jvp(fn, t):
    """(f(t), df/dt) by forward-mode autodiff: the derivative without a hand-written formula."""
    return torch.func.jvp(fn, (t,), (torch.ones_like(t),))


# ---- REPA (loss.py SILoss.interpolant, package time: t = 0 clean) --------------------------------
REPA_PATHS = {
    "linear": lambda t: (1 - t, t),
    "cosine": lambda t: (torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)),
}


@pytest.mark.parametrize("path", sorted(REPA_PATHS))
def test_repa_velocity_paths_recover_the_clean_latent(path):
    x, eps, t = _data()
    (alpha, sigma), (d_alpha, d_sigma) = _jvp(REPA_PATHS[path], t)
    x_t = _col(alpha) * x + _col(sigma) * eps
    v = _col(d_alpha) * x + _col(d_sigma) * eps  # REPA's model_target for prediction='v'
    torch.testing.assert_close(x0_from_velocity(x_t, v, t, path=path), x, rtol=1e-12, atol=1e-12)
    # REPA passes time_input of shape (B, 1, 1, 1)
    torch.testing.assert_close(x0_from_velocity(x_t, v, _col(t), path=path), x, rtol=1e-12, atol=1e-12)


# ---- SiT (transport/path.py, SiT time: t = 1 clean; x_t = alpha x1 + sigma x0, x1 data) -------------
def _vp_alpha(t, b0=0.1, b1=20.0):
    return torch.exp(-0.25 * (1 - t) ** 2 * (b1 - b0) - 0.5 * (1 - t) * b0)


SIT_PATHS = {
    "Linear": lambda t: (t, 1 - t),
    "GVP": lambda t: (torch.sin(t * math.pi / 2), torch.cos(t * math.pi / 2)),
    "VP": lambda t: (_vp_alpha(t), torch.sqrt(1 - _vp_alpha(t) ** 2)),
}


@pytest.mark.parametrize("path", sorted(SIT_PATHS))
@pytest.mark.parametrize("prediction", ["velocity", "noise", "score"])
def test_sit_paths_and_predictions_recover_the_clean_latent(path, prediction):
    x1, x0, t_sit = _data(seed=1)
    (alpha, sigma), (d_alpha, d_sigma) = _jvp(SIT_PATHS[path], t_sit)
    x_t = _col(alpha) * x1 + _col(sigma) * x0
    pred = {
        "velocity": _col(d_alpha) * x1 + _col(d_sigma) * x0,  # compute_ut
        "noise": x0,  # SiT's noise model regresses the noise x0
        "score": -x0 / _col(sigma),  # SiT's score model: model_output * sigma_t + x0 = 0
    }[prediction]
    got = x0_from_prediction(x_t, pred, t_sit, path=path, prediction=prediction, time_reversed=True)
    torch.testing.assert_close(got, x1, rtol=1e-9, atol=1e-9)


def test_vp_velocity_is_finite_at_the_clean_end():
    x, eps, _ = _data()
    t = torch.zeros(x.shape[0], dtype=D64)
    v = torch.randn_like(x)
    torch.testing.assert_close(x0_from_velocity(x, v, t, path="vp"), x)  # alpha(0) = 1, sigma(0) = 0


def test_fp32_and_half_inputs_give_fp32():
    x, eps, t = _data()
    out = x0_from_velocity(x.half(), eps.half(), t.float(), path="linear")
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, t: x0_from_velocity(x, x, t, path="ddpm"), "path: expected one of linear"),
        (lambda x, t: x0_from_velocity(x, x[:, :2], t), "v: expected the shape of x_t"),
        (lambda x, t: x0_from_velocity(x, x, t[:3]), "t: expected 5 values"),
        (lambda x, t: x0_from_prediction(x, x, t, prediction="x0"), "prediction: expected one of velocity"),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    x, _, t = _data()
    with pytest.raises(ValueError, match=match):
        call(x, t)


def test_integer_inputs_are_refused():
    x, _, t = _data()
    with pytest.raises(TypeError, match="x_t: expected a floating-point tensor"):
        x0_from_velocity(x.long(), x, t)


# ---- LatentDecoder ---------------------------------------------------------------------------------
class FakeVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 1)

    def decode(self, z):
        return types.SimpleNamespace(sample=4 * self.conv(z))


def test_latent_decoder_unscales_and_clamps():
    vae = FakeVAE()
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0]).view(1, 4, 1, 1)
    bias = torch.tensor([0.1, -0.2, 0.0, 0.3]).view(1, 4, 1, 1)
    z = torch.randn(2, 4, 3, 3)
    got = LatentDecoder(vae, scale=scale, bias=bias)(z)
    with torch.no_grad():
        want = (4 * vae.conv((z - bias) / scale)).clamp(-1, 1)
    torch.testing.assert_close(got, want)
    assert got.min() >= -1 and got.max() <= 1 and not got.requires_grad


def test_latent_decoder_keeps_the_vae_out_of_the_alignment_module():
    vae = FakeVAE()
    align = VRPOAlignment(hidden_dim=8, target_dims=(6,), projector_dim=8, perceptual_weight=1.0, sample_weight=1.0,
                          decode=LatentDecoder(vae))
    assert not any(k.startswith("sample_heads.0.decode") or "conv" in k for k in align.state_dict())
    assert all(p is not vae.conv.weight for p in align.parameters())


def test_latent_decoder_refuses_a_module_without_decode():
    with pytest.raises(TypeError, match="vae: expected an autoencoder"):
        LatentDecoder(nn.Linear(2, 2))


# ---- FeatureTap.output -----------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])

    def forward(self, x, t):
        for b in self.blocks:
            x = b(x)
        return torch.cat([x, x * t[:, None, None]], -1)


def test_tap_keeps_the_model_output():
    model = Tiny()
    tap = FeatureTap(model, depth=1, keep_inputs=True, keep_output=True)
    x, t = torch.randn(2, 4, 3), torch.rand(2)
    out = model(x, t)
    assert tap.output() is out and tap.input(0) is x
    with pytest.raises(RuntimeError, match="keep_output=True"):
        FeatureTap(model, depth=1).output()


# ---- flags -----------------------------------------------------------------------------------------
def _parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--proj-coeff", type=float, default=0.5)  # a host flag beside ours
    hosts.add_alignment_args(p)
    return p.parse_args(argv)


def test_no_flag_gives_the_package_defaults():
    args = _parse([])
    assert all(v is None for k, v in vars(args).items() if k != "proj_coeff")  # no default re-declared
    assert config_from_args(_parse([]), hidden_dim=None, target_dims=(768,)) == VRPOConfig(hidden_dim=None, target_dims=(768,))


def test_flags_reach_the_config_with_their_field_types():
    args = _parse(["--alignment", "vrpo", "--policy", "gaussian", "--group-size", "4",
                   "--perceptual-weight", "0.5", "--perceptual-every", "10", "--decodability-weight", "0.25",
                   "--sample-weight", "-0.5", "--align-opt", "antithetic=false", "--align-opt", "sigma_final=none",
                   "--align-opt", "target-dims=384,768", "--align-opt", "adv_clip=3"])
    cfg = config_from_args(args, hidden_dim=1152)
    assert (cfg.mode, cfg.policy, cfg.group_size) == ("vrpo", "gaussian", 4)
    assert (cfg.perceptual_weight, cfg.perceptual_every, cfg.decodability_weight, cfg.sample_weight) == (0.5, 10, 0.25, -0.5)
    assert cfg.antithetic is False and cfg.sigma_final is None and cfg.target_dims == (384, 768) and cfg.adv_clip == 3.0
    assert type(cfg.perceptual_every) is int and type(cfg.adv_clip) is float
    assert args.proj_coeff == 0.5


@pytest.mark.parametrize("argv, match", [
    (["--alignment", "both"], "invalid choice"),
    (["--tau", "sharp"], "tau: expected a number"),
    (["--perceptual-every", "2.5"], "perceptual_every: expected an int"),
])
def test_bad_flag_values_stop_argparse_with_the_flag(argv, match, capsys):
    with pytest.raises(SystemExit):
        _parse(argv)
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv, fixed, match", [
    (["--align-opt", "anchor_coef=1"], {}, "no option 'anchor_coef'"),
    (["--align-opt", "antithetic"], {}, "expected KEY=VALUE"),
    (["--tau", "0.2", "--align-opt", "tau=0.3"], {}, "already set by --tau"),
    (["--align-opt", "hidden_dim=7"], {"hidden_dim": 8}, "set by the training script"),
    (["--align-opt", "antithetic=maybe"], {}, "antithetic: expected a boolean"),
    (["--tau", "-1"], {}, "tau: expected a value >= 0.0001"),
])
def test_bad_options_raise_value_errors_naming_them(argv, fixed, match):
    with pytest.raises(ValueError, match=match):
        config_from_args(_parse(argv), **fixed)


def test_a_flag_for_an_option_this_version_lacks_passes_by_name_and_is_refused(monkeypatch):
    monkeypatch.setattr(cli, "FLAGS", cli.FLAGS + (("--future-knob", "future_knob"),))
    assert config_from_args(_parse([])) == VRPOConfig()  # not given: harmless
    args = _parse(["--future-knob", "on"])
    assert args.align_future_knob == "on"
    with pytest.raises(ValueError, match="--future-knob: this vrpo-loss has no option 'future_knob'"):
        config_from_args(args)


def test_every_existing_flag_maps_to_its_field():
    fields = {f for f in VRPOConfig.__dataclass_fields__}
    for flag, name in cli.FLAGS:
        if name in fields:
            assert flag == "--alignment" or flag[2:].replace("-", "_") == name


# ---- logging ---------------------------------------------------------------------------------------
def test_align_logs_prefixes_and_flattens():
    logs = align_logs({"cos": torch.tensor(0.25), "strength": torch.tensor([1.0, 0.5])})
    assert logs == {"align/cos": 0.25, "align/strength/0": 1.0, "align/strength/1": 0.5}
    assert align_logs({}) == {}


def test_align_logs_of_a_real_output():
    align = VRPOAlignment(hidden_dim=8, target_dims=(6,), projector_dim=8)
    out = align(torch.randn(2, 4, 8), torch.randn(2, 4, 6), t=torch.rand(2), denoise_loss=torch.rand(2))
    logs = align_logs(out.metrics)
    assert set(logs) == {f"align/{k}" for k in out.metrics} and all(isinstance(v, float) for v in logs.values())
