import math

import pytest
import torch
import torch.nn.functional as F

from vrpo_loss import VRPOConfig
from vrpo_loss.functional import signal_fraction
from vrpo_loss.policies import CorrespondencePolicy, GaussianPolicy, Policy
from vrpo_loss.rewards import DecodabilityReward, RewardContext, SemanticReward

import reference as ref


def _term(pol, mu, ctx, heads, *, diagnostics):
    """The policy term alone, per sample, with every metric: the policy's objective without the anchor."""
    out = pol.objective(mu, ctx, heads, anchor_coeff=0.0, policy_coeff=1.0, diagnostics=diagnostics, metrics=True)
    return out.loss, out.metrics


def _weighted(term, w):
    """A policy term times per-sample weights: the pipeline applies its per-sample factor outside the
    policy (``vrpo_loss.factors``), as the references in ``reference.py`` apply ``w`` inside."""
    pg, metrics = term
    return w * pg, metrics

def _gauss(**kw):
    return GaussianPolicy(config=VRPOConfig(policy="gaussian", **kw))


def _corr(**kw):
    return CorrespondencePolicy(config=VRPOConfig(policy="correspondence", **kw))


def _ctx(y, step=None):
    return RewardContext(targets=F.normalize(y, dim=-1), step=step)


_cos = ref.grad_cosine
_repa_grad = ref.repa_gradient


@pytest.mark.parametrize("space", ["sphere", "euclidean"])
@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("budget", [1 << 26, 2 * 3 * 5 * 6])  # one chunk; chunks of 2 actions
def test_gaussian_term_equals_naive_surrogate(space, antithetic, budget):
    b, n, c, G = 3, 5, 6, 8
    pol = _gauss(target_dims=(c,), group_size=G, sigma=0.3, space=space, antithetic=antithetic, max_action_elements=budget)
    if budget < 1 << 26:
        assert pol.noise.chunk_size(b, n, c) == 2
    mu = torch.randn(b, n, c, requires_grad=True)
    y = torch.randn(b, n, c)
    w = torch.rand(b) + 0.5
    pg, metrics = _weighted(_term(pol, mu, _ctx(y, step=4), [SemanticReward()], diagnostics=True), w)
    want, mean_reward = ref.naive_gaussian(pol, mu, F.normalize(y, dim=-1), w, pol.call_seed(4, 0))
    torch.testing.assert_close(pg, want, atol=1e-6, rtol=1e-5)
    (g,) = torch.autograd.grad(pg.sum(), mu)
    (g_ref,) = torch.autograd.grad(want.sum(), mu, retain_graph=True)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)
    # the closed-form diagnostic agrees with autograd (on the policy term itself, before the pipeline's factor)
    (g_term,) = torch.autograd.grad((want / w).sum(), mu)
    assert abs(metrics["signal_frac"].item() - _cos(g_term, _repa_grad(mu, y))) < 1e-4
    # the reported mean reward is over the whole group, however it is chunked
    torch.testing.assert_close(metrics["rewards/semantic/mean"], mean_reward, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("semantic", [SemanticReward, lambda: _SemanticCopy()])
def test_chunked_group_metrics_equal_unchunked(semantic):
    """A group processed in 4 chunks reports the metrics of the same group in one chunk (same noise)."""
    b, n, c, G = 2, 4, 5, 8
    mu = torch.randn(b, n, c)
    y = torch.randn(b, n, c)
    one = _gauss(target_dims=(c,), group_size=G, sigma=0.3)
    many = _gauss(target_dims=(c,), group_size=G, sigma=0.3, max_action_elements=2 * b * n * c)
    assert many.noise.chunk_size(b, n, c) == 2 and one.noise.chunk_size(b, n, c) == G

    class Same:  # the chunked policy's noise, drawn as one chunk
        def __init__(self, full):
            self.full = full

        def starts(self, shape):
            return range(1)  # one chunk

        def chunk(self, seed, i, shape, device, dtype=torch.float32):
            return self.full[: G // 2]  # antithetic: the independent half ...

    full = ref.all_draws(many.noise, many.call_seed(0, 0), (b, n, c), "cpu")
    halves = torch.cat([full[g : g + 1] for g in range(0, G, 2)])  # ... of each chunk's pairs
    one.noise = Same(halves)
    _, m_many = _term(many, mu, _ctx(y), [semantic()], diagnostics=True)
    _, m_one = _term(one, mu, _ctx(y), [semantic()], diagnostics=True)
    assert set(m_one) == set(m_many)
    for k in m_one:  # the actions are the same up to their order within the group
        torch.testing.assert_close(m_many[k], m_one[k], atol=1e-6, rtol=1e-5, msg=k)


def test_gaussian_learned_sigma_gradient_matches_naive():
    b, n, c = 2, 4, 5
    pol = _gauss(target_dims=(c,), group_size=6, sigma=0.2, learn_sigma=True)
    mu = torch.randn(b, n, c)
    y = torch.randn(b, n, c)
    w = torch.ones(b)
    pg, _ = _weighted(_term(pol, mu, _ctx(y, step=7), [SemanticReward()], diagnostics=False), w)
    (g,) = torch.autograd.grad(pg.sum(), pol.log_sigma[0])
    ls = pol.log_sigma[0].detach().clone().requires_grad_(True)
    want, _ = ref.naive_gaussian(pol, mu, F.normalize(y, dim=-1), w, pol.call_seed(7, 0), log_sigma=ls)
    (g_ref,) = torch.autograd.grad(want.sum(), ls)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("space", ["sphere", "euclidean"])
def test_gaussian_policy_gradient_points_along_repa(space):
    """Semantic reward only, scale 'none', small sigma, many actions: E[grad] is REPA's direction."""
    b, n, c = 2, 8, 16
    pol = _gauss(target_dims=(c,), group_size=4096, sigma=0.02, space=space, adv_scale="none", adv_clip=1e9)
    mu = torch.randn(b, n, c, requires_grad=True)
    y = torch.randn(b, n, c)
    pg, metrics = _term(pol, mu, _ctx(y), [SemanticReward()], diagnostics=True)
    (g,) = torch.autograd.grad(pg.sum(), mu)
    repa = _repa_grad(mu, y)
    assert _cos(g, repa) > 0.95
    # with few actions the same estimator is mostly noise (cosine about sqrt(G / C))
    few = _gauss(target_dims=(c,), group_size=2, sigma=0.02, space=space, adv_scale="none", adv_clip=1e9)
    pg2, _ = _term(few, mu, _ctx(y), [SemanticReward()], diagnostics=False)
    (g2,) = torch.autograd.grad(pg2.sum(), mu)
    assert _cos(g2, repa) < _cos(g, repa) - 0.2


def test_gaussian_noise_is_antithetic_and_seeded():
    pol = _gauss(target_dims=(4,), group_size=6, antithetic=True, max_action_elements=2 * 2 * 3 * 4)
    e1 = ref.all_draws(pol.noise, 5, (2, 3, 4), "cpu")
    e2 = ref.all_draws(pol.noise, 5, (2, 3, 4), "cpu")
    assert e1.shape == (6, 2, 3, 4)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(e1[0], -e1[1])  # chunks of 2: pairs (0, 1), (2, 3), (4, 5)
    assert not torch.equal(e1, ref.all_draws(pol.noise, 6, (2, 3, 4), "cpu"))
    assert pol.call_seed(1, 0) != pol.call_seed(2, 0) != pol.call_seed(2, 1)


def test_sigma_schedule_and_clamp():
    pol = _gauss(target_dims=(4,), sigma=0.1, sigma_final=0.01, sigma_decay_steps=100)
    assert abs(pol.sigma_at(0, "cpu", 0).item() - 0.1) < 1e-7
    assert abs(pol.sigma_at(0, "cpu", 50).item() - math.sqrt(0.1 * 0.01)) < 1e-7
    assert abs(pol.sigma_at(0, "cpu", 500).item() - 0.01) < 1e-7
    learned = _gauss(target_dims=(4,), sigma=0.1, learn_sigma=True, sigma_max=0.5)
    with torch.no_grad():
        learned.log_sigma[0].fill_(5.0)
    assert abs(learned.sigma_at(0, "cpu").max().item() - 0.5) < 1e-6


def test_correspondence_exact_expectation_equals_monte_carlo():
    b, n, c = 2, 5, 8
    pol = _corr(tau=0.5)
    mu = torch.randn(b, n, c, dtype=torch.float64, requires_grad=True)
    y = F.normalize(torch.randn(b, n, c, dtype=torch.float64), dim=-1)
    ctx = RewardContext(targets=y)
    w = torch.ones(b, dtype=torch.float64)
    pg, metrics = _weighted(_term(pol, mu, ctx, [SemanticReward()], diagnostics=True), w)
    (g_exact,) = torch.autograd.grad(pg.sum(), mu)

    # Monte Carlo: sample candidates j ~ pi(. | i), the score-function estimator with the same advantages
    logp = torch.log_softmax(ref.unit(mu) @ y.transpose(1, 2) / 0.5, dim=-1)
    probs = logp.detach().exp()
    adv, _ = ref.candidate_advantage(y @ y.transpose(1, 2), probs, "group", 1e-4, 5.0)
    S = 200_000
    j = torch.distributions.Categorical(probs=probs).sample((S,))  # (S, B, N)
    lp = logp.unsqueeze(0).expand(S, -1, -1, -1).gather(-1, j.unsqueeze(-1)).squeeze(-1)
    a = adv.unsqueeze(0).expand(S, -1, -1, -1).gather(-1, j.unsqueeze(-1)).squeeze(-1)
    mc = -(a * lp).mean(0).mean(-1)  # per sample, like pg
    (g_mc,) = torch.autograd.grad(mc.sum(), mu)
    assert _cos(g_exact, g_mc) > 0.99
    assert abs(g_mc.norm() / g_exact.norm() - 1) < 0.05
    assert abs(metrics["signal_frac"].item() - _cos(g_exact, _repa_grad(mu, y))) < 1e-6


def test_correspondence_gradient_routing_and_zero_weight():
    b, n, c = 2, 4, 6
    pol = _corr(tau=0.1)
    mu = torch.randn(b, n, c, requires_grad=True)
    y = F.normalize(torch.randn(b, n, c), dim=-1).requires_grad_(True)
    pg, _ = _weighted(_term(pol, mu, RewardContext(targets=y), [SemanticReward()], diagnostics=False), torch.tensor([1.0, 0.0]))
    g_mu, g_y = torch.autograd.grad(pg.sum(), [mu, y], allow_unused=True)
    assert g_y is None or g_y.abs().sum() == 0  # targets are data
    assert g_mu[0].abs().sum() > 0 and g_mu[1].abs().sum() == 0  # weight zero: no push on sample 1


@pytest.mark.parametrize("space", ["sphere", "euclidean"])
@pytest.mark.parametrize("scale", ["group", "none"])
def test_control_variate_is_unbiased_and_reduces_variance(space, scale):
    b, n, c = 2, 6, 16
    mu = torch.randn(b, n, c, dtype=torch.float64, requires_grad=True)
    y = torch.randn(b, n, c, dtype=torch.float64)
    w = torch.ones(b, dtype=torch.float64)

    def grad(G, cv, step):
        pol = _gauss(target_dims=(c,), group_size=G, sigma=0.05, space=space, adv_scale=scale, adv_clip=1e9, control_variate=cv)
        pg, metrics = _weighted(_term(pol, mu, _ctx(y, step), [SemanticReward()], diagnostics=True), w)
        (g,) = torch.autograd.grad(pg.sum(), mu)
        return g, metrics

    want, _ = grad(8192, False, 0)  # the plain estimator with many actions: close to its expectation
    many, _ = grad(8192, True, 1)
    assert _cos(many, want) > 0.98 and abs(many.norm() / want.norm() - 1) < 0.1
    few_cv, metrics = grad(2, True, 2)
    few, _ = grad(2, False, 2)
    assert _cos(few_cv, want) > 0.9 > _cos(few, want) + 0.2
    # the closed-form diagnostic includes the control variate's term
    assert abs(metrics["signal_frac"].item() - _cos(few_cv, _repa_grad(mu, y))) < 1e-6


def test_control_variate_needs_differentiable_heads():
    class Step(SemanticReward):
        def reward(self, z, ctx):
            return (super().reward(z, ctx) > 0).float()

    pol = _gauss(target_dims=(4,), group_size=2, control_variate=True)
    with pytest.raises(ValueError, match="control_variate"):
        _term(pol, torch.randn(1, 3, 4), _ctx(torch.randn(1, 3, 4)), [Step()], diagnostics=False)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("clip", [5.0, 0.3])
@pytest.mark.parametrize("dtype, decodability", [(torch.float64, False), (torch.float32, False), (torch.float32, True)])
def test_correspondence_closed_form_gradient_equals_autograd_surrogate(scale, clip, dtype, decodability):
    """The fused term (gradient in closed form) equals the surrogate through autograd: value, gradient, metrics."""
    b, n, c = 3, 16, 12
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    pol = _corr(tau=0.2, adv_scale=scale, adv_clip=clip)
    mu = torch.randn(b, n, c, dtype=dtype)
    mu[0, 3] = 0.0  # a zero token: normalize's clamp
    mu.requires_grad_(True)
    y = F.normalize(torch.randn(b, n, c, dtype=dtype), dim=-1)
    heads = [SemanticReward()]
    ctx = RewardContext(targets=y)
    if decodability:
        heads.append(DecodabilityReward(target_dims=(c,), patch_dim=4, patch=1, weight=0.5))
        ctx = RewardContext(targets=y, x0=torch.randn(b, 4, 4, 4))
    w = torch.rand(b, dtype=dtype) + 0.5
    pg, m = _weighted(_term(pol, mu, ctx, heads, diagnostics=True), w)
    want, m_ref = ref.correspondence_autograd(0.2, scale, 1e-4, clip, mu, y, heads, ctx, w)
    torch.testing.assert_close(pg, want, **tol)
    scale_b = torch.arange(1.0, b + 1, dtype=dtype)  # a different upstream gradient per sample
    (g,) = torch.autograd.grad((pg * scale_b).sum(), mu)
    (g_ref,) = torch.autograd.grad((want * scale_b).sum(), mu, retain_graph=True)
    torch.testing.assert_close(g, g_ref, **tol)
    assert set(m) == set(m_ref) | {"signal_frac"}
    for k in m_ref:
        torch.testing.assert_close(m[k].to(dtype), m_ref[k].to(dtype), **tol, msg=k)
    (g_one,) = torch.autograd.grad((want / w).sum(), mu)  # the diagnostic: the term before the factor
    assert abs(m["signal_frac"].item() - _cos(g_one, _repa_grad(mu, y))) < (1e-9 if dtype == torch.float64 else 1e-4)


class _SemanticCopy(SemanticReward):
    """The semantic reward without its fast path: the policy materialises the actions."""

    def gaussian_reward(self, half, m0, s0, ctx, *, antithetic):
        return None


@pytest.mark.parametrize("space", ["sphere", "euclidean"])
@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("budget", [1 << 26, 2 * 3 * 5 * 6])
def test_gaussian_semantic_fast_path_equals_materialised_actions(space, antithetic, budget):
    """The semantic rewards from three noise reductions equal cos(z, y) on materialised actions."""
    b, n, c, G = 3, 5, 6, 8
    pol = _gauss(target_dims=(c,), group_size=G, sigma=0.3, space=space, antithetic=antithetic, max_action_elements=budget)
    mu = torch.randn(b, n, c, requires_grad=True)
    y = torch.randn(b, n, c)
    w = torch.rand(b) + 0.5
    pg, m = _weighted(_term(pol, mu, _ctx(y, 3), [SemanticReward(weight=0.7)], diagnostics=True), w)
    want, m_ref = _weighted(_term(pol, mu, _ctx(y, 3), [_SemanticCopy(weight=0.7)], diagnostics=True), w)
    torch.testing.assert_close(pg, want, atol=1e-6, rtol=1e-5)
    (g,) = torch.autograd.grad(pg.sum(), mu)
    (g_ref,) = torch.autograd.grad(want.sum(), mu)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)
    for k in m:
        torch.testing.assert_close(m[k], m_ref[k], atol=1e-5, rtol=1e-4, msg=k)


def test_signal_fraction_equals_cosine_with_explicit_repa_gradient():
    mu = torch.randn(3, 7, 5, dtype=torch.float64)
    mu[1, 2] = 0.0  # zero token
    y = F.normalize(torch.randn(3, 7, 5, dtype=torch.float64), dim=-1)
    g = torch.randn(3, 7, 5, dtype=torch.float64)
    assert abs(signal_fraction(g, mu, y).item() - _cos(g, _repa_grad(mu, y))) < 1e-10
    assert abs(signal_fraction(_repa_grad(mu, y), mu, y).item() - 1) < 1e-10


def test_correspondence_without_gradient_gives_the_same_value_and_metrics():
    b, n, c = 2, 6, 5
    pol = _corr(tau=0.3)
    mu = torch.randn(b, n, c, requires_grad=True)
    y = F.normalize(torch.randn(b, n, c), dim=-1)
    w = torch.rand(b) + 0.5
    pg, m = _weighted(_term(pol, mu, RewardContext(targets=y), [SemanticReward()], diagnostics=True), w)
    with torch.no_grad():
        pg0, m0 = _weighted(_term(pol, mu, RewardContext(targets=y), [SemanticReward()], diagnostics=True), w)
        pg1, m1 = _weighted(_term(pol, mu, RewardContext(targets=y), [SemanticReward()], diagnostics=False), w)
    assert pg0.grad_fn is None
    torch.testing.assert_close(pg0, pg.detach())
    torch.testing.assert_close(pg1, pg.detach())
    torch.testing.assert_close(m0["signal_frac"], m["signal_frac"])
    assert "signal_frac" not in m1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("coeffs", [(1.0, 1.0), (0.7, 1.3), (0.0, 1.0)])
@pytest.mark.parametrize("weighted", [True, False])
def test_correspondence_objective_equals_anchor_plus_surrogate_by_autograd(dtype, coeffs, weighted):
    """The fused anchor and policy term (one closed-form gradient) equals REPA's term plus the surrogate
    through autograd: value, gradient for per-sample upstream gradients, the detached parts, the signal fraction."""
    b, n, c = 3, 16, 12
    ca, cp = coeffs
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    pol = _corr(tau=0.2)
    mu = torch.randn(b, n, c, dtype=dtype)
    mu[1, 5] = 0.0  # a zero token: normalize's clamp
    mu.requires_grad_(True)
    y = F.normalize(torch.randn(b, n, c, dtype=dtype), dim=-1)
    ctx = RewardContext(targets=y)
    w = torch.rand(b, dtype=dtype) + 0.5 if weighted else torch.ones(b, dtype=dtype)
    ones = torch.ones(b, dtype=dtype)
    out = pol.objective(mu, ctx, [SemanticReward()], anchor_coeff=ca, policy_coeff=cp, diagnostics=True, metrics=True)
    pg, _ = ref.correspondence_autograd(0.2, "group", 1e-4, 5.0, mu, y, [SemanticReward()], ctx, ones)
    pg_w, _ = ref.correspondence_autograd(0.2, "group", 1e-4, 5.0, mu, y, [SemanticReward()], ctx, w)
    anchor = (1 - F.cosine_similarity(mu, y, dim=-1, eps=1e-12)).mean(-1)
    want = ca * w * anchor + cp * pg_w  # the reference weights inside; the pipeline multiplies the factor outside
    torch.testing.assert_close(w * out.loss, want, **tol)
    torch.testing.assert_close(out.anchor, anchor.detach(), **tol)
    torch.testing.assert_close(out.policy, pg.detach(), **tol)
    upstream = torch.arange(1.0, b + 1, dtype=dtype)
    (g,) = torch.autograd.grad((w * out.loss * upstream).sum(), mu)
    (g_ref,) = torch.autograd.grad((want * upstream).sum(), mu, retain_graph=True)
    torch.testing.assert_close(g, g_ref, **tol)
    (g_pol,) = torch.autograd.grad(pg.sum(), mu)  # the signal fraction is the policy term's alone
    assert abs(out.metrics["signal_frac"].item() - _cos(g_pol, _repa_grad(mu, y))) < (1e-9 if dtype == torch.float64 else 1e-4)


def test_objective_off_step_reports_only_the_reward_means():
    b, n, c = 2, 6, 5
    mu = torch.randn(b, n, c, requires_grad=True)
    y = F.normalize(torch.randn(b, n, c), dim=-1)
    for pol in (_corr(tau=0.3), _gauss(target_dims=(c,), group_size=4)):
        full = pol.objective(mu, _ctx(y, 0), [SemanticReward()], anchor_coeff=1.0, policy_coeff=1.0, diagnostics=False, metrics=True)
        off = pol.objective(mu, _ctx(y, 0), [SemanticReward()], anchor_coeff=1.0, policy_coeff=1.0, diagnostics=False, metrics=False)
        assert set(off.metrics) == {"rewards/semantic/mean"} and len(full.metrics) > 3
        torch.testing.assert_close(off.loss, full.loss)
        torch.testing.assert_close(off.metrics["rewards/semantic/mean"], full.metrics["rewards/semantic/mean"])


def test_gaussian_metrics_stage_runs_on_the_calls_that_report_it(monkeypatch):
    """Off metric steps the Gaussian policy skips its metrics stage (it costs ops, not values); a diagnostics
    call off a metric step computes the signal fraction alone, equal to the full call's."""
    b, n, c = 2, 6, 5
    mu = torch.randn(b, n, c, requires_grad=True)
    y = F.normalize(torch.randn(b, n, c), dim=-1)
    pol, seen = _gauss(target_dims=(c,), group_size=4), []
    stage = GaussianPolicy._metrics

    def spy(self, *args, **kw):
        out = stage(self, *args, **kw)
        seen.append(set(out))
        return out

    monkeypatch.setattr(GaussianPolicy, "_metrics", spy)

    def call(metrics, diagnostics):
        return pol.objective(mu, _ctx(y, 0), [SemanticReward()], anchor_coeff=1.0, policy_coeff=1.0,
                             diagnostics=diagnostics, metrics=metrics)

    full, off, diag = call(True, True), call(False, False), call(False, True)
    assert seen[0] >= {"sigma", "adv/std", "kl", "signal_frac"} and seen[1:] == [{"signal_frac"}]  # none for `off`
    assert set(diag.metrics) == {"rewards/semantic/mean", "signal_frac"}
    torch.testing.assert_close(diag.metrics["signal_frac"], full.metrics["signal_frac"])
    torch.testing.assert_close(off.loss, full.loss)


class _PullToTarget(Policy):
    """A user's policy: the policy term pulls each token towards its own target (REPA's term again),
    so the module's loss is anchor_coeff * anchor + policy_coeff * the same (hand-checkable)."""

    def objective(self, mu, ctx, heads, *, anchor_coeff, policy_coeff, diagnostics, metrics):
        from vrpo_loss.policies.base import anchored

        pg = (1 - F.cosine_similarity(mu, ctx.targets, dim=-1)).mean(-1)
        return anchored(pg, {"custom/seen": torch.ones(())}, mu, ctx.targets, anchor_coeff=anchor_coeff,
                        policy_coeff=policy_coeff, metrics=metrics)


def test_a_users_policy_instance_is_the_policy():
    from vrpo_loss import VRPOAlignment

    align = VRPOAlignment(target_dims=(4,), policy=_PullToTarget(), policy_coeff=2.0)
    assert align.config.policy == "custom" and isinstance(align.policy, _PullToTarget)
    mu, y = torch.randn(3, 5, 4, requires_grad=True), torch.randn(3, 5, 4)
    out = align(mu, y)
    ref = 3.0 * (1 - F.cosine_similarity(mu.double(), y.double(), dim=-1)).mean()  # anchor 1 + policy 2
    torch.testing.assert_close(out.loss.double(), ref)
    assert "custom/seen" in out.metrics
    # the families' options do not act with it; 'custom' names an instance; a module that is no Policy is refused
    with pytest.raises(ValueError, match="^tau: acts only with"):
        VRPOAlignment(target_dims=(4,), policy=_PullToTarget(), tau=0.5)
    with pytest.raises(ValueError, match="^policy: 'custom' names a policy passed as an instance"):
        VRPOAlignment(target_dims=(4,), policy="custom")
    with pytest.raises(TypeError, match="^policy: expected a string or a vrpo_loss.policies.Policy, got Linear"):
        VRPOAlignment(target_dims=(4,), policy=torch.nn.Linear(2, 2))
