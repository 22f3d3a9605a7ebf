"""Bad input, swept: every option and every input shape gets a clear error or a finite result.

Over the config (hypothesis): any combination of valid values builds a module whose loss and
gradients are finite; any single invalid value raises a ValueError naming the field and the value.
Over inputs: batch 0, 1, 2, one token, non-square grids, zero vectors, fp16/bf16/fp64,
non-contiguous tensors, ``t``/``denoise_loss`` as (B,), (B, 1), (B, 1, 1, 1); a refused call
changes no buffer and not the step counter. The kinds below are written from the options' help
text, independently of the package's table.
"""

import dataclasses
import re

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrpo_loss import VRPOAlignment, VRPOConfig
from vrpo_loss.config_checks import FIELDS

from conftest import acting_only

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeLPIPS(nn.Module):
    """A stand-in for LPIPS (no weights): mean squared difference per image."""

    def forward(self, a, b):
        return (a - b).pow(2).mean(dim=(1, 2, 3), keepdim=True)


def decode(x):  # latent (B, ch, H, W) -> image (B, 3, H, W) in [-1, 1]
    return x[:, :1].expand(-1, 3, -1, -1).tanh()


def snapshot(align):
    return {k: v.clone() for k, v in align.state_dict().items() if torch.is_tensor(v)}, align.step


def assert_unchanged(align, snap):
    state, step = snap
    assert align.step == step, "a refused call advanced the step counter"
    now = align.state_dict()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"a refused call changed {k}"


def all_finite(out, tensors):
    grads = [x.grad for x in tensors if x.grad is not None]
    values = [out.loss, out.per_sample, *out.metrics.values(), *grads]
    return all(bool(torch.isfinite(v).all()) for v in values)


# ----------------------------------------------------------------------------- the config
def test_every_field_has_a_row_in_the_table():
    assert set(FIELDS) == {f.name for f in dataclasses.fields(VRPOConfig)}


@st.composite
def valid_options(draw):
    f = lambda lo, hi: draw(st.floats(lo, hi))  # noqa: E731
    pick = lambda *xs: draw(st.sampled_from(xs))  # noqa: E731
    hidden = pick(None, 6)
    antithetic = draw(st.booleans())
    s_min = f(1e-3, 0.5)
    s_max = f(s_min, 2.0)
    learn = draw(st.booleans())
    sched = not learn and draw(st.booleans())
    stop = pick(None, 0, 1, 3)
    conv = hidden is not None and draw(st.booleans())
    adaptive = pick("none", "achievability", *(("agreement",) if hidden is not None else ()))
    return acting_only(dict(
        mode=pick("vrpo", "repa"), policy=pick("gaussian", "correspondence"), hidden_dim=hidden, target_dims=(pick(4, 8),),
        projector_dim=2048 if conv else draw(st.integers(1, 8)), tau=f(1e-3, 10.0), antithetic=antithetic,
        group_size=2 * draw(st.integers(1, 3)) if antithetic else draw(st.integers(2, 5)),
        sigma_min=s_min, sigma_max=s_max, sigma=f(s_min, s_max), space=pick("sphere", "euclidean"),
        control_variate=draw(st.booleans()), learn_sigma=learn, sigma_final=f(s_min, s_max) if sched else None,
        sigma_decay_steps=draw(st.integers(1, 5)) if sched else 0, max_action_elements=pick(1, 50, 1 << 26),
        adv_scale=pick("group", "batch", "none"), adv_eps=f(1e-6, 1.0), adv_clip=f(1e-2, 10.0),
        policy_coeff=pick(0.0, f(0.0, 10.0)), anchor_coeff=f(0.0, 10.0), sample_weight=f(-5.0, 5.0),
        w_min=f(0.0, 1.0), w_max=f(1.0, 10.0), time_bins=draw(st.integers(1, 12)), stats_momentum=f(1e-3, 1.0),
        semantic_weight=pick(0.0, f(0.0, 5.0)), fidelity_weight=pick(0.0, f(0.0, 5.0)), perceptual_weight=pick(0.0, 0.5),
        perceptual_every=draw(st.integers(1, 3)), perceptual_subset=draw(st.integers(1, 4)), perceptual_net=pick("vgg", "alex"),
        decodability_weight=pick(0.0, 0.5), decodability_patch=pick(1, 2), decodability_channels=pick(1, 3),
        decodability_hidden=draw(st.integers(1, 8)), target_norm=pick("none", "zscore"), zscore_alpha=f(0.0, 1.0),
        projector="conv" if conv else "mlp", projector_kernel=pick(1, 3), token_grid=pick(None, (2, 2)) if conv else None,
        time_weight=pick("uniform", "sigmoid"), time_weight_center=f(0.0, 1.0), time_weight_sharpness=f(1e-2, 50.0),
        stop_step=stop, stop_ramp=draw(st.integers(0, stop)) if stop else 0, structure_coeff=pick(0.0, f(0.0, 5.0)),
        resample_tokens=draw(st.booleans()), validate=draw(st.booleans()), diagnostics_every=draw(st.integers(0, 3)),
        metrics_every=draw(st.integers(1, 3)), accumulation_steps=draw(st.integers(1, 3)),
        adaptive=adaptive, adaptive_gain=f(0.1, 5.0), adaptive_min=f(0.0, 1.0), adaptive_max=f(1.0, 5.0),
        adaptive_momentum=f(1e-3, 1.0), adaptive_terminate=adaptive != "none" and draw(st.booleans()),
        adaptive_every=draw(st.integers(1, 3)) if adaptive != "none" else 1,
    ))


@SETTINGS
@given(kw=valid_options(), seed=st.integers(0, 2**16))
def test_any_valid_config_gives_a_finite_loss_and_gradient(kw, seed):
    assert set(kw) == set(FIELDS)  # the strategy covers every option
    needs_head = kw["mode"] == "vrpo" and kw["policy_coeff"] > 0 and not (kw["semantic_weight"] or kw["decodability_weight"])
    if needs_head:  # the one rule that needs the heads (user heads may be token heads): refused at construction
        with pytest.raises(ValueError, match="^policy_coeff: the policy term needs a token-level reward head"):
            VRPOAlignment(VRPOConfig(**kw), perceptual_net=FakeLPIPS(), decode=decode)
        return
    torch.manual_seed(seed)
    align = VRPOAlignment(VRPOConfig(**kw), perceptual_net=FakeLPIPS(), decode=decode)
    b, n, c = 3, 4, kw["target_dims"][0]
    p, ch = kw["decodability_patch"], kw["decodability_channels"]
    for _ in range(2):
        h = torch.randn(b, n, kw["hidden_dim"] or c, requires_grad=True)
        x0 = torch.randn(b, ch, 2 * p, 2 * p)
        out = align(h, torch.randn(b, n, c), t=torch.rand(b), denoise_loss=torch.rand(b), x0_pred=x0 + 0.1, x0=x0)
        out.loss.backward()
        assert all_finite(out, [h, *align.parameters()]), kw


def _reals(low=None, high=None, open_low=False):
    bad = [float("nan"), float("inf"), -float("inf"), "0.5", True, None, torch.tensor(0.5)]
    if low is not None:
        bad.append(low - 1.0)
        if open_low:
            bad.append(low)
    if high is not None:
        bad.append(high + 0.5)
    return bad


def _ints(low, optional=False):
    bad = [1.5, float("nan"), True, "2", low - 1] + ([] if optional else [None])
    return bad


def _choice():
    return ["nope", None, 1, ""]


BOOL = [1, 0, "True", None]
# field -> (invalid values, options that make them count); written from the help text. perceptual_net=None is
# the constructor's own default (no ready LPIPS module), so it is not among the invalid values.
INVALID = {
    "mode": (_choice(), {}), "policy": (_choice(), {}), "space": (_choice(), {}), "adv_scale": (_choice(), {}),
    "perceptual_net": (["nope", 1, ""], {}), "target_norm": (_choice(), {}), "projector": (_choice(), {}),
    "time_weight": (_choice(), {}),
    "hidden_dim": ([0, -3, 2.0, True, "8"], {}), "target_dims": ([(), (0,), (8, -1), (8.0,), "8", None, (True,)], {}),
    "projector_dim": (_ints(1), {}), "time_bins": (_ints(1), {}), "perceptual_every": (_ints(1), {}),
    "perceptual_subset": (_ints(1), {}), "decodability_patch": (_ints(1), {}), "decodability_channels": (_ints(1), {}),
    "decodability_hidden": (_ints(1), {}), "max_action_elements": (_ints(1), {}), "sigma_decay_steps": (_ints(0), {}),
    "diagnostics_every": (_ints(0), {}), "metrics_every": (_ints(1), {}), "stop_ramp": (_ints(0) + [5], {"stop_step": 4}),
    "stop_step": (_ints(0, optional=True), {}), "group_size": (_ints(1) + [3], {"policy": "gaussian"}),
    "projector_kernel": (_ints(1) + [2, 4], {}), "token_grid": ([(2,), (2, 0), (2.0, 2), "2x2", 4, (2, 2, 1)], {"projector": "conv", "hidden_dim": 6}),
    "antithetic": (BOOL, {}), "control_variate": (BOOL, {}), "learn_sigma": (BOOL, {}), "resample_tokens": (BOOL, {}),
    "validate": (BOOL, {}),
    "tau": (_reals(1e-4) + [0.0, 9e-5, 1e-45], {}), "sigma": (_reals(1e-3, 1.0), {}),
    "sigma_min": (_reals(0.0, 0.1, open_low=True), {}), "sigma_max": (_reals(0.0, open_low=True) + [0.05], {}),
    "sigma_final": ([v for v in _reals(1e-3, 1.0) if v is not None] + [0.5], {}),
    "adv_eps": (_reals(0.0, open_low=True), {}), "adv_clip": (_reals(0.0, open_low=True), {}),
    "policy_coeff": (_reals(0.0), {}), "anchor_coeff": (_reals(0.0), {}), "sample_weight": (_reals(), {}),
    "w_min": (_reals(0.0, 1.0), {}), "w_max": (_reals(1.0) + [0.9], {}), "stats_momentum": (_reals(0.0, 1.0, open_low=True), {}),
    "semantic_weight": (_reals(0.0), {}), "fidelity_weight": (_reals(0.0), {}), "perceptual_weight": (_reals(0.0), {}),
    "decodability_weight": (_reals(0.0), {}), "zscore_alpha": (_reals(0.0, 1.0), {}),
    "time_weight_center": (_reals(0.0, 1.0), {}), "time_weight_sharpness": (_reals(0.0, open_low=True), {}),
    "structure_coeff": (_reals(0.0), {}),
    "adaptive": (_choice() + ["agreement"], {"hidden_dim": None}),
    "adaptive_gain": (_reals(0.0) + [0.0], {"adaptive": "achievability"}),
    "adaptive_min": (_reals(0.0, 1.0), {"adaptive": "achievability"}),
    "adaptive_max": (_reals(1.0) + [0.9], {"adaptive": "achievability"}),
    "adaptive_momentum": (_reals(0.0, 1.0, open_low=True), {"adaptive": "achievability"}),
    "adaptive_terminate": (BOOL + [True], {}),
    "adaptive_every": (_ints(1), {"adaptive": "achievability"}),
    "accumulation_steps": (_ints(1), {}),
}
CASES = [(name, v, ctx) for name, (values, ctx) in INVALID.items() for v in values]


def test_the_invalid_table_covers_every_field():
    assert set(INVALID) == {f.name for f in dataclasses.fields(VRPOConfig)}


@SETTINGS
@given(case=st.sampled_from(CASES))
def test_any_single_invalid_value_raises_naming_it(case):
    name, value, ctx = case
    VRPOConfig(**ctx)  # the context alone is valid
    with pytest.raises(ValueError) as err:
        VRPOAlignment(**ctx, **{name: value})
    msg = str(err.value)
    assert re.search(rf"\b{name}\b", msg), msg  # the field is named
    assert repr(value) in msg or str(value) in msg, msg  # and the value that came


@pytest.mark.parametrize("name, value", [("policy_coeff", float("nan")), ("anchor_coeff", float("inf")),
                                         ("sample_weight", float("nan")), ("w_max", float("inf")), ("tau", float("nan"))])
def test_non_finite_floats_are_refused(name, value):
    with pytest.raises(ValueError, match=rf"^{name}: expected .*finite.*, got {value!r}"):
        VRPOAlignment(**{name: value})


def test_numbers_are_normalised_and_lists_become_tuples():
    np = pytest.importorskip("numpy")
    cfg = VRPOConfig(tau=np.float32(0.25), time_bins=np.int64(4), target_dims=[8, 4], sample_weight=1)
    assert type(cfg.tau) is float and cfg.tau == 0.25 and type(cfg.time_bins) is int and cfg.target_dims == (8, 4)
    assert type(cfg.sample_weight) is float


@pytest.mark.parametrize("kw, match", [
    (dict(policy="gaussian", sigma_final=0.05), r"^sigma_final: a schedule needs sigma_decay_steps >= 1"),
    (dict(policy="gaussian", sigma_decay_steps=10), r"^sigma_decay_steps: expected 0 without sigma_final"),
    (dict(policy="gaussian", sigma_final=0.05, sigma_decay_steps=10, learn_sigma=True), r"^sigma_final: learn_sigma=True"),
    (dict(policy="gaussian", learn_sigma=True, sigma_min=0.5, sigma_max=0.2, sigma=0.3),
     r"^sigma_min, sigma_max: expected sigma_min <= sigma_max"),
    # the generic rule: an option away from its default where its condition does not hold
    (dict(token_grid=(2, 2)), r"^token_grid: acts only with projector='conv', which does not hold here, got token_grid=\(2, 2\)"),
    (dict(perceptual_weight=1.0), r"^perceptual_weight: acts only with mode='vrpo', sample_weight != 0"),
    (dict(mode="repa", sample_weight=1.0), r"^sample_weight: acts only with mode='vrpo'"),
    (dict(policy="gaussian", tau=0.05), r"^tau: acts only with .*policy='correspondence'"),
    (dict(policy_coeff=0.0, policy="gaussian"), r"^policy: acts only with mode='vrpo', policy_coeff > 0"),
    (dict(sigma_max=2.0, policy="gaussian"), r"^sigma_max: acts only with .*learn_sigma=True"),
    (dict(adaptive_terminate=True), r"^adaptive_terminate: acts only with adaptive set"),
    (dict(hidden_dim=None, projector_dim=64), r"^projector_dim: acts only with hidden_dim set"),
])
def test_options_that_would_do_nothing_or_contradict_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        VRPOConfig(**kw)


def test_perceptual_net_as_a_string_is_the_config_field():
    # the constructor's perceptual_net (a ready LPIPS module) shares its name with the config field (the backbone)
    on = dict(perceptual_weight=1.0, sample_weight=1.0)
    assert VRPOAlignment(perceptual_net="alex", **on).config.perceptual_net == "alex"
    with pytest.raises(ValueError, match="^perceptual_net: expected one of 'vgg', 'alex', 'squeeze', got 'resnet'"):
        VRPOAlignment(perceptual_net="resnet", **on)
    net = FakeLPIPS()
    align = VRPOAlignment(perceptual_net=net, **on)
    assert align.config.perceptual_net == "vgg" and align.sample_heads[1].net is net


def test_head_weight_must_be_finite():
    from vrpo_loss.rewards import SemanticReward

    with pytest.raises(ValueError, match="weight: expected a finite value >= 0, got nan"):
        SemanticReward(weight=float("nan"))


# ----------------------------------------------------------------------------- the inputs
C = 8
PEERS = dict(target_norm="zscore", time_weight="sigmoid", structure_coeff=0.5)
CONFIGS = {
    "correspondence": dict(policy="correspondence", sample_weight=0.5),
    "gaussian": dict(policy="gaussian", group_size=4, sample_weight=0.5, learn_sigma=True),
    "gaussian-cv-euclidean": dict(policy="gaussian", group_size=3, antithetic=False, control_variate=True, space="euclidean"),
    "repa": dict(mode="repa"),
    "peers-correspondence": dict(policy="correspondence", **PEERS, sample_weight=0.5, stop_step=50, stop_ramp=10),
    "peers-gaussian": dict(policy="gaussian", group_size=4, **PEERS, sample_weight=0.5),
    "peers-repa": dict(mode="repa", **PEERS),
    "projector": dict(hidden_dim=6, projector_dim=5, sample_weight=-0.5, decodability_weight=0.5),
    "conv-projector": dict(hidden_dim=6, projector="conv", mode="repa", structure_coeff=0.5),
    "stopped": dict(policy="gaussian", group_size=2, stop_step=0),
}


def build(name, **extra):
    torch.manual_seed(0)
    align = VRPOAlignment(**{"hidden_dim": None, "target_dims": (C,), **CONFIGS[name], **extra})
    return align, align.config.hidden_dim or C


def warm(align, d, n=4):
    """Two training calls, so that the running statistics and the step are not at their initial values."""
    torch.manual_seed(123)
    for _ in range(2):
        align(torch.randn(3, n, d), torch.randn(3, n, C), t=torch.rand(3), denoise_loss=torch.rand(3), x0=torch.randn(3, 4, 4, 4))


def call(align, h, y, t_shape=None, **kw):
    b = h.shape[0]
    shape = t_shape if t_shape is not None else (b,)
    return align(h, y, t=torch.rand(shape), denoise_loss=torch.rand(shape), x0=torch.randn(b, 4, 4, 4), **kw)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("t_shape", ["B", "B1", "B111"])
def test_small_batches_and_time_shapes_give_finite_results(name, b, t_shape):
    align, d = build(name)
    warm(align, d)
    h = torch.randn(b, 4, d, requires_grad=True)
    out = call(align, h, torch.randn(b, 4, C), t_shape={"B": (b,), "B1": (b, 1), "B111": (b, 1, 1, 1)}[t_shape])
    out.loss.backward()
    assert out.per_sample.shape == (b,) and all_finite(out, [h, *align.parameters()])


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(name, dtype):
    align, d = build(name)
    ref, _ = build(name)
    warm(align, d)
    warm(ref, d)
    h = torch.randn(2, 4, d, dtype=dtype, requires_grad=True)
    y = torch.randn(2, 4, C, dtype=dtype)
    torch.manual_seed(1)
    out = call(align, h, y)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and h.grad.dtype == dtype and all_finite(out, [h, *align.parameters()])
    torch.manual_seed(1)
    want = call(ref, h.detach().float(), y.float())  # the module computes in fp32: the same loss
    torch.testing.assert_close(out.loss, want.loss)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_non_contiguous_and_zero_inputs(name):
    align, d = build(name)
    ref, _ = build(name)
    warm(align, d)
    warm(ref, d)
    h = torch.randn(2, d, 4).transpose(1, 2).requires_grad_(True)  # (B, N, D), not contiguous
    y = torch.randn(2, C, 4).transpose(1, 2)
    assert not h.is_contiguous() and not y.is_contiguous()
    torch.manual_seed(1)
    out = call(align, h, y)
    out.loss.backward()
    assert all_finite(out, [h, *align.parameters()])
    torch.manual_seed(1)
    torch.testing.assert_close(out.loss, call(ref, h.detach().contiguous(), y.contiguous()).loss)
    for h, y in [(torch.zeros(2, 4, d), torch.randn(2, 4, C)), (torch.randn(2, 4, d), torch.zeros(2, 4, C)),
                 (torch.zeros(2, 4, d), torch.zeros(2, 4, C))]:
        h.requires_grad_(True)
        out = call(align, h, y)
        out.loss.backward()
        assert all_finite(out, [h, *align.parameters()]), "zero vectors"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_token_counts_one_and_non_square(name):
    align, d = build(name, decodability_weight=0.0)
    warm(align, d)
    cfg = align.config
    snap = snapshot(align)
    # one token: zscore needs two, the conv projector sees a 1 x 1 grid
    h1 = torch.randn(2, 1, d, requires_grad=True)
    if cfg.target_norm == "zscore" and not name.startswith("stopped"):
        with pytest.raises(ValueError, match="^target_norm: 'zscore'.*N >= 2"):
            align(h1, torch.randn(2, 1, C), t=torch.rand(2))
        assert_unchanged(align, snap)
    else:
        out = align(h1, torch.randn(2, 1, C), t=torch.rand(2))
        out.loss.backward()
        assert all_finite(out, [h1, *align.parameters()])
    snap = snapshot(align)
    h6 = torch.randn(2, 6, d, requires_grad=True)
    # non-square counts: equal counts are fine (but not for the conv projector without token_grid)
    if cfg.projector == "conv":
        with pytest.raises(ValueError, match="^token_grid: 6 tokens are not a square grid"):
            align(h6, torch.randn(2, 6, C), t=torch.rand(2))
        assert_unchanged(align, snap)
    else:
        assert torch.isfinite(align(h6, torch.randn(2, 6, C), t=torch.rand(2)).loss)
    snap = snapshot(align)
    # different counts: refused without resample_tokens; with it, only square grids resample
    with pytest.raises(ValueError, match=r"^targets\[0\]: 9 encoder tokens but 6 diffusion tokens.*resample_tokens=True"):
        align(h6, torch.randn(2, 9, C), t=torch.rand(2))
    assert_unchanged(align, snap)
    rs, _ = build(name, decodability_weight=0.0, resample_tokens=True)
    warm(rs, d)
    snap = snapshot(rs)
    if not name.startswith("stopped"):
        with pytest.raises(ValueError, match=r"^targets\[0\]: can only resample square token grids, got 9 tokens for 6"):
            rs(h6, torch.randn(2, 9, C), t=torch.rand(2))
        assert_unchanged(rs, snap)
    h4 = torch.randn(2, 4, d, requires_grad=True)
    out = rs(h4, torch.randn(2, 9, C), t=torch.rand(2))
    out.loss.backward()
    assert all_finite(out, [h4, *rs.parameters()])


# ----------------------------------------------------------------------------- the empty batch
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_is_a_connected_zero_that_changes_no_statistic(name, training):
    align, d = build(name)
    warm(align, d)
    align.train(training)
    state, step = snapshot(align)
    h = torch.randn(0, 4, d, requires_grad=True)
    out = call(align, h, torch.randn(0, 4, C))
    assert out.loss.item() == 0.0 and out.per_sample.shape == (0,)
    assert not [k for k, v in out.metrics.items() if not torch.isfinite(v).all()]
    out.loss.backward()
    assert h.grad is not None and h.grad.shape == h.shape
    for p in align.parameters():  # every parameter gets a zero gradient, so DDP's all-reduce sees it
        assert p.grad is not None and p.grad.abs().sum() == 0, p.shape
    assert_unchanged(align, (state, align.step))  # buffers as they were
    assert align.step == step + int(training)  # a training call: the step advances on every rank alike


def test_empty_batch_takes_the_statistics_collective(monkeypatch):
    # a rank with no samples must enter the same all-reduce as the others, with zero counts
    import vrpo_loss.statistics as statistics

    seen = []
    monkeypatch.setattr(statistics, "all_reduce_sum", lambda x: seen.append(x.clone()) or x)
    align, d = build("correspondence")
    call(align, torch.randn(3, 4, d), torch.randn(3, 4, C))
    call(align, torch.randn(0, 4, d), torch.randn(0, 4, C))
    assert len(seen) == 2 and seen[0].shape == seen[1].shape and seen[1].abs().sum() == 0 and seen[0][0].sum() == 3
    align, d = build("repa")
    call(align, torch.randn(0, 4, d), torch.randn(0, 4, C))
    assert len(seen) == 2  # REPA's mode has no collective, on any rank


# ----------------------------------------------------------------------------- refused calls change nothing
def _bad_calls(d):
    h, y = torch.randn(3, 4, d), torch.randn(3, 4, C)
    nan = h.clone()
    nan[0, 0, 0] = float("nan")
    yield "features", dict(features=nan, targets=y, t=torch.rand(3)), r"features\[0\]: found 1 NaN/Inf"
    yield "t", dict(features=h, targets=y, t=torch.rand(3) + 1), r"t: expected finite values in \[0, 1\]"
    yield "denoise_loss", dict(features=h, targets=y, t=torch.rand(3), denoise_loss=torch.tensor([1.0, float("inf"), 0.0])), "denoise_loss: found 1"
    yield "t shape", dict(features=h, targets=y, t=torch.rand(2)), r"t: expected 3 values"
    yield "targets width", dict(features=h, targets=torch.randn(3, 4, C + 1)), r"targets\[0\]: expected last dimension"
    yield "x0", dict(features=h, targets=y, t=torch.rand(3), x0=torch.randn(3, 4, 6, 6)), r"x0: its patches have shape"


@pytest.mark.parametrize("name", ["correspondence", "gaussian", "projector", "peers-gaussian"])
def test_refused_calls_change_no_buffer_and_not_the_step(name):
    align, d = build(name, decodability_weight=0.5)
    warm(align, d)
    for what, kw, match in _bad_calls(d):
        snap = snapshot(align)
        with pytest.raises((ValueError, TypeError), match=match):
            align(**{"x0": torch.randn(3, 4, 4, 4), **kw})
        assert_unchanged(align, snap)
    snap = snapshot(align)
    with pytest.raises(ValueError, match="x0: the decodability reward needs the clean input x0"):
        align(torch.randn(3, 4, d), torch.randn(3, 4, C), t=torch.rand(3), denoise_loss=torch.rand(3))
    assert_unchanged(align, snap)


def test_tau_is_bounded_where_fp32_stays_finite():
    # Planted bug (tau accepted down to any positive value): tau=1e-45 built a module whose loss was NaN
    # (1/tau overflows fp32, the logits cos/tau become +-inf and the softmax NaN).
    from vrpo_loss.config_checks import TAU_MIN

    for tau in (1e-45, 1e-39, TAU_MIN / 2):
        with pytest.raises(ValueError, match=rf"^tau: expected a value >= 0.0001 .*got {tau!r}; .*hard argmax"):
            VRPOAlignment(hidden_dim=None, target_dims=(8,), tau=tau)
    # at the bound everything stays finite, for tiny and large features, metrics and diagnostics included
    align = VRPOAlignment(hidden_dim=6, target_dims=(8,), projector_dim=12, tau=TAU_MIN, metrics_every=1,
                          diagnostics_every=1, sample_weight=0.5)
    for scale in (1e-6, 1.0, 1e4):
        h = (torch.randn(3, 5, 6) * scale).requires_grad_(True)
        out = align(h, torch.randn(3, 5, 8), t=torch.rand(3), denoise_loss=torch.rand(3))
        out.loss.backward()
        assert all_finite(out, [h, *align.parameters()])
        assert all(torch.isfinite(v).all() for v in out.metrics.values())
