"""Running per-timestep-bin statistics (``vrpo_loss.statistics``), against loops."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vrpo_loss.statistics import TimeBinnedNormalizer


def _loop_reference(batches, K, momentum, eps, clip):
    """Per-bin EMA statistics with Python loops over heads, bins and samples."""
    H = batches[0][0].shape[0]
    mean = [[0.0] * K for _ in range(H)]
    var = [[1.0] * K for _ in range(H)]
    count = [[0] * K for _ in range(H)]
    outs = []
    for r, t in batches:
        bins = [min(int(float(x) * K), K - 1) for x in t]
        for h in range(H):
            for k in range(K):
                vals = [float(r[h, i]) for i in range(len(bins)) if bins[i] == k]
                if not vals:
                    continue
                m = sum(vals) / len(vals)
                v = sum((x - m) ** 2 for x in vals) / len(vals)
                beta = momentum if count[h][k] else 1.0
                d = m - mean[h][k]
                mean[h][k] += beta * d
                var[h][k] = (1 - beta) * (var[h][k] + beta * d * d) + beta * v
                count[h][k] += len(vals)
        out = torch.zeros_like(r)
        for h in range(H):
            for i, k in enumerate(bins):
                a = (float(r[h, i]) - mean[h][k]) / (var[h][k] ** 0.5 + eps)
                out[h, i] = max(-clip, min(clip, a))
        outs.append(out)
    return outs, torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64)


def test_vectorised_matches_loop_reference():
    K = 4
    norm = TimeBinnedNormalizer(heads=2, time_bins=K, momentum=0.3, eps=1e-4, clip=3.0).double()
    batches = [(torch.randn(2, 12, dtype=torch.float64) + 2, torch.rand(12, dtype=torch.float64)) for _ in range(5)]
    batches[1] = (batches[1][0], torch.full((12,), 0.1, dtype=torch.float64))  # a batch in one bin only
    ref_out, ref_mean, ref_var = _loop_reference(batches, K, 0.3, 1e-4, 3.0)
    for (r, t), ref in zip(batches, ref_out):
        torch.testing.assert_close(norm(r, None, t), ref)
    torch.testing.assert_close(norm.mean, ref_mean)
    torch.testing.assert_close(norm.var, ref_var)


def test_timestep_dependence_is_removed():
    """Rewards that depend only on t give zero advantage once the bins have learned them."""
    norm = TimeBinnedNormalizer(heads=1, time_bins=10, momentum=1.0)
    t = (torch.arange(100) + 0.5) / 100
    r = -(10 * t).floor().unsqueeze(0)  # constant within each bin, very different across bins
    adv = norm(r, None, t)
    assert adv.abs().max() < 1e-6
    # the same rewards against batch statistics (no t) are strongly non-zero
    assert norm(r, None, None).abs().max() > 1


def test_nan_rewards_do_not_corrupt_statistics():
    norm = TimeBinnedNormalizer(heads=1, time_bins=2)
    t = torch.tensor([0.1, 0.2, 0.7, 0.8])
    norm(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), None, t)
    before = (norm.mean.clone(), norm.var.clone(), norm.count.clone())
    adv = norm(torch.tensor([[float("nan"), float("inf"), float("nan"), float("-inf")]]), None, t)
    assert torch.equal(adv, torch.zeros_like(adv))
    for a, b in zip(before, (norm.mean, norm.var, norm.count)):
        assert torch.equal(a, b)
    # a partly bad batch updates only from its finite entries
    adv = norm(torch.tensor([[float("nan"), 2.0, 3.0, 4.0]]), None, t)
    assert adv[0, 0] == 0 and torch.isfinite(norm.mean).all() and norm.count[0, 0] == 3


def test_mask_excludes_entries_and_eval_mode_freezes():
    norm = TimeBinnedNormalizer(heads=2, time_bins=1)
    r = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = norm(r, mask, torch.tensor([0.3, 0.6]))
    assert norm.mean[1, 0] == 5.0 and adv[1, 1] == 0
    norm.eval()
    state = norm.mean.clone()
    norm(r + 10, None, torch.tensor([0.3, 0.6]))
    assert torch.equal(norm.mean, state)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 16), scale=st.floats(1e-8, 1e8), bins=st.integers(1, 12))
def test_always_finite_and_bounded(b, scale, bins):
    norm = TimeBinnedNormalizer(heads=1, time_bins=bins, clip=5.0)
    for _ in range(3):
        adv = norm(torch.randn(1, b) * scale, None, torch.rand(b))
        assert torch.isfinite(adv).all() and adv.abs().max() <= 5.0
    assert torch.isfinite(norm.mean).all() and torch.isfinite(norm.var).all()



def _align_inputs(b=4, n=9, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, c, generator=g, requires_grad=True), torch.randn(b, n, c, generator=g),
            torch.full((b,), 0.35))  # one timestep bin


def test_huge_reward_is_refused_and_later_losses_are_as_if_it_never_came():
    # Planted bug (moments in fp32, no finiteness condition on the commit): the squared deviation of a
    # reward of 1e30 overflows, the bin's var becomes NaN and stays NaN, every later loss on the bin is
    # NaN, and the NaN is in state_dict.
    import copy

    from vrpo_loss import VRPOAlignment

    align = VRPOAlignment(target_dims=(16,), sample_weight=1.0, metrics_every=1)
    h, y, t = _align_inputs()
    align(h, y, t=t, denoise_loss=torch.tensor([0.5, 1.0, 1.5, 2.0]))  # the bin has statistics
    refused = copy.deepcopy(align)
    bad = align(h, y, t=t, denoise_loss=torch.tensor([1e30, 1.0, 1.0, 1.0]))
    assert torch.isfinite(bad.loss) and torch.isfinite(bad.per_sample).all()
    assert all(torch.isfinite(v).all() for v in bad.metrics.values())
    assert torch.isfinite(torch.autograd.grad(bad.loss, h)[0]).all()
    refused.step = align.step  # the same step: only the statistics could differ
    for seed in range(1, 4):
        hs, ys, _ = _align_inputs(seed=seed)
        dl = torch.rand(4, generator=torch.Generator().manual_seed(seed)) + 0.5
        got, want = align(hs, ys, t=t, denoise_loss=dl), refused(hs, ys, t=t, denoise_loss=dl)
        torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
    for name, v in align.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.isfinite(v).all(), name
    torch.testing.assert_close(align.normalizer.var, refused.normalizer.var, rtol=0, atol=0)


def test_the_issue_reproducer_on_a_fresh_module_and_at_the_defaults():
    from vrpo_loss import VRPOAlignment

    h, y, t = _align_inputs()
    fresh = VRPOAlignment(target_dims=(16,), sample_weight=1.0)
    out = fresh(h, y, t=t, denoise_loss=torch.tensor([1e20, 1.0, 1.0, 1.0]))
    assert torch.isfinite(out.loss) and torch.isfinite(fresh.normalizer.var).all()
    assert torch.isfinite(fresh(h, y, t=t, denoise_loss=torch.ones(4)).loss)
    # defaults (sample_weight=0): the metric adv/sample_std must not stay NaN
    default = VRPOAlignment(target_dims=(16,))
    every = default.config.metrics_every
    stds = []
    for i in range(2 * every + 1):
        dl = torch.tensor([1e20, 1.0, 1.0, 1.0]) if i == 0 else torch.rand(4) + 0.5
        out = default(h, y, t=t, denoise_loss=dl)
        if "adv/sample_std" in out.metrics:
            stds.append(out.metrics["adv/sample_std"])
    assert len(stds) == 3 and all(torch.isfinite(s) for s in stds)
    assert torch.isfinite(default.normalizer.var).all() and torch.isfinite(default.normalizer.mean).all()


def test_update_refuses_statistics_that_overflow_the_buffers():
    norm = TimeBinnedNormalizer(heads=1, time_bins=2, momentum=0.1)
    t = torch.tensor([0.1, 0.2, 0.7, 0.8])
    norm(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), t=t)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    adv = norm(torch.tensor([[3e38, -3e38, 3.0, 4.0]]), t=t)  # finite in fp32; its variance is not
    assert torch.isfinite(adv).all() and adv.dtype == torch.float32
    for k, v in norm.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)  # refused as a whole, as a bad batch is
    # moments in float64: a spread that cancels catastrophically in fp32 is exact here
    exact = TimeBinnedNormalizer(heads=1, time_bins=1)
    exact(torch.tensor([[1e4 + 1.0, 1e4 - 1.0, 1e4 + 1.0, 1e4 - 1.0]]), t=torch.zeros(4))
    torch.testing.assert_close(exact.var, torch.ones(1, 1))



def test_bin_sums_against_a_loop():
    """The one binning of the sample-level stage and the adaptive strength: (H, B) and (B,) values."""
    from vrpo_loss.statistics import bin_sums

    g = torch.Generator().manual_seed(3)
    values = torch.randn(2, 7, generator=g)
    valid = torch.rand(2, 7, generator=g) > 0.3
    values[~valid] = float("nan")  # invalid values count as absent, whatever they hold
    bins = torch.tensor([0, 2, 2, 1, 0, 2, 3])
    ref = torch.zeros(3, 2, 4, dtype=torch.float64)
    for h in range(2):
        for b in range(7):
            if valid[h, b]:
                v = float(values[h, b])
                ref[:, h, int(bins[b])] += torch.tensor([1.0, v, v * v], dtype=torch.float64)
    torch.testing.assert_close(bin_sums(values, valid, bins, 4), ref)
    torch.testing.assert_close(bin_sums(values[1], valid[1], bins, 4), ref[:, 1])
