"""Adaptive per-timestep-bin alignment strength (``adaptive=...``): routing, lag, bounds, state, DDP, compile, input."""

import copy
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from vrpo_loss import VRPOAlignment, VRPOConfig

from conftest import acting_only

B, N, D, C, K = 8, 4, 6, 5, 4


def _align(**kw):
    base = dict(hidden_dim=D, target_dims=(C,), projector_dim=16, time_bins=K, adaptive="agreement", metrics_every=1)
    base.update(kw)
    return VRPOAlignment(**acting_only(base))  # the base's options where they act (time_bins, projector_dim)


class _Model(nn.Module):
    """A stand-in diffusion model: tokens h from the input, and a per-sample denoising loss read from h."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, D)
        self.read = nn.Linear(D, 2)

    def forward(self, x, target):
        h = torch.tanh(self.enc(x))
        return h, (self.read(h) - target).pow(2).mean((1, 2))


def _batches(steps, b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(x=torch.randn(b, N, 3, generator=g), target=torch.randn(b, N, 2, generator=g),
                 y=torch.randn(b, N, C, generator=g), t=torch.rand(b, generator=g)) for _ in range(steps)]


def _bins(t):
    return [min(int(float(v) * K), K - 1) for v in t]


def _strengths(out):
    return torch.stack([out.metrics[f"adaptive/strength/bin{k}"] for k in range(K)])


def _train(model, align, batches, coeff=0.5):
    """Host loop: loss = denoise + coeff * align; returns the last output (grads left in place)."""
    for batch in batches:
        model.zero_grad(set_to_none=True)
        align.zero_grad(set_to_none=True)
        h, den = model(batch["x"], batch["target"])
        out = align(h, batch["y"], t=batch["t"], denoise_loss=den.detach())
        (den.mean() + coeff * out.loss).backward()
    return out


# ----- gradient routing: the hooks change nothing; the strength is the only change -------------------

@pytest.mark.parametrize("mode", ["vrpo", "repa"])
@pytest.mark.parametrize("signal,terminate", [("agreement", False), ("agreement", True), ("achievability", False)])
def test_gradient_reaching_the_model_is_the_reweighted_one(mode, signal, terminate):
    torch.manual_seed(1)
    model, align = _Model(), _align(mode=mode, adaptive=signal, adaptive_terminate=terminate, adaptive_gain=3.0)
    ref_align = _align(mode=mode, adaptive="none")
    ref_align.projectors.load_state_dict(align.projectors.state_dict())  # same projector
    batches = _batches(4)
    out = _train(model, align, batches)
    s = _strengths(out)
    assert (s - s.mean()).abs().max() > 0.05, "the test needs strengths that differ between bins"
    got = {n: p.grad.clone() for n, p in list(model.named_parameters()) + list(align.named_parameters())}

    last = batches[-1]  # reference: no hooks, the reported strength applied by hand per sample
    model.zero_grad(set_to_none=True)
    h, den = model(last["x"], last["target"])
    ref = ref_align(h, last["y"], t=last["t"], denoise_loss=den.detach())
    per_bin = s[torch.tensor(_bins(last["t"]))]
    (den.mean() + 0.5 * (per_bin * ref.per_sample).mean()).backward()
    torch.testing.assert_close(out.per_sample, per_bin * ref.per_sample)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)
    for n, p in ref_align.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)


# ----- the agreement: its value, its sign, read one step late -----------------------------------------

def _loop_agreement(g_align, g_rest):
    out = []
    for a, r in zip(g_align.double(), g_rest.double()):
        out.append(float((a * r).sum() / (a.norm() * r.norm())))
    return out


def _loop_strength(mean, var, cnt, gain, lo, hi, eps=1e-4):
    total = sum(cnt)
    p = [c / total for c in cnt]
    centre = sum(pk * m for pk, m in zip(p, mean))
    spread = math.sqrt(sum(pk * v for pk, v in zip(p, var)))
    s = [min(hi, max(lo, 1 + gain * ((m - centre) / (spread + eps) if c > 0 else 0.0))) for m, c in zip(mean, cnt)]
    norm = sum(pk * sk for pk, sk in zip(p, s))
    return [min(hi, max(lo, sk / norm)) for sk in s]


def test_agreement_is_measured_in_backward_and_read_at_the_next_step():
    torch.manual_seed(2)
    model, align = _Model(), _align(mode="repa", adaptive_gain=2.0, adaptive_min=0.2, adaptive_max=1.8)
    b1, b2 = _batches(2)
    h, den = model(b1["x"], b1["target"])
    out1 = align(h, b1["y"], t=b1["t"])
    assert torch.equal(_strengths(out1), torch.ones(K))  # nothing measured yet
    assert align.adaptive.stats.count[1].sum() == 0
    g_align = torch.autograd.grad(0.5 * out1.loss, h, retain_graph=True)[0]  # reference; also an extra backward
    g_rest = torch.autograd.grad(den.mean(), h, retain_graph=True)[0]
    ref = _loop_agreement(g_align, g_rest)
    (den.mean() + 0.5 * out1.loss).backward()
    assert align.adaptive.stats.count[1].sum() == 0  # written by the hooks, not yet taken in

    h2, _ = model(b2["x"], b2["target"])
    out2 = align(h2, b2["y"], t=b2["t"])
    bins = _bins(b1["t"])
    mean, var, cnt = [], [], []
    for k in range(K):
        vals = [a for a, bk in zip(ref, bins) if bk == k]
        cnt.append(len(vals))
        mean.append(sum(vals) / len(vals) if vals else 0.0)
        var.append(sum((v - mean[-1]) ** 2 for v in vals) / len(vals) if vals else 1.0)
    stats = align.adaptive.stats
    torch.testing.assert_close(stats.count[1], torch.tensor(cnt, dtype=torch.float32))
    torch.testing.assert_close(stats.mean[1], torch.tensor(mean), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats.var[1], torch.tensor(var), atol=1e-5, rtol=1e-4)
    for k in range(K):
        torch.testing.assert_close(out2.metrics[f"adaptive/agreement/bin{k}"], torch.tensor(mean[k]), atol=1e-5, rtol=1e-4)
    want = _loop_strength(mean, var, cnt, 2.0, 0.2, 1.8)
    torch.testing.assert_close(_strengths(out2), torch.tensor(want), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lam", [0.5, -2.0])
def test_agreement_sign_hand_case(lam):
    # the rest of the loss is lam times the alignment loss itself: agreement sign(lam) for every sample
    align = _align(mode="repa")
    h, y, t = torch.randn(B, N, D, requires_grad=True), torch.randn(B, N, C), torch.rand(B)
    out = align(h, y, t=t)
    same = -torch.nn.functional.cosine_similarity(align.projectors[0](h), y, dim=-1).mean()
    (out.loss + lam * same).backward()
    cnt, total = align.adaptive._pending[0], align.adaptive._pending[1]
    assert cnt.sum() == B
    torch.testing.assert_close(total, math.copysign(1.0, lam) * cnt)


def test_no_agreement_when_the_backward_misses_a_part():
    align = _align(mode="repa")
    h = torch.randn(B, N, D, requires_grad=True)
    align(h, torch.randn(B, N, C), t=torch.rand(B)).loss.backward()  # alignment only: no denoising part
    assert align.adaptive._pending[0].sum() == 0
    out = align(h, torch.randn(B, N, C), t=torch.rand(B))
    assert align.adaptive.stats.count[1].sum() == 0 and torch.equal(_strengths(out), torch.ones(K))


def test_a_second_backward_replaces_the_measurement():
    align = _align(mode="repa")
    h = torch.randn(B, N, D, requires_grad=True)
    out = align(h, torch.randn(B, N, C), t=torch.rand(B))
    loss = out.loss + (h * torch.randn(B, N, D)).sum()
    loss.backward(retain_graph=True)
    first = align.adaptive._pending.clone()
    loss.backward()
    assert first[0].sum() == B and torch.equal(align.adaptive._pending, first)


# ----- achievability, bounds, termination -------------------------------------------------------------

def _achievability(**kw):
    """The achievability signal on projected tokens (``hidden_dim=None``), its metrics on every call."""
    return VRPOAlignment(**{**dict(hidden_dim=None, target_dims=(C,), time_bins=K, adaptive="achievability",
                                   metrics_every=1), **kw})


def test_achievability_aligns_more_where_alignment_is_achieved():
    align = _achievability(adaptive_gain=10.0, adaptive_min=0.1, adaptive_max=3.0)
    t = (torch.arange(64) + 0.5) / 64
    y = torch.randn(64, N, C)
    feats = y + 3 * t.view(-1, 1, 1) * torch.randn(64, N, C)  # the cosine falls with t
    s = _strengths(align(feats, y, t=t))
    assert torch.all(s[:-1] >= s[1:]) and s[0] > 1.5 and s[-1] == pytest.approx(0.1)  # a gate learned from the reward
    assert (s >= 0.1).all() and (s <= 3.0).all()


@pytest.mark.parametrize("gain", [0.1, 50.0])
def test_strength_bounds_and_unit_mean(gain):
    align = _align(adaptive="achievability", hidden_dim=None, target_dims=(C,), adaptive_gain=gain, adaptive_min=0.4, adaptive_max=1.5)
    for _ in range(3):
        t = torch.rand(32)
        y = torch.randn(32, N, C)
        s = _strengths(align(y + 4 * t.view(-1, 1, 1) * torch.randn(32, N, C), y, t=t))
        assert (s >= 0.4 - 1e-6).all() and (s <= 1.5 + 1e-6).all()
    cnt = align.adaptive.stats.count[0]
    mean_strength = float((s * cnt).sum() / cnt.sum())
    assert mean_strength == pytest.approx(1.0, abs=1e-5 if gain < 1 else 0.2)  # exact unless the bounds bite


def test_strength_acts_and_learns_on_every_call_its_metrics_follow_metrics_every():
    """In mode 'vrpo' the per-bin metrics are built on the metric calls only (metrics_every); the
    statistics take in every call's batch and every call's loss carries the strength."""
    every = _align(adaptive="achievability", hidden_dim=None, target_dims=(C,), adaptive_gain=5.0, metrics_every=1)
    sparse = _align(adaptive="achievability", hidden_dim=None, target_dims=(C,), adaptive_gain=5.0, metrics_every=3)
    g = torch.Generator().manual_seed(3)
    for call in range(4):
        t, y = torch.rand(B, generator=g), torch.randn(B, N, C, generator=g)
        feats = y + 3 * t.view(-1, 1, 1) * torch.randn(B, N, C, generator=g)
        a, b = every(feats, y, t=t), sparse(feats, y, t=t)
        assert ("adaptive/strength/bin0" in b.metrics) == (call % 3 == 0)
        torch.testing.assert_close(b.per_sample, a.per_sample)  # the same strength on every call
        torch.testing.assert_close(sparse.adaptive.stats.count, every.adaptive.stats.count)
    assert every.adaptive.stats.count.sum() == 4 * B


def test_hand_computed_strength():
    # two bins, means 0 and 1, unit variances, equal counts: z = -/+ 0.5 / (1 + 1e-4)
    from vrpo_loss.factors.adaptive import bin_strength

    s = bin_strength(torch.tensor([0.0, 1.0]), torch.ones(2), torch.tensor([3.0, 3.0]), gain=1.0, s_min=0.1, s_max=2.0)
    z = 0.5 / (1 + 1e-4)
    torch.testing.assert_close(s, torch.tensor([1 - z, 1 + z]))


def test_terminate_gate_decays_only_while_alignment_stops_paying():
    m = 0.25
    align = _achievability(adaptive_terminate=True, adaptive_momentum=m)
    y, t, noise = torch.randn(16, N, C), torch.rand(16), torch.randn(16, N, C)
    for scale in (4.0, 2.0, 1.0, 0.5):  # the cosine improves every step: no decay
        out = align(y + scale * noise, y, t=t)
        assert out.metrics["adaptive/gate"] == 1.0
    for k in range(1, 4):  # worse batches: the running cosine falls below its best
        out = align(y + 2.0 * noise, y, t=t)
        torch.testing.assert_close(out.metrics["adaptive/gate"], torch.tensor((1 - m) ** k))
        torch.testing.assert_close(_strengths(out), torch.full((K,), (1 - m) ** k) * _strengths(out) / out.metrics["adaptive/gate"])


def test_terminate_gate_decays_when_agreement_turns_negative():
    align = _align(mode="repa", adaptive_terminate=True, adaptive_momentum=0.5)
    y, t = torch.randn(B, N, C), torch.rand(B)
    gates = []
    for scale in (3.0, 2.0, 1.0, 0.5):  # the cosine improves; the rest of the loss opposes the alignment
        h = (torch.randn(B, N, D) * scale).requires_grad_()
        out = align(h, y, t=t)
        gates.append(float(out.metrics["adaptive/gate"]))
        same = -torch.nn.functional.cosine_similarity(align.projectors[0](h), y, dim=-1).mean()
        (out.loss - 2 * same).backward()
    assert gates[0] == 1.0 and gates[1] == 0.5 and gates[2] == 0.25


# ----- adaptive_every: updates on a schedule, the last strengths between -----------------------------

def _calls(n, seed=5):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t, y = torch.rand(B, generator=g), torch.randn(B, N, C, generator=g)
        out.append((y + 3 * t.view(-1, 1, 1) * torch.randn(B, N, C, generator=g), y, t))
    return out


@pytest.mark.parametrize("terminate", [False, True])
def test_every_k_steps_equals_every_step_on_the_update_steps_alone(terminate):
    """adaptive_every=3 over 7 calls: the statistics (and the gate) equal those of adaptive_every=1 fed
    calls 0, 3 and 6 alone; calls 1-2 and 4-5 apply the strengths of the update before them."""
    sched = _achievability(adaptive_gain=5.0, adaptive_every=3, adaptive_terminate=terminate)
    ref = _achievability(adaptive_gain=5.0, adaptive_terminate=terminate)
    plain = VRPOAlignment(hidden_dim=None, target_dims=(C,), metrics_every=1)
    table = None
    for i, (f, y, t) in enumerate(_calls(7)):
        out = sched(f, y, t=t)
        if i % 3 == 0:
            want = ref(f, y, t=t)
            table = _strengths(want)
            torch.testing.assert_close(out.per_sample, want.per_sample)
        strength = table[torch.tensor(_bins(t))]  # the last update's strengths, per sample
        torch.testing.assert_close(out.per_sample, strength * plain(f, y, t=t).per_sample)
        torch.testing.assert_close(_strengths(out), table)
    for name, v in ref.adaptive.state_dict().items():
        if name != "_extra_state":
            torch.testing.assert_close(sched.adaptive.state_dict()[name], v, msg=name)
    assert sched.adaptive.stats.count.sum() == 3 * B


def test_every_k_steps_follows_the_optimizer_step_under_accumulation():
    # accumulation_steps=2, adaptive_every=2: the two calls of steps 0 and 2 update, those of steps 1 and 3 do not
    align = _achievability(adaptive_gain=5.0, adaptive_every=2, accumulation_steps=2)
    counts = []
    for f, y, t in _calls(8):
        align(f.requires_grad_(True), y, t=t)
        counts.append(int(align.adaptive.stats.count.sum()) // B)
    assert counts == [1, 2, 2, 2, 3, 4, 4, 4]


def test_agreement_taken_in_at_an_update_is_the_last_backwards():
    torch.manual_seed(6)
    model, align = _Model(), _align(mode="repa", adaptive_every=2)
    batches = _batches(3)
    _train(model, align, batches[:2])  # call 0 updates (nothing pending yet), call 1 does not
    assert align.adaptive.stats.count[1].sum() == 0
    pending = align.adaptive._pending.clone()  # call 1's backward (call 0's was overwritten)
    before = align.adaptive.stats.mean[1].clone()
    _train(model, align, batches[2:])  # call 2 updates with call 1's agreement
    assert align.adaptive.stats.count[1].sum() == pending[0].sum() == B
    cnt, mean = pending[0], pending[1] / pending[0].clamp_min(1)
    want = torch.where(cnt > 0, mean, before)  # a bin's first batch sets its mean
    torch.testing.assert_close(align.adaptive.stats.mean[1], want.float())


def test_strengths_after_a_load_come_from_the_loaded_statistics():
    a = _achievability(adaptive_gain=5.0, adaptive_every=5)
    calls = _calls(3)
    for f, y, t in calls[:2]:
        a(f, y, t=t)  # call 0 updates; call 1 applies its strengths
    b = _achievability(adaptive_gain=5.0, adaptive_every=5)
    f, y, t = _calls(1, seed=11)[0]
    b(f, y, t=t)  # b's own update (other strengths), then b is loaded
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # the step travels: b's next call updates nothing
    f, y, t = calls[2]
    sa, sb = a(f, y, t=t), b(f, y, t=t)
    assert b.step == a.step == 3 and not torch.equal(_strengths(sa), torch.ones(K))
    torch.testing.assert_close(sb.per_sample, sa.per_sample)
    torch.testing.assert_close(_strengths(sb), _strengths(sa))


# ----- state, DDP, compile -----------------------------------------------------------------------------

def test_state_dict_round_trip_of_every_statistic():
    torch.manual_seed(3)
    model, a = _Model(), _align(adaptive_terminate=True, adaptive_momentum=0.3)
    _train(model, a, _batches(3))
    b = _align(adaptive_terminate=True, adaptive_momentum=0.3)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for name in ("stats.mean", "stats.var", "stats.count", "gate", "best"):
        assert torch.equal(a.adaptive.get_buffer(name), b.adaptive.get_buffer(name)), name
    assert a.adaptive._pending is not None and torch.equal(a.adaptive._pending, b.adaptive._pending)
    nxt = _batches(1, seed=9)[0]
    h, _ = model(nxt["x"], nxt["target"])
    oa, ob = a(h, nxt["y"], t=nxt["t"]), b(h, nxt["y"], t=nxt["t"])
    torch.testing.assert_close(oa.loss, ob.loss)
    for k in oa.metrics:
        torch.testing.assert_close(oa.metrics[k], ob.metrics[k], msg=k)


DDP_KW = dict(adaptive_terminate=True, adaptive_momentum=0.3)


def _ddp_worker(rank, world, port, out, every):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, align = _Model(), _align(**DDP_KW, adaptive_every=every)
    ddp = torch.nn.parallel.DistributedDataParallel(align)
    half = slice(rank * B // 2, (rank + 1) * B // 2)
    for batch in _batches(4):
        h, den = model(batch["x"][half], batch["target"][half])
        res = ddp(h, batch["y"][half], t=batch["t"][half])
        (den.mean() + 0.5 * res.loss).backward()
    out[rank] = {k: v.clone() for k, v in align.adaptive.state_dict().items() if k != "_extra_state"}
    out[f"pending{rank}"] = align.adaptive._pending.clone()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("every,taken", [(1, 3), (3, 1)])
def test_statistics_are_all_reduced_across_ranks(every, taken):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), out, every), nprocs=2, join=True)
    torch.manual_seed(0)
    model, single = _Model(), _align(**DDP_KW, adaptive_every=every)
    _train(model, single, _batches(4))
    # every call: three backwards taken in, the fourth pending; every 3: calls 0 and 3 update, the
    # second takes in call 2's backward, the fourth backward is pending
    assert single.adaptive.stats.count[1].sum() == taken * B
    for k, v in single.adaptive.state_dict().items():
        if k == "_extra_state":
            continue
        torch.testing.assert_close(out[0][k], out[1][k], msg=k)
        torch.testing.assert_close(out[0][k], v, msg=k)
    torch.testing.assert_close(out["pending0"] + out["pending1"], single.adaptive._pending)  # rank-local until taken in


@pytest.mark.parametrize("backend,every", [("eager", 1), ("aot_eager", 1), ("aot_eager", 2)])
def test_torch_compile_without_recompiles(backend, every):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(4)
    # metrics (and updates) every 2 calls: one graph for a metric call, one for the others, each compiled once
    model, align = _Model(), _align(adaptive_terminate=True, metrics_every=2, diagnostics_every=2, adaptive_every=every)
    eager = copy.deepcopy(align)
    compiled = torch.compile(align, backend=backend)
    batches = _batches(7)  # the last call a metric call
    _train(model, compiled, batches[:2])
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = _train(model, compiled, batches[2:])
    want = _train(model, eager, batches)
    for k, v in eager.adaptive.state_dict().items():
        if k != "_extra_state":
            torch.testing.assert_close(align.adaptive.state_dict()[k], v, msg=k)
    torch.testing.assert_close(_strengths(got), _strengths(want))
    assert not torch.equal(_strengths(want), torch.ones(K))


# ----- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(adaptive="sometimes"), "adaptive: expected one of 'none', 'agreement', 'achievability'"),
    (dict(adaptive="agreement", hidden_dim=None), "adaptive: 'agreement' .*hidden_dim set.*hand over h"),
    (dict(adaptive_terminate=True), "adaptive_terminate: acts only with adaptive set"),
    (dict(adaptive="achievability", adaptive_min=1.5), "adaptive_min, adaptive_max"),
    (dict(adaptive="achievability", adaptive_max=0.5), "adaptive_min, adaptive_max"),
    (dict(adaptive="achievability", adaptive_gain=-1.0), r"adaptive_gain: expected a value >= 0 \(a finite real number\)"),
    (dict(adaptive="achievability", adaptive_gain=0.0), "adaptive_gain: expected a value > 0 without adaptive_terminate"),
    (dict(adaptive="achievability", adaptive_momentum=0.0), r"adaptive_momentum: expected a value in \(0, 1\]"),
    (dict(adaptive="achievability", adaptive_terminate=1), "adaptive_terminate: expected a bool"),
])
def test_invalid_options(kw, match):
    base = dict(hidden_dim=D, target_dims=(C,))
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        VRPOConfig(**base)


def test_invalid_calls():
    align = _align()
    y = torch.randn(B, N, C)
    with pytest.raises(ValueError, match="t: adaptive='agreement' .*needs t"):
        align(torch.randn(B, N, D, requires_grad=True), y)
    with pytest.raises(ValueError, match="features: adaptive='agreement' .*does not require grad"):
        align(torch.randn(B, N, D), y, t=torch.rand(B))
    two = _align(target_dims=(C, C))
    with pytest.raises(ValueError, match="one tensor h shared by every encoder's projector, got 2 distinct"):
        two([torch.randn(B, N, D, requires_grad=True), torch.randn(B, N, D, requires_grad=True)], [y, y], t=torch.rand(B))
    h = torch.randn(B, N, D, requires_grad=True)
    two([h, h], [y, y], t=torch.rand(B)).loss.backward()  # the usual case: one h, two projectors


@pytest.mark.parametrize("signal", ["agreement", "achievability"])
def test_refused_batch_leaves_the_statistics_alone_and_eval_freezes_them(signal):
    torch.manual_seed(5)
    model, align = _Model(), _align(adaptive=signal, adaptive_terminate=True)
    _train(model, align, _batches(2))
    before = {k: v.clone() for k, v in align.adaptive.state_dict().items() if k != "_extra_state"}
    bad = torch.randn(B, N, C)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="targets"):
        align(torch.randn(B, N, D, requires_grad=True), bad, t=torch.rand(B))
    align.eval()
    with torch.no_grad():
        out = align(torch.randn(B, N, D), torch.randn(B, N, C), t=torch.rand(B))
    for k, v in align.adaptive.state_dict().items():
        if k != "_extra_state":
            assert torch.equal(before[k], v), k
    assert torch.isfinite(out.loss)
