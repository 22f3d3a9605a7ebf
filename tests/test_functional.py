import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vrpo_loss.functional import candidate_advantage, group_advantage, repa_projection_loss, tangent

import reference
from conftest import repa_loop_loss


@pytest.mark.parametrize("encoders", [1, 2])
def test_repa_projection_loss_matches_repa_loop(encoders):
    feats = [torch.randn(3, 7, 5 + e, dtype=torch.float64, requires_grad=True) for e in range(encoders)]
    targets = [torch.randn(3, 7, 5 + e, dtype=torch.float64) for e in range(encoders)]
    ours = repa_projection_loss(feats, targets)
    ref = repa_loop_loss(feats, targets)
    torch.testing.assert_close(ours, ref)
    g1 = torch.autograd.grad(ours, feats)
    g2 = torch.autograd.grad(ref, feats)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    per = repa_projection_loss(feats, targets, reduction="none")
    assert per.shape == (3,)
    torch.testing.assert_close(per.mean(), ref)


def _loop_group_advantage(r, eps):
    out = torch.zeros_like(r)
    G = r.shape[0]
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in r.shape[1:]]):
        idx = tuple(idx.tolist()) if r.dim() > 2 else (int(idx),)
        col = [float(r[(g,) + idx]) for g in range(G)]
        m = sum(col) / G
        sd = math.sqrt(sum((c - m) ** 2 for c in col) / G)
        for g in range(G):
            out[(g,) + idx] = 0.0 if sd <= 1e-8 else (col[g] - m) / (sd + eps)
    return out


def test_group_advantage_matches_loop_reference():
    r = torch.randn(6, 3, 4, dtype=torch.float64)
    adv, zero = group_advantage(r, eps=1e-4)
    torch.testing.assert_close(adv, _loop_group_advantage(r, 1e-4))
    assert not zero.any()


def test_group_advantage_invariant_to_shift_and_scale():
    r = torch.randn(8, 5, 3, dtype=torch.float64)
    a, _ = group_advantage(r, eps=0.0)
    b, _ = group_advantage(3.0 * r + 7.0, eps=0.0)
    torch.testing.assert_close(a, b)
    # 'none' is shift- but not scale-invariant
    c, _ = group_advantage(r + 2.0, scale="none")
    torch.testing.assert_close(c, r - r.mean(0, keepdim=True))


def test_group_advantage_zero_variance_groups_are_zero_and_counted():
    r = torch.randn(4, 3)
    r[:, 1] = 0.25  # one constant group
    adv, zero = group_advantage(r)
    assert zero.tolist() == [False, True, False]
    assert torch.all(adv[:, 1] == 0)
    assert torch.all(adv[:, 0] != 0)


def test_group_advantage_batch_scale_uses_global_std():
    r = torch.randn(5, 6, dtype=torch.float64)
    adv, _ = group_advantage(r, scale="batch", eps=0.0)
    ref = (r - r.mean(0, keepdim=True)) / r.std(unbiased=False)
    torch.testing.assert_close(adv, ref)


def test_group_advantage_clip_and_group_of_one():
    r = torch.tensor([[0.0], [0.0], [0.0], [100.0]])
    adv, _ = group_advantage(r, scale="none", clip=2.0)
    assert adv.max() == 2.0 and adv.min() == -2.0
    with pytest.raises(ValueError, match="at least 2"):
        group_advantage(torch.randn(1, 3))
    with pytest.raises(ValueError, match="scale"):
        group_advantage(torch.randn(2, 3), scale="rank")


@settings(max_examples=50, deadline=None)
@given(
    g=st.integers(2, 6),
    n=st.integers(1, 5),
    scale=st.sampled_from(["group", "batch", "none"]),
    mag=st.floats(1e-6, 1e6),
    const=st.booleans(),
)
def test_group_advantage_always_finite(g, n, scale, mag, const):
    r = torch.randn(g, n) * mag
    if const:
        r[:] = mag
    adv, _ = group_advantage(r, scale=scale, clip=5.0)
    assert torch.isfinite(adv).all()
    assert adv.abs().max() <= 5.0


def test_candidate_advantage_moments_under_pi():
    probs = torch.softmax(torch.randn(2, 3, 5, dtype=torch.float64), -1)
    r = torch.randn(2, 3, 5, dtype=torch.float64)
    adv, zero = candidate_advantage(r, probs, eps=0.0)
    # independent: expand the categorical into many weighted samples via explicit loops
    for b in range(2):
        for i in range(3):
            m = sum(probs[b, i, j] * r[b, i, j] for j in range(5))
            v = sum(probs[b, i, j] * (r[b, i, j] - m) ** 2 for j in range(5))
            for j in range(5):
                assert abs(float(adv[b, i, j] - (r[b, i, j] - m) / v.sqrt())) < 1e-9
    assert (probs * adv).sum(-1).abs().max() < 1e-9
    assert not zero.any()


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 6), peak=st.floats(0, 60), scale=st.sampled_from(["group", "batch", "none"]))
def test_candidate_advantage_finite_for_peaked_policies(k, peak, scale):
    logits = torch.randn(2, 3, k) * peak
    adv, _ = candidate_advantage(torch.randn(2, 3, k), torch.softmax(logits, -1), scale=scale, clip=5.0)
    assert torch.isfinite(adv).all()


def test_reference_gaussian_log_prob_matches_torch_distributions():
    x, m = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    s = torch.rand(6, dtype=torch.float64) + 0.1
    ref = torch.distributions.Normal(m, s).log_prob(x).mean(-1)
    torch.testing.assert_close(reference.gaussian_log_prob(x, m, s), ref)


def test_tangent_is_orthogonal():
    u = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    g = torch.randn(3, 4)
    assert (tangent(g, u) * u).sum(-1).abs().max() < 1e-6


def test_candidate_advantage_batch_scale_is_global_std_under_pi():
    probs = torch.softmax(torch.randn(3, 4, dtype=torch.float64), -1)
    r = torch.randn(3, 4, dtype=torch.float64)
    adv, _ = candidate_advantage(r, probs, scale="batch", eps=0.0)
    gm = sum(float((probs[i] * r[i]).sum()) for i in range(3)) / 3
    gv = sum(float((probs[i] * (r[i] - gm) ** 2).sum()) for i in range(3)) / 3
    ref = (r - (probs * r).sum(-1, keepdim=True)) / gv**0.5
    torch.testing.assert_close(adv, ref)
