"""The functional objective (``vrpo_loss.alignment_loss``): the module's loss and gradient for every
option group, float64 references for the peer stages, and the one rule of the per-sample factors."""

import dataclasses

import pytest
import torch
from test_peers import repa_ref, sigmoid_ref, structure_ref, zscore_ref

import vrpo_loss.alignment as alignment_module
from vrpo_loss import VRPOAlignment, VRPOConfig, alignment_loss
from vrpo_loss.config import GROUPS as OPTION_GROUPS

B, N, C = 4, 9, 6  # a 3x3 token grid

# one configuration per option group (the options table's sections, VRPOConfig's GROUPS), away from the defaults
GROUPS = {
    "repa": dict(mode="repa"),
    "correspondence policy": dict(tau=0.3),
    "gaussian policy": dict(policy="gaussian", group_size=4, sigma=0.2),
    "advantage": dict(adv_scale="batch", adv_clip=1.5, adv_eps=1e-3),
    "objective": dict(anchor_coeff=0.5, policy_coeff=2.0),
    "anchor only": dict(policy_coeff=0.0),
    "sample-level weighting": dict(sample_weight=0.8, w_min=0.3, w_max=3.0),
    "reward heads": dict(decodability_weight=0.5, decodability_hidden=8),
    "peers, vrpo": dict(target_norm="zscore", structure_coeff=0.5, time_weight="sigmoid", stop_step=3, stop_ramp=3),
    "peers, repa": dict(mode="repa", target_norm="zscore", zscore_alpha=0.5, structure_coeff=0.3, time_weight="sigmoid",
                        time_weight_center=0.5),
    "projector": dict(hidden_dim=5, projector_dim=16),
    "adaptive strength": dict(adaptive="achievability", adaptive_gain=2.0, adaptive_terminate=True),
    "input handling, metrics and the step": dict(metrics_every=2, diagnostics_every=1, accumulation_steps=2),
}


def _inputs(seed, d=C):
    g = torch.Generator().manual_seed(seed)
    return dict(h=torch.randn(B, N, d, generator=g, requires_grad=True), y=torch.randn(B, N, C, generator=g) + 0.3,
                t=torch.rand(B, generator=g), denoise_loss=torch.rand(B, generator=g), x0=torch.randn(B, 4, 6, 6, generator=g))


def test_every_option_group_has_a_case():
    groups = {f.name: f.metadata["group"] for f in dataclasses.fields(VRPOConfig)}
    covered = {groups[k] for kw in GROUPS.values() for k in kw}
    assert covered == set(OPTION_GROUPS), set(OPTION_GROUPS) - covered


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_functional_equals_the_module_loss_and_gradient(group, monkeypatch):
    """Three training calls (the running statistics and the step move); on each, ``alignment_loss`` given
    the module's projection, policy, heads and stateful factors gives the module's loss, per-sample loss,
    gradient on the features and on the module's parameters."""
    kw = dict(GROUPS[group])
    d = kw.get("hidden_dim", C)
    kw.setdefault("hidden_dim", None)
    align = VRPOAlignment(target_dims=(C,), decodability_patch=2, **kw)
    seen = {}
    real_terms, real_factors = alignment_module.token_terms, alignment_module.factors_and_reduction

    def spy_terms(mus, ys, ctx, cfg, **kw):  # the module's pipeline: terms, then factors and reduction
        seen.update(kw, step=ctx.step)
        return real_terms(mus, ys, ctx, cfg, **kw)

    def spy_factors(terms, ctx, cfg, **factors):
        seen.update(factors)
        return real_factors(terms, ctx, cfg, **factors)

    monkeypatch.setattr(alignment_module, "token_terms", spy_terms)
    monkeypatch.setattr(alignment_module, "factors_and_reduction", spy_factors)
    for call in range(3):
        x = _inputs(call, d)
        step, before = align.step, (align.clock.step, align.clock.micro)
        out = align(x["h"], x["y"], t=x["t"], denoise_loss=x["denoise_loss"], x0=x["x0"])
        params = [p for p in align.parameters() if p.requires_grad]
        g_mod = torch.autograd.grad(out.loss, [x["h"], *params], allow_unused=True)
        h2 = x["h"].detach().clone().requires_grad_(True)
        mu = align.project([h2])[0] if align.projectors is not None else h2
        after = (align.clock.step, align.clock.micro)
        align.clock.step, align.clock.micro = before  # the module's Gaussian policy reads the clock the call advanced
        fn = alignment_loss(mu, x["y"], t=x["t"], config=align.config, policy=align.policy, heads=align.token_heads,
                            weight=seen["weight"], strength=seen["strength"], step=step, denoise_loss=x["denoise_loss"],
                            x0=x["x0"], metrics=seen["metrics"], diagnostics=seen["diagnostics"])
        g_fn = torch.autograd.grad(fn.loss, [h2, *params], allow_unused=True)
        align.clock.step, align.clock.micro = after
        torch.testing.assert_close(fn.loss, out.loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fn.per_sample, out.per_sample, rtol=1e-6, atol=1e-7)
        for a, b in zip(g_fn, g_mod):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert set(fn.terms) == set(out.terms)
        with torch.no_grad():  # an optimizer step, so the next call sees moved parameters
            for p, g in zip(params, g_mod[1:]):
                if g is not None:
                    p -= 0.1 * g


def test_peer_stages_against_float64_references():
    """z-scored targets, structure term, time weight and stop ramp composed in REPA's mode, against loops:
    ``B w_b / sum w * stop * (repa_b + s * structure_b)`` on the z-scored targets."""
    x = _inputs(7)
    h, y, t = x["h"], x["y"], x["t"]
    alpha, s, c, k = 0.7, 0.4, 0.6, 12.0
    out = alignment_loss(h, y, t=t, mode="repa", target_norm="zscore", zscore_alpha=alpha, structure_coeff=s,
                         time_weight="sigmoid", time_weight_center=c, time_weight_sharpness=k, stop_step=10, stop_ramp=4, step=8)
    zy = zscore_ref(y, alpha)
    w = sigmoid_ref(t, c, k)
    stop = (10 - 8) / 5
    want = B * w / w.sum() * stop * (repa_ref(h, zy) + s * structure_ref(h, zy))
    torch.testing.assert_close(out.per_sample.double(), want, rtol=1e-5, atol=1e-6)
    g = torch.autograd.grad(out.loss, h)[0]
    hd = h.detach().double().requires_grad_(True)
    want_d = (B * w / w.sum() * stop * (repa_ref(hd, zy) + s * structure_ref(hd, zy))).mean()
    torch.testing.assert_close(g.double(), torch.autograd.grad(want_d, hd)[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.terms["anchor"].double(), 1 + repa_ref(h, zy), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["structure"].double(), structure_ref(h, zy), rtol=1e-5, atol=1e-6)


def test_every_alignment_term_takes_the_factor_and_head_losses_do_not():
    """The one rule: anchor, policy and structure terms of a sample all scale by its factor (here the time
    weight and a sample weight); the decodability head's own loss (on detached tokens) is not scaled."""
    x = _inputs(3)
    h, y, t = x["h"], x["y"], x["t"]
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), decodability_weight=0.5, decodability_hidden=8,
                          decodability_patch=2, structure_coeff=0.5)
    common = dict(config=align.config, policy=align.policy, heads=align.token_heads, x0=x["x0"], step=0)
    weight = torch.tensor([0.5, 1.5, 1.0, 2.0])
    plain = alignment_loss(h, y, t=t, **common)
    scaled = alignment_loss(h, y, t=t, weight=weight, time_weight="sigmoid", **common)
    w = sigmoid_ref(t, 0.7, 20.0)
    factor = (B * w / w.sum()).float() * weight
    v = torch.rand(B)
    aux = plain.per_sample - _alignment_only(plain, align)
    torch.testing.assert_close(scaled.per_sample, factor * (plain.per_sample - aux) + aux, rtol=1e-5, atol=1e-6)
    (g_scaled,) = torch.autograd.grad((scaled.per_sample * v).sum(), h)
    (g_plain,) = torch.autograd.grad((plain.per_sample * v * factor).sum(), h)
    torch.testing.assert_close(g_scaled, g_plain, rtol=1e-5, atol=1e-7)
    head = list(align.token_heads[1].parameters())
    torch.testing.assert_close(torch.autograd.grad(scaled.loss, head), torch.autograd.grad(plain.loss, head))
    assert plain.metrics["loss_heads"] > 0


def _alignment_only(out, align):
    """The alignment part of a per-sample loss from its named terms (coefficients of ``align``'s config)."""
    c = align.config
    return c.anchor_coeff * out.terms["anchor"] + c.policy_coeff * out.terms["policy"] + c.structure_coeff * out.terms["structure"]


def test_anchor_metrics_mean_the_same_in_both_modes():
    """``loss_anchor`` is ``1 - mean cos`` and ``cos`` its complement, in REPA's mode and in VRPO's."""
    x = _inputs(5)
    want = 1 + repa_ref(x["h"], x["y"]).mean()
    for kw in (dict(mode="repa"), dict(policy_coeff=0.0), dict()):
        out = VRPOAlignment(hidden_dim=None, target_dims=(C,), **kw)(x["h"], x["y"], t=x["t"])
        torch.testing.assert_close(out.metrics["loss_anchor"].double(), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.metrics["cos"].double(), 1 - want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.terms["anchor"].mean().double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw, arg", [(dict(sample_weight=0.5), "weight"), (dict(adaptive="achievability"), "strength"),
                                     (dict(stop_step=4), "step"), (dict(time_weight="sigmoid"), "t")])
def test_state_the_function_cannot_have_is_asked_for_by_name(kw, arg):
    x = _inputs(0)
    with pytest.raises(ValueError, match=rf"^{arg}: "):
        alignment_loss(x["h"], x["y"], **kw)
