"""Every option acts where its condition holds, and is refused where it does not (the generic rule).

For each field of ``VRPOConfig`` with a condition: set away from its default under a config where
the condition fails, it raises a ``ValueError`` naming the field and the condition. For every field:
under a config where its condition holds, a changed value changes what the module computes (the
loss, a gradient, a reported metric, over three calls so that running statistics count) or, for
the options that shape checks and the step, the behaviour they name. The probes are written here,
independently of the package's table of conditions.
"""

import dataclasses

import pytest
import torch
import torch.nn as nn

from vrpo_loss import VRPOAlignment, VRPOConfig

from conftest import acting_only

B, N, C, D = 6, 4, 8, 6
BASE = dict(hidden_dim=D, target_dims=(C,), projector_dim=16)
GAUSS = dict(policy="gaussian", group_size=4)
WEIGHTED = dict(sample_weight=1.0)
PERCEPTUAL = dict(sample_weight=1.0, perceptual_weight=1.0, perceptual_every=1)
DECODE = dict(decodability_weight=0.5, decodability_patch=1, decodability_channels=2)

#: field -> (the config around it, where its condition holds; the changed value)
PROBES = {
    "projector_dim": ({}, 12),
    "policy": ({"sample_weight": 0.0}, "gaussian"),
    "tau": ({}, 0.5),
    "group_size": (GAUSS, 6),
    "sigma": (GAUSS, 0.3),
    "space": (GAUSS, "euclidean"),
    "antithetic": (GAUSS, False),
    "control_variate": (GAUSS, True),
    "learn_sigma": (GAUSS, True),
    "sigma_final": ({**GAUSS, "sigma_final": 0.05, "sigma_decay_steps": 2}, 0.01),
    "sigma_decay_steps": ({**GAUSS, "sigma_final": 0.01, "sigma_decay_steps": 2}, 5),
    # the learned sigma, moved by the steps between calls, held at a bound
    "sigma_min": ({**GAUSS, "learn_sigma": True}, 0.1),
    "sigma_max": ({**GAUSS, "learn_sigma": True}, 0.1),
    "adv_scale": ({}, "none"),
    "adv_eps": ({}, 1.0),
    "adv_clip": ({}, 0.1),
    "policy_coeff": ({}, 2.0),
    "anchor_coeff": ({}, 0.0),
    "sample_weight": ({}, 1.0),
    "w_min": (WEIGHTED, 0.9),
    "w_max": (WEIGHTED, 1.1),
    "time_bins": (WEIGHTED, 2),
    "stats_momentum": (WEIGHTED, 0.9),
    "semantic_weight": (DECODE, 0.0),
    "fidelity_weight": (PERCEPTUAL, 3.0),  # its scale counts beside another sample-level reward
    "perceptual_weight": (WEIGHTED, 1.0),
    "perceptual_every": (PERCEPTUAL, 2),
    "perceptual_subset": (PERCEPTUAL, 2),
    "decodability_weight": ({}, 0.5),
    "decodability_patch": (DECODE, 2),
    "decodability_channels": (DECODE, 3),
    "decodability_hidden": (DECODE, 5),
    "target_norm": ({}, "zscore"),
    "zscore_alpha": ({"target_norm": "zscore"}, 0.0),
    "projector": ({"projector_dim": 2048}, "conv"),
    "projector_kernel": ({"projector": "conv", "projector_dim": 2048}, 1),
    "token_grid": ({"projector": "conv", "projector_dim": 2048}, (1, 4)),
    "time_weight": ({}, "sigmoid"),
    "time_weight_center": ({"time_weight": "sigmoid"}, 0.2),
    "time_weight_sharpness": ({"time_weight": "sigmoid"}, 2.0),
    "stop_step": ({}, 1),
    "stop_ramp": ({"stop_step": 3}, 2),
    "structure_coeff": ({}, 1.0),
    "adaptive": ({}, "achievability"),
    "adaptive_gain": ({"adaptive": "achievability"}, 4.0),
    "adaptive_min": ({"adaptive": "achievability", "adaptive_gain": 5.0}, 0.9),
    "adaptive_max": ({"adaptive": "achievability", "adaptive_gain": 5.0}, 1.05),
    "adaptive_momentum": ({"adaptive": "achievability"}, 0.9),
    "adaptive_terminate": ({"adaptive": "achievability"}, True),
    "adaptive_every": ({"adaptive": "achievability", "adaptive_gain": 5.0}, 2),
    "metrics_every": ({}, 2),
    "diagnostics_every": ({}, 0),
}
#: fields whose effect is on checks, the step or the shapes the module takes, tested on their own below
BEHAVIOUR = {"mode", "hidden_dim", "target_dims", "validate", "resample_tokens", "accumulation_steps",
             "perceptual_net", "max_action_elements"}

#: a value away from the default for the refusal test, where the probe's value is the default
OTHER = {"decodability_patch": 1, "perceptual_net": "alex", "max_action_elements": 64}

#: configs that break the conditions, tried in turn for each conditioned field
BREAKERS = [dict(mode="repa"), dict(policy_coeff=0.0), dict(policy="correspondence"), dict(policy="gaussian", group_size=4),
            dict(hidden_dim=None), dict(projector="conv", projector_dim=2048), dict(sample_weight=0.0), {}]


class FakeLPIPS(nn.Module):
    def forward(self, a, b):
        return (a - b).pow(2).mean(dim=(1, 2, 3), keepdim=True)


def decode(z):
    return z[:, :1].expand(-1, 3, -1, -1).tanh()


def fingerprint(kw, calls=3):
    """Losses, gradients (inputs and parameters) and metrics of ``calls`` training calls on fixed data,
    with an SGD step on the module's parameters between calls (a learned sigma moves)."""
    cfg = VRPOConfig(**{**BASE, **kw})
    torch.manual_seed(0)
    align = VRPOAlignment(cfg, perceptual_net=FakeLPIPS(), decode=decode)
    g = torch.Generator().manual_seed(1)
    p, ch = cfg.decodability_patch, cfg.decodability_channels
    out = []
    for _ in range(calls):
        h = torch.randn(B, N, cfg.hidden_dim or C, generator=g).requires_grad_(True)
        y = torch.randn(B, N, C, generator=g) + torch.arange(N).view(1, N, 1)  # tokens with a mean to z-score
        t, dl = torch.rand(B, generator=g), torch.rand(B, generator=g)
        x0 = torch.randn(B, ch, 2 * p, 2 * p, generator=g)
        o = align(h, y, t=t, denoise_loss=dl, x0_pred=x0 + 0.3 * torch.randn(x0.shape, generator=g), x0=x0)
        params = [q for q in align.parameters() if q.requires_grad]
        grads = torch.autograd.grad(o.loss, [h, *params], allow_unused=True)
        with torch.no_grad():
            for q, gq in zip(params, grads[1:]):
                if gq is not None:
                    q -= 20.0 * gq
        out.append(torch.cat([o.loss.detach().view(1)] + [x.flatten() for x in grads if x is not None]
                             + [torch.as_tensor(v, dtype=torch.float32).flatten() for v in o.metrics.values()]))
    return out


def differs(a, b):
    return any(x.shape != y.shape or not torch.allclose(x, y, atol=1e-7, rtol=1e-6, equal_nan=True) for x, y in zip(a, b))


def test_every_field_is_probed():
    names = {f.name for f in dataclasses.fields(VRPOConfig)}
    assert set(PROBES) | BEHAVIOUR == names and not set(PROBES) & BEHAVIOUR


@pytest.mark.parametrize("name", sorted(PROBES))
def test_an_option_changes_what_is_computed_where_its_condition_holds(name):
    around, value = PROBES[name]
    assert value != around.get(name, VRPOConfig.default(name))
    when = VRPOConfig.condition(name)
    cfg = VRPOConfig(**{**BASE, **around, name: value})
    assert when is None or when.holds(cfg)
    assert differs(fingerprint(around), fingerprint({**around, name: value})), f"{name}={value!r} changed nothing"


@pytest.mark.parametrize("name", sorted(f.name for f in dataclasses.fields(VRPOConfig) if VRPOConfig.condition(f.name)))
def test_an_option_is_refused_where_its_condition_does_not_hold(name):
    value = OTHER.get(name, PROBES.get(name, (None, None))[1])
    assert value != VRPOConfig.default(name)
    when = VRPOConfig.condition(name)
    broken = None
    for extra in BREAKERS:
        try:
            cfg = VRPOConfig(**acting_only({**BASE, **extra}))
        except ValueError:
            continue
        if not when.holds(cfg):
            broken = extra
            break
    assert broken is not None, f"no config breaks the condition of {name}"
    with pytest.raises(ValueError, match=rf"^{name}: acts only with .*which does not hold here, got {name}="):
        VRPOConfig(**{**acting_only({**BASE, **broken}), name: value})


# ----- the options that act on checks, the step and shapes --------------------------------------------

def test_validate_and_resample_tokens_change_what_is_accepted():
    h, y = torch.randn(2, N, C), torch.randn(2, N, C)
    bad = h.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        VRPOAlignment(target_dims=(C,))(bad, y)
    VRPOAlignment(target_dims=(C,), validate=False)(bad, y)  # not checked
    y9 = torch.randn(2, 9, C)
    with pytest.raises(ValueError):
        VRPOAlignment(target_dims=(C,))(h, y9)
    assert torch.isfinite(VRPOAlignment(target_dims=(C,), resample_tokens=True)(h, y9).loss)


def test_accumulation_steps_changes_the_step():
    h, y = torch.randn(2, N, C, requires_grad=True), torch.randn(2, N, C)
    one, two = VRPOAlignment(target_dims=(C,)), VRPOAlignment(target_dims=(C,), accumulation_steps=2)
    for _ in range(2):
        one(h, y), two(h, y)
    assert (one.step, two.step) == (2, 1)


def test_perceptual_net_and_max_action_elements_act():
    pytest.importorskip("lpips")
    a = VRPOAlignment(**PERCEPTUAL, decode=decode, perceptual_net="alex")
    assert a.sample_heads[1].backbone == "alex"
    # a cap below one chunk's size splits the actions into more chunks (memory: the result is the same draw)
    small = VRPOAlignment(target_dims=(C,), **GAUSS, max_action_elements=B * N * C)
    full = VRPOAlignment(target_dims=(C,), **GAUSS)
    assert len(small.policy.noise.starts((B, N, C))) > len(full.policy.noise.starts((B, N, C))) == 1
