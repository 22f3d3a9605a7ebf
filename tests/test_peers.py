"""The peer options of ``VRPOAlignment`` (iREPA, VA-REPA, HASTE, SARA-style) against float64
references of the published formulas, written here independently of the package (loops where
natural), through the public API only."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from vrpo_loss import RewardHead, VRPOAlignment

B, N, C = 3, 6, 5


# ----------------------------------------------------------------------------- references (float64)
def cos_ref(a, b):
    return (a * b).sum() / (a.norm().clamp_min(1e-12) * b.norm().clamp_min(1e-12))


def repa_ref(mu, y):
    """REPA's per-sample projection loss: -mean_n cos(mu_bn, y_bn), a loop."""
    mu, y = mu.double(), y.double()
    return torch.stack([-torch.stack([cos_ref(mu[b, n], y[b, n]) for n in range(mu.shape[1])]).mean() for b in range(mu.shape[0])])


def zscore_ref(y, alpha):
    """iREPA: per sample and channel over tokens, (y - alpha * mean) / (unbiased std + 1e-6), a loop."""
    y = y.double()
    out = torch.empty_like(y)
    nb, nt, nc = y.shape
    for b in range(nb):
        for c in range(nc):
            v = y[b, :, c]
            mean = sum(v.tolist()) / nt
            std = math.sqrt(sum((x - mean) ** 2 for x in v.tolist()) / (nt - 1))
            out[b, :, c] = (v - alpha * mean) / (std + 1e-6)
    return out


def sigmoid_ref(t, c, k):
    return torch.tensor([1.0 / (1.0 + math.exp(-k * (c - ti))) for ti in t.tolist()], dtype=torch.float64)


def structure_ref(mu, y):
    """SARA-style: per sample, mean over (i, j) of (cos(mu_i, mu_j) - cos(y_i, y_j))^2, a loop."""
    mu, y = mu.double(), y.double()
    out = []
    for b in range(mu.shape[0]):
        terms = [(cos_ref(mu[b, i], mu[b, j]) - cos_ref(y[b, i], y[b, j])) ** 2 for i in range(mu.shape[1]) for j in range(mu.shape[1])]
        out.append(torch.stack(terms).mean())
    return torch.stack(out)


def conv_ref(x, weight, bias):
    """A 2-d convolution with zero padding k // 2 over an (H, W, Cin) grid, a loop over output positions."""
    h, w, _ = x.shape
    k = weight.shape[-1]
    p = k // 2
    out = torch.zeros(h, w, weight.shape[0], dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            acc = bias.double().clone()
            for di in range(k):
                for dj in range(k):
                    rr, cc = r + di - p, c + dj - p
                    if 0 <= rr < h and 0 <= cc < w:
                        acc = acc + weight[:, :, di, dj].double() @ x[rr, cc]
            out[r, c] = acc
    return out


def conv_projector_ref(h, convs, grid):
    """The convolutions (SiLU between them) over the row-major token grid, per sample."""
    gh, gw = grid
    outs = []
    for b in range(h.shape[0]):
        x = h[b].double().reshape(gh, gw, -1)  # token n = r * W + c
        for i, conv in enumerate(convs):
            x = conv_ref(x, conv.weight, conv.bias)
            if i < len(convs) - 1:
                x = torch.nn.functional.silu(x)
        outs.append(x.reshape(gh * gw, -1))
    return torch.stack(outs)


def data(n=N, c=C, b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, n, c, generator=g, requires_grad=True)
    y = torch.randn(b, n, c, generator=g) + 0.5  # a non-zero token mean, so that the z-score's alpha matters
    t = torch.rand(b, generator=g)
    return h, y, t


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def assert_close(a, b, tol=1e-5):
    """Equal in float64 within ``tol`` (raises otherwise)."""
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- iREPA: target z-score
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_zscore_repa_matches_reference(alpha):
    h, y, _ = data()
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", target_norm="zscore", zscore_alpha=alpha)
    out = align(h, y)
    ref = repa_ref(h, zscore_ref(y, alpha))
    assert_close(out.per_sample, ref)
    assert_close(grad_of(out.loss, h), grad_of(ref.mean(), h))


def test_zscore_vrpo_is_vrpo_on_zscored_targets():
    # "Before everything else": the policy's rewards and the anchor all see the z-scored targets.
    h, y, t = data()
    kw = dict(hidden_dim=None, target_dims=(C,), mode="vrpo")
    out = VRPOAlignment(**kw, target_norm="zscore")(h, y, t=t)
    ref = VRPOAlignment(**kw)(h, zscore_ref(y, 0.6).float(), t=t)
    assert_close(out.per_sample, ref.per_sample)
    assert_close(grad_of(out.loss, h), grad_of(ref.loss, h))


# ----------------------------------------------------------------------------- iREPA: conv projector
@pytest.mark.parametrize("grid,kernel", [((2, 3), 3), ((3, 2), 1), (None, 3)])
def test_conv_projector_matches_reference(grid, kernel):
    n = 4 if grid is None else grid[0] * grid[1]
    d = 4
    h, _, _ = data(n=n, c=d)
    y = torch.randn(B, n, C)
    align = VRPOAlignment(hidden_dim=d, target_dims=(C,), projector="conv", projector_kernel=kernel, token_grid=grid,
                          mode="repa")
    convs = [m for m in align.modules() if isinstance(m, nn.Conv2d)]
    # iREPA's projector: one Conv2d(D, C, k, padding=k // 2), nothing else with parameters
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [(d, C, (kernel,) * 2, (kernel // 2,) * 2)]
    assert sum(p.numel() for p in align.parameters()) == d * C * kernel ** 2 + C
    out = align(h, y)
    mu = conv_projector_ref(h, convs, grid or (2, 2))
    ref = repa_ref(mu, y)
    assert_close(out.per_sample, ref)
    for got, want in zip(torch.autograd.grad(out.loss, [h, convs[0].weight]), torch.autograd.grad(ref.mean(), [h, convs[0].weight])):
        assert_close(got, want)


def test_conv_projector_vrpo_is_vrpo_on_projected_features():
    d, grid = 4, (2, 3)
    h, _, t = data(n=6, c=d)
    y = torch.randn(B, 6, C)
    align = VRPOAlignment(hidden_dim=d, target_dims=(C,), projector="conv", token_grid=grid)
    convs = [m for m in align.modules() if isinstance(m, nn.Conv2d)]
    out = align(h, y, t=t)
    mu = conv_projector_ref(h, convs, grid)
    ref = VRPOAlignment(hidden_dim=None, target_dims=(C,))(mu.float(), y, t=t)
    assert_close(out.per_sample, ref.per_sample)


def test_conv_projector_grid_errors():
    align = VRPOAlignment(hidden_dim=4, target_dims=(C,), projector="conv", mode="repa")
    with pytest.raises(ValueError, match="token_grid"):
        align(torch.randn(B, 6, 4), torch.randn(B, 6, C))  # 6 tokens: not a square
    align = VRPOAlignment(hidden_dim=4, target_dims=(C,), projector="conv", token_grid=(2, 2), mode="repa")
    with pytest.raises(ValueError, match="token_grid"):
        align(torch.randn(B, 6, 4), torch.randn(B, 6, C))  # 2 x 2 holds 4 tokens
    with pytest.raises(ValueError, match="projector"):
        VRPOAlignment(hidden_dim=None, target_dims=(C,), projector="conv")
    with pytest.raises(ValueError, match="^projector_dim: acts only with .*projector='mlp'"):  # a width it would not use
        VRPOAlignment(hidden_dim=4, target_dims=(C,), projector="conv", projector_dim=7)


# ----------------------------------------------------------------------------- VA-REPA: time weight
def test_time_weight_repa_matches_reference():
    h, y, t = data()
    t = torch.tensor([0.1, 0.7, 0.95])  # 0.7 is the centre: weight exactly 1/2
    c, k = 0.7, 20.0
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", time_weight="sigmoid")
    out = align(h, y, t=t)
    w = sigmoid_ref(t, c, k)
    assert abs(w[1] - 0.5) < 1e-6 and w[0] > 0.999 and w[2] < 0.01  # t = 1 is noise: aligned near the data
    loss_b = repa_ref(h, y)
    ref = (w * loss_b).sum() / w.sum()
    assert_close(out.loss, ref)
    assert_close(out.per_sample.mean(), out.loss)
    assert_close(out.per_sample, B * w / w.sum() * loss_b)
    assert_close(grad_of(out.loss, h), grad_of(ref, h))


def test_time_weight_vrpo_is_the_weighted_mean_of_vrpo():
    h, y, t = data()
    kw = dict(hidden_dim=None, target_dims=(C,))
    out = VRPOAlignment(**kw, time_weight="sigmoid", time_weight_center=0.5, time_weight_sharpness=5.0)(h, y, t=t)
    plain = VRPOAlignment(**kw)(h, y, t=t)
    w = sigmoid_ref(t, 0.5, 5.0)
    ref = (w * plain.per_sample.double()).sum() / w.sum()
    assert_close(out.loss, ref)
    assert_close(grad_of(out.loss, h), grad_of(ref, h))


def test_time_weight_needs_t_and_a_vanishing_batch_gives_zero():
    h, y, _ = data()
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", time_weight="sigmoid", time_weight_center=0.0,
                          time_weight_sharpness=1e4)
    with pytest.raises(ValueError, match="time_weight.*needs t"):
        align(h, y)
    out = align(h, y, t=torch.ones(B))  # every weight underflows: StableVelocity's zero loss, not NaN
    assert out.loss.item() == 0.0 and torch.isfinite(grad_of(out.loss, h)).all()


# ----------------------------------------------------------------------------- HASTE: stop step and ramp
class _Forbidden(RewardHead):
    """A token and a sample head that fail if the alignment does any policy or weighting work."""

    level = "sample"

    def sample_reward(self, ctx):
        raise AssertionError("sample-level work after stop_step")


class _ForbiddenToken(RewardHead):
    level = "token"
    name = "forbidden"

    def candidate_reward(self, ctx):
        raise AssertionError("policy work after stop_step")


@pytest.mark.parametrize("mode", ["repa", "vrpo"])
def test_stop_step_gives_an_exact_connected_zero_and_does_no_work(mode):
    stop = 2
    align = VRPOAlignment(hidden_dim=4, target_dims=(C,), projector_dim=7, mode=mode, stop_step=stop)
    plain = VRPOAlignment(hidden_dim=4, target_dims=(C,), projector_dim=7, mode=mode)
    with pytest.warns(UserWarning, match=r"saved with stop_step=2 \(this module: None\)"):  # deliberate here
        plain.load_state_dict(align.state_dict())
    for _ in range(stop):
        h, y, t = data(c=4)
        y = torch.randn(B, N, C)
        assert_close(align(h, y, t=t).loss, plain(h, y, t=t).loss, tol=0)
    assert align.step == stop  # the step counter advances in both modes

    forbidden = VRPOAlignment(hidden_dim=4, target_dims=(C,), projector_dim=7, mode=mode, stop_step=stop,
                              heads=[_Forbidden(), _ForbiddenToken()])
    own = forbidden.state_dict()  # the step (and the projector) from align; the extra head changes the statistics' shape
    forbidden.load_state_dict({k: v for k, v in align.state_dict().items() if not torch.is_tensor(v) or v.shape == own[k].shape}, strict=False)
    assert forbidden.step == stop

    def no_projection(*args):
        raise AssertionError("projector ran after stop_step")

    for m in forbidden.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(no_projection)
    for _ in range(2):
        h, _, t = data(c=4)
        out = forbidden(h, torch.randn(B, N, C), t=t)
        assert out.loss.item() == 0.0 and torch.equal(out.per_sample, torch.zeros(B))
        out.loss.backward()
        assert h.grad is not None and torch.equal(h.grad, torch.zeros_like(h))
        for p in forbidden.parameters():
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))  # DDP sees every parameter
    assert forbidden.step == stop + 2


@pytest.mark.parametrize("mode", ["repa", "vrpo"])
def test_stop_ramp_values(mode):
    stop, ramp = 5, 2
    expected = [1, 1, 1, 2 / 3, 1 / 3, 0, 0]  # clamp((5 - step) / 3, 0, 1): linear over the 2 calls before 5
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode=mode, stop_step=stop, stop_ramp=ramp)
    plain = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode=mode)
    h, y, t = data()
    for step, factor in enumerate(expected):
        assert align.step == step
        out, ref = align(h, y, t=t), plain(h, y, t=t)
        assert_close(out.loss, factor * ref.loss.double(), tol=1e-6)
        assert_close(grad_of(out.loss, h), factor * grad_of(ref.loss, h).double(), tol=1e-6)


def test_stop_step_round_trips_through_state_dict_and_eval_does_not_count():
    a = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", stop_step=3, stop_ramp=1)
    h, y, t = data()
    for _ in range(2):
        a(h, y, t=t)
    b = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", stop_step=3, stop_ramp=1)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.step == 2
    b.eval()
    half = b(h, y, t=t).loss
    assert b.step == 2 and half.item() != 0.0  # step 2: factor 1/2
    assert_close(half, 0.5 * repa_ref(h, y).mean(), tol=1e-6)
    b.train()
    b(h, y, t=t)
    assert b(h, y, t=t).loss.item() == 0.0 and b.step == 4


# ----------------------------------------------------------------------------- SARA-style structure term
def test_structure_repa_matches_reference():
    h, y, _ = data()
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", structure_coeff=0.7)
    out = align(h, y)
    ref = repa_ref(h, y) + 0.7 * structure_ref(h, y)
    assert_close(out.per_sample, ref)
    assert_close(grad_of(out.loss, h), grad_of(ref.mean(), h))
    assert_close(out.metrics["loss_structure"], structure_ref(h, y).mean())


def test_structure_vrpo_adds_the_term_two_encoders():
    h, y, t = data()
    h2, y2 = torch.randn(B, N, 3, requires_grad=True), torch.randn(B, N, 3)
    kw = dict(hidden_dim=None, target_dims=(C, 3))
    out = VRPOAlignment(**kw, structure_coeff=0.3)([h, h2], [y, y2], t=t)
    plain = VRPOAlignment(**kw)([h, h2], [y, y2], t=t)
    extra = 0.3 * (structure_ref(h, y) + structure_ref(h2, y2)) / 2  # a mean over encoders
    assert_close(out.per_sample, plain.per_sample.double() + extra)
    assert_close(grad_of(out.loss, h2), grad_of(plain.loss + extra.mean(), h2))


# ----------------------------------------------------------------------------- all together, and compile
def test_all_options_compose_in_repa_mode():
    h, y, t = data()
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", target_norm="zscore", zscore_alpha=0.6,
                          time_weight="sigmoid", structure_coeff=0.5, stop_step=2, stop_ramp=1)
    z = zscore_ref(y, 0.6)
    w = sigmoid_ref(t, 0.7, 20.0)
    for factor in (1.0, 0.5, 0.0):
        out = align(h, y, t=t)
        ref = factor * (w * (repa_ref(h, z) + 0.5 * structure_ref(h, z))).sum() / w.sum()
        assert_close(out.loss, ref)
        assert_close(grad_of(out.loss, h), grad_of(ref, h))


def test_torch_compile_repa_with_peer_options_gives_eager_values():
    import torch._dynamo

    torch._dynamo.reset()
    kw = dict(hidden_dim=4, target_dims=(C,), mode="repa", projector="conv", token_grid=(2, 3),
              target_norm="zscore", time_weight="sigmoid", structure_coeff=0.5, stop_step=4, stop_ramp=2)
    eager = VRPOAlignment(**kw)
    module = copy.deepcopy(eager)
    compiled = torch.compile(module, backend="aot_eager")

    def call(step):
        h, _, t = data(c=4, seed=step)
        y = torch.randn(B, N, C)
        ref = eager(h, y, t=t)
        hc = h.detach().clone().requires_grad_(True)
        out = compiled(hc, y, t=t)
        assert_close(out.loss, ref.loss, tol=1e-5)
        assert_close(grad_of(out.loss, hc), grad_of(ref.loss, h), tol=1e-5)
        return out.loss

    call(0)
    with torch._dynamo.config.patch(error_on_recompile=True):  # the ramp reaches the graph as a tensor
        assert call(1) != 0 and call(2) != 0 and call(3) != 0  # factors 1, 2/3, 1/3
    assert call(4) == 0 and call(5) == 0  # the switch to the terminated branch recompiles, once
    assert module.step == eager.step == 6


# ----------------------------------------------------------------------------- invalid values and shapes
@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(target_norm="l2"), "target_norm"),
        (dict(zscore_alpha=1.5), "zscore_alpha"),
        (dict(zscore_alpha=-0.1), "zscore_alpha"),
        (dict(zscore_alpha=float("nan")), "zscore_alpha"),
        (dict(projector="linear", hidden_dim=4), "projector"),
        (dict(projector="conv"), "projector"),  # hidden_dim=None: the host owns the projector
        (dict(projector_kernel=2), "projector_kernel"),
        (dict(projector_kernel=0), "projector_kernel"),
        (dict(projector_kernel=3.0), "projector_kernel"),
        (dict(token_grid=(4,)), "token_grid"),
        (dict(token_grid=(0, 4)), "token_grid"),
        (dict(token_grid=(2.0, 2)), "token_grid"),
        (dict(time_weight="linear"), "time_weight"),
        (dict(time_weight_center=1.2), "time_weight_center"),
        (dict(time_weight_center=float("inf")), "time_weight_center"),
        (dict(time_weight_sharpness=0.0), "time_weight_sharpness"),
        (dict(time_weight_sharpness=float("inf")), "time_weight_sharpness"),
        (dict(stop_step=-1), "stop_step"),
        (dict(stop_step=2.5), "stop_step"),
        (dict(stop_step=True), "stop_step"),
        (dict(stop_ramp=-1, stop_step=3), "stop_ramp"),
        (dict(stop_ramp=4, stop_step=3), "stop_ramp"),
        (dict(stop_ramp=2), "stop_ramp"),  # a ramp without a stop does nothing
        (dict(structure_coeff=-0.5), "structure_coeff"),
        (dict(structure_coeff=float("nan")), "structure_coeff"),
    ],
)
def test_invalid_values_name_the_option(kw, name):
    kw = {"hidden_dim": None, "target_dims": (C,), **kw}
    with pytest.raises(ValueError, match=f"^{name}:"):
        VRPOAlignment(**kw)


def test_zscore_needs_two_tokens():
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", target_norm="zscore")
    with pytest.raises(ValueError, match="target_norm"):
        align(torch.randn(B, 1, C), torch.randn(B, 1, C))


def test_token_grid_is_normalised_to_a_tuple():
    align = VRPOAlignment(hidden_dim=4, target_dims=(C,), projector="conv", token_grid=[2, 3])
    assert align.config.token_grid == (2, 3)


# ----------------------------------------------------------------------------- the pure functions themselves
def test_pure_functions_match_the_references():
    # Through the module, the cosines hide a uniform rescale of the targets (biased vs unbiased std)
    # and their norm; the stages' own functions are pinned directly as well.
    from vrpo_loss.factors.stop import stop_factor
    from vrpo_loss.structure import structure_loss
    from vrpo_loss.targets import zscore_tokens

    _, y, _ = data()
    mu = torch.randn(B, N, C)
    assert_close(zscore_tokens(y, 0.6), zscore_ref(y, 0.6))
    assert_close(structure_loss(mu, 3.0 * y), structure_ref(mu, y))
    assert [stop_factor(s, 4, 3) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert stop_factor(10**9, None, 0) == 1.0
