import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vrpo_loss import RewardHead, VRPOAlignment

from conftest import repa_loop_loss

B, N, D = 4, 9, 12
DIMS = (8, 6)


def _gaussian(policy, **kw):
    """Options of the Gaussian policy (a group of 4), given only with it: elsewhere they would be refused."""
    return dict(group_size=4, **kw) if policy == "gaussian" else {}


def _inputs(encoders=1, dims=DIMS, dtype=torch.float32):
    h = [torch.randn(B, N, D, dtype=dtype, requires_grad=True) for _ in range(encoders)]
    y = [torch.randn(B, N, dims[e], dtype=dtype) for e in range(encoders)]
    return h, y


@pytest.mark.parametrize("encoders", [1, 2])
@pytest.mark.parametrize("projected", [False, True])
def test_repa_mode_equals_repa_formula(encoders, projected):
    dims = DIMS[:encoders]
    if projected:
        align = VRPOAlignment(hidden_dim=None, target_dims=dims, mode="repa")
        feats = [torch.randn(B, N, c, requires_grad=True) for c in dims]
        zs_tilde = feats
    else:
        align = VRPOAlignment(hidden_dim=D, target_dims=dims, projector_dim=16, mode="repa")
        feats = [torch.randn(B, N, D, requires_grad=True) for _ in dims]
        zs_tilde = [p(h) for p, h in zip(align.projectors, feats)]
    targets = [torch.randn(B, N, c) for c in dims]
    out = align(feats if encoders > 1 else feats[0], targets if encoders > 1 else targets[0])
    ref = repa_loop_loss(zs_tilde, targets)
    torch.testing.assert_close(out.loss, ref)
    params = list(feats) + list(align.parameters())
    g = torch.autograd.grad(out.loss, params)
    g_ref = torch.autograd.grad(ref, params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    assert out.per_sample.shape == (B,)
    torch.testing.assert_close(out.per_sample.mean(), out.loss)


def test_vrpo_without_policy_and_weighting_has_repa_gradient():
    align = VRPOAlignment(hidden_dim=D, target_dims=DIMS, projector_dim=16, policy_coeff=0.0, sample_weight=0.0)
    h, y = _inputs(2)
    out = align(h, y, t=torch.rand(B), denoise_loss=torch.rand(B))
    zs_tilde = [p(x) for p, x in zip(align.projectors, h)]
    ref = repa_loop_loss(zs_tilde, y)
    torch.testing.assert_close(out.loss, ref + 1.0)  # 1 - cos: REPA's loss plus a constant
    params = h + list(align.parameters())
    for a, b in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b)


def test_sample_weights_from_time_binned_fidelity():
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), policy_coeff=0.0, sample_weight=1.0)
    feats = torch.randn(B, N, 8, requires_grad=True)
    y = torch.randn(B, N, 8)
    t = torch.tensor([0.05, 0.06, 0.55, 0.56])
    loss = torch.tensor([0.1, 0.9, 0.2, 0.8])  # within each bin, sample 0/2 denoise better
    out = align(feats, y, t=t, denoise_loss=loss)
    w = out.per_sample / (1 - F.cosine_similarity(feats, y, dim=-1)).mean(-1)
    # each bin holds two samples; fidelity rewards -0.1/-0.9 and -0.2/-0.8 normalise to +-0.4/(0.4+eps), +-0.3/(0.3+eps)
    a = torch.tensor([0.4 / 0.4001, -0.4 / 0.4001, 0.3 / 0.3001, -0.3 / 0.3001])
    raw = (1 + a).clamp(0.5, 2.0)
    torch.testing.assert_close(w.detach(), (raw / raw.mean()).clamp(0.5, 2.0))  # batch mean one


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_gradient_routing(policy):
    align = VRPOAlignment(hidden_dim=D, target_dims=(8,), projector_dim=16, policy=policy, **_gaussian(policy, learn_sigma=True),
                          decodability_weight=0.5, decodability_patch=1, decodability_channels=2)
    h = torch.randn(B, N, D, requires_grad=True)
    y = torch.randn(B, N, 8, requires_grad=True)
    x0 = torch.randn(B, 2, 3, 3)
    out = align(h, y, t=torch.rand(B), denoise_loss=torch.rand(B), x0=x0)
    out.loss.backward()
    assert y.grad is None  # nothing flows into the targets
    assert h.grad is not None and h.grad.abs().sum() > 0
    for p in align.projectors.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    dec = align.token_heads[1]
    for p in dec.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0  # trained by its own loss
    if policy == "gaussian":
        assert align.policy.log_sigma[0].grad.abs().sum() > 0
    for v in out.metrics.values():
        assert not v.requires_grad and v.dim() == 0


def test_decodability_head_does_not_push_the_projector():
    """The head's supervised loss fits on mu.detach(): alone, it gives the projector no gradient."""
    align = VRPOAlignment(hidden_dim=D, target_dims=(8,), projector_dim=16, policy_coeff=0.0, anchor_coeff=0.0,
                          decodability_weight=1.0, decodability_patch=1, decodability_channels=2)
    h = torch.randn(B, N, D, requires_grad=True)
    out = align(h, torch.randn(B, N, 8), x0=torch.randn(B, 2, 3, 3))
    out.loss.backward()
    assert h.grad is None or h.grad.abs().sum() == 0
    assert all(p.grad.abs().sum() > 0 for p in align.token_heads[1].parameters())


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_signal_fraction_is_the_cosine_of_the_policy_push_with_repa(policy):
    """Anchor off, weights one: the loss's gradient on the features is the policy term's; its cosine with REPA's
    gradient, by autograd, is the reported signal fraction."""
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), policy=policy, anchor_coeff=0.0, **_gaussian(policy))
    feats = torch.randn(B, N, 8, requires_grad=True)
    y = torch.randn(B, N, 8)
    out = align(feats, y)
    (g,) = torch.autograd.grad(out.loss, feats)
    (repa,) = torch.autograd.grad(-F.cosine_similarity(feats, y, dim=-1).sum(), feats)
    want = F.cosine_similarity(g.flatten(), repa.flatten(), dim=0)
    assert g.abs().sum() > 0
    torch.testing.assert_close(out.metrics["signal_frac"], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_low_precision_inputs_match_fp32(dtype, policy):
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), policy=policy)
    feats = torch.randn(B, N, 8) * 0.05  # small features, as projected tokens early in training
    y = torch.randn(B, N, 8) * 30  # large encoder tokens: fp16 normalisation would overflow
    f_lo = feats.to(dtype).requires_grad_(True)
    f_ref = f_lo.detach().float().requires_grad_(True)
    state = copy.deepcopy(align.state_dict())
    out_lo = align(f_lo, y.to(dtype), t=torch.rand(B))
    align.load_state_dict(state)
    out_ref = align(f_ref, y.to(dtype).float(), t=torch.rand(B))
    assert out_lo.loss.dtype == torch.float32 and torch.isfinite(out_lo.loss)
    torch.testing.assert_close(out_lo.loss, out_ref.loss, atol=1e-5, rtol=1e-5)
    (g_lo,) = torch.autograd.grad(out_lo.loss, f_lo)
    (g_ref,) = torch.autograd.grad(out_ref.loss, f_ref)
    torch.testing.assert_close(g_lo.float(), g_ref.to(dtype).float(), atol=1e-2, rtol=1e-2)


def test_under_cpu_autocast_with_projector():
    align = VRPOAlignment(hidden_dim=D, target_dims=(8,), projector_dim=16)
    h = torch.randn(B, N, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = align(h, torch.randn(B, N, 8).bfloat16(), t=torch.rand(B), denoise_loss=torch.rand(B).bfloat16())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_state_dict_round_trip_gives_identical_next_losses(policy):
    kw = dict(hidden_dim=D, target_dims=(8,), projector_dim=16, policy=policy, sample_weight=0.5, learn_sigma=policy == "gaussian")
    a = VRPOAlignment(**kw)
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    batches = [(torch.randn(B, N, D), torch.randn(B, N, 8), torch.rand(B), torch.rand(B)) for _ in range(4)]
    for h, y, t, dl in batches[:2]:
        opt.zero_grad()
        a(h, y, t=t, denoise_loss=dl).loss.backward()
        opt.step()
    b = VRPOAlignment(**kw)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.step == a.step == 2
    if policy == "gaussian":
        assert b.policy.seed == a.policy.seed
    torch.testing.assert_close(b.normalizer.mean, a.normalizer.mean)
    for h, y, t, dl in batches[2:]:
        la = a(h, y, t=t, denoise_loss=dl)
        lb = b(h, y, t=t, denoise_loss=dl)
        assert torch.equal(la.loss, lb.loss)
        assert torch.equal(la.per_sample, lb.per_sample)


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_first_release_checkpoint_loads_strictly_and_keeps_its_noise(policy):
    # 0.1.0 kept the seed in the module's extra state ({"step", "seed"}); the policy now owns it
    kw = dict(hidden_dim=None, target_dims=(8,), policy=policy)
    a = VRPOAlignment(**kw)
    old = a.state_dict()
    seed = old.pop("policy._extra_state")["seed"] if policy == "gaussian" else 12345
    old["_extra_state"] = {"step": 7, "seed": seed}
    b = VRPOAlignment(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no saved config to compare: no warning
        b.load_state_dict(old)  # strict
    assert b.step == 7
    feats, y = torch.randn(B, N, 8), torch.randn(B, N, 8)
    if policy == "gaussian":
        assert b.policy.seed == a.policy.seed
        a.step = 7
        assert torch.equal(a(feats, y).loss, b(feats, y).loss)  # the noise it would have drawn


def test_saved_config_is_checked_on_load_with_a_warning_naming_each_difference():
    # Planted bug (the config saved nowhere): a state_dict saved with stop_step=6 and tau=0.1 loaded silently
    # into a module built with other values.
    import io
    import warnings

    a = VRPOAlignment(hidden_dim=None, target_dims=(8,), stop_step=6, tau=0.1)
    a(torch.randn(B, N, 8), torch.randn(B, N, 8))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)  # the saved config is plain data: safe to load
    assert sd["_extra_state"]["config"]["stop_step"] == 6 and sd["_extra_state"]["step"] == 1
    b = VRPOAlignment(hidden_dim=None, target_dims=(8,), tau=0.2)
    with pytest.warns(UserWarning, match=r"saved with tau=0\.1 \(this module: 0\.2\), stop_step=6 \(this module: None\)\.") as rec:
        b.load_state_dict(sd)
    assert len(rec) == 1 and "target_dims" not in str(rec[0].message)
    assert b.config.stop_step is None and b.config.tau == 0.2 and b.step == 1  # warn, not apply, not raise
    same = VRPOAlignment(hidden_dim=None, target_dims=(8,), stop_step=6, tau=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(sd)  # the same options: silent
    sd["_extra_state"]["config"]["from_a_later_version"] = 1
    with pytest.warns(UserWarning, match="options unknown to this version: from_a_later_version"):
        same.load_state_dict(sd)


def test_noise_differs_between_steps_and_is_deterministic_per_step():
    a = VRPOAlignment(hidden_dim=None, target_dims=(8,), policy="gaussian")
    feats, y = torch.randn(B, N, 8), torch.randn(B, N, 8)
    l1 = a(feats, y).metrics["rewards/semantic/mean"]
    l2 = a(feats, y).metrics["rewards/semantic/mean"]
    assert l1 != l2  # new noise each step
    a.step = 0
    assert a(feats, y).metrics["rewards/semantic/mean"] == l1


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_no_host_device_sync_in_forward_without_validation(policy, monkeypatch):
    align = VRPOAlignment(hidden_dim=D, target_dims=(8,), projector_dim=16, policy=policy, validate=False, sample_weight=0.5)
    h = torch.randn(B, N, D, requires_grad=True)
    y, t, dl = torch.randn(B, N, 8), torch.rand(B), torch.rand(B)

    def forbidden(*a, **k):
        raise AssertionError("host-device synchronisation in forward")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = align(h, y, t=t, denoise_loss=dl)
    monkeypatch.undo()
    assert torch.isfinite(out.loss)


def test_validation_reads_values_once(monkeypatch):
    align = VRPOAlignment(hidden_dim=D, target_dims=(8,), projector_dim=16)
    calls = []
    real = torch.Tensor.cpu

    def counting(self, *a, **k):
        calls.append(self.shape)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    align(torch.randn(B, N, D), torch.randn(B, N, 8), t=torch.rand(B), denoise_loss=torch.rand(B))
    assert len(calls) == 1


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_torch_compile_gives_the_eager_values(policy):
    """Compiled and eager calls on the same inputs and state: same loss, per-sample loss, gradient and metrics."""
    align = VRPOAlignment(hidden_dim=D, target_dims=(8,), projector_dim=16, policy=policy, validate=False, sample_weight=0.5)
    eager = copy.deepcopy(align)
    compiled = torch.compile(align, backend="eager")
    for _ in range(2):  # the second call runs on updated running statistics and a new step
        h, y, t, dl = torch.randn(B, N, D, requires_grad=True), torch.randn(B, N, 8), torch.rand(B), torch.rand(B)
        out, want = compiled(h, y, t=t, denoise_loss=dl), eager(h, y, t=t, denoise_loss=dl)
        torch.testing.assert_close(out.loss, want.loss)
        torch.testing.assert_close(out.per_sample, want.per_sample)
        torch.testing.assert_close(torch.autograd.grad(out.loss, h)[0], torch.autograd.grad(want.loss, h)[0])
        assert set(out.metrics) == set(want.metrics)
        for k in want.metrics:
            torch.testing.assert_close(out.metrics[k], want.metrics[k], msg=k)
    assert align.step == eager.step == 2
    torch.testing.assert_close(align.normalizer.mean, eager.normalizer.mean)


@pytest.mark.parametrize("validate", [True, False])
def test_torch_compile_does_not_recompile_as_the_step_advances(validate):
    # The step is a Python int: read in the traced code it would be guarded on, and every
    # training call would recompile (until dynamo's cache limit sends the module back to eager).
    import torch._dynamo

    # The metric schedule gives two graphs, a metric step (step 0) and an off step (step 1), each compiled
    # once; after them, two more periods (metric steps included) run without a recompilation.
    torch._dynamo.reset()
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), validate=validate)
    every = align.config.metrics_every
    assert every > 1 and align.config.diagnostics_every == every
    compiled = torch.compile(align, backend="eager")
    y = torch.randn(B, N, 8)
    for _ in range(2):
        compiled(torch.randn(B, N, 8, requires_grad=True), y, t=torch.rand(B)).loss.backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2 * every):
            compiled(torch.randn(B, N, 8, requires_grad=True), y, t=torch.rand(B)).loss.backward()
    assert align.step == 2 + 2 * every


class _StepReader(RewardHead):
    level = "sample"
    name = "reader"

    def __init__(self):
        super().__init__()
        self.seen = []

    def sample_reward(self, ctx):
        self.seen.append(ctx.step)
        return None


def test_step_reaches_heads_that_use_it():
    reader = _StepReader()
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), heads=[reader])
    for _ in range(3):
        align(torch.randn(B, N, 8), torch.randn(B, N, 8), t=torch.rand(B))
    assert reader.seen == [0, 1, 2]


def test_resample_tokens():
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), mode="repa", resample_tokens=True)
    feats = torch.randn(2, 16, 8)
    y = torch.randn(2, 64, 8)
    out = align(feats, y)
    grid = F.interpolate(y.transpose(1, 2).reshape(2, 8, 8, 8), size=(4, 4), mode="bilinear", align_corners=False)
    ref = repa_loop_loss([feats], [grid.reshape(2, 8, 16).transpose(1, 2)])
    torch.testing.assert_close(out.loss, ref)


def test_eval_mode_does_not_advance_or_update():
    a = VRPOAlignment(hidden_dim=None, target_dims=(8,), sample_weight=0.5)
    a.eval()
    a(torch.randn(B, N, 8), torch.randn(B, N, 8), t=torch.rand(B), denoise_loss=torch.rand(B))
    assert a.step == 0 and a.normalizer.count.sum() == 0



@settings(max_examples=25, deadline=None)
@given(
    policy=st.sampled_from(["gaussian", "correspondence"]),
    scale=st.floats(0.0, 1e4),
    tscale=st.floats(1e-6, 1e4),
    weight=st.sampled_from([0.0, 0.5, -0.5]),
    same_t=st.booleans(),
)
def test_loss_and_gradient_always_finite(policy, scale, tscale, weight, same_t):
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), policy=policy, sample_weight=weight, **_gaussian(policy))
    feats = (torch.randn(3, 5, 8) * scale).requires_grad_(True)
    t = torch.full((3,), 0.5) if same_t else torch.rand(3)
    out = align(feats, torch.randn(3, 5, 8) * tscale, t=t, denoise_loss=torch.rand(3) * tscale)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(feats.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())


EVERY_STEP_KEYS = {"loss_anchor", "cos", "loss_policy", "rewards/semantic/mean"}


def test_metrics_every_full_metrics_on_its_steps_same_losses_on_all():
    """Full metrics at steps 0, k, 2k (and in eval mode), the loss terms and reward means between;
    the losses and gradients do not depend on the schedule."""
    kw = dict(hidden_dim=None, target_dims=(8,), metrics_every=3, diagnostics_every=3)
    a, every = VRPOAlignment(**kw), VRPOAlignment(**{**kw, "metrics_every": 1, "diagnostics_every": 1})
    for step in range(7):
        feats, y, t, dl = torch.randn(B, N, 8, requires_grad=True), torch.randn(B, N, 8), torch.rand(B), torch.rand(B)
        out, want = a(feats, y, t=t, denoise_loss=dl), every(feats, y, t=t, denoise_loss=dl)
        assert set(want.metrics) > EVERY_STEP_KEYS | {"signal_frac", "kl", "adv/sample_std", "rewards/fidelity/mean"}
        assert set(out.metrics) == (set(want.metrics) if step % 3 == 0 else EVERY_STEP_KEYS)
        for k in out.metrics:  # the sample advantage reads running statistics that took fewer batches after step 0
            if k != "adv/sample_std" or step == 0:
                torch.testing.assert_close(out.metrics[k], want.metrics[k], msg=k)
        torch.testing.assert_close(out.per_sample, want.per_sample)
        torch.testing.assert_close(torch.autograd.grad(out.loss, feats)[0], torch.autograd.grad(want.loss, feats)[0])
    a.eval()
    assert a.step == 7 and set(a(feats, y, t=t, denoise_loss=dl).metrics) == set(want.metrics)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_running_statistics_take_batches_on_metric_steps_only_when_unused(weight):
    a = VRPOAlignment(hidden_dim=None, target_dims=(8,), sample_weight=weight, metrics_every=3)
    for _ in range(7):
        a(torch.randn(B, N, 8), torch.randn(B, N, 8), t=torch.rand(B), denoise_loss=torch.rand(B))
    calls = 7 if weight else 3  # steps 0, 3, 6
    assert a.normalizer.count.sum() == calls * B
