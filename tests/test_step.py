"""The step counter (``vrpo_loss/step.py``): it counts optimizer steps, not calls.

A call counts only in training mode with gradients enabled; ``accumulation_steps`` calls make one
step; ``step=`` says which step a call belongs to. Everything scheduled follows it: ``stop_step``,
``stop_ramp``, the metrics schedule, the Gaussian noise. Under ``torch.compile`` it stays out of the
guards for both policies.
"""
import copy

import pytest
import torch

from vrpo_loss import VRPOAlignment
from vrpo_loss.step import StepClock

B, N, C = 2, 4, 8


def _call(align, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, N, C, generator=g, requires_grad=True)
    return align(h, torch.randn(B, N, C, generator=g), t=torch.rand(B, generator=g), **kw)


def test_validation_calls_under_no_grad_do_not_advance_the_step():
    # Planted bug (every training-mode call advanced the counter): three validation calls with
    # stop_step=3 made the first real training loss an exact zero.
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), stop_step=3)
    with torch.no_grad():
        for i in range(3):
            assert _call(align, i).loss != 0
    assert align.step == 0
    align.eval()
    _call(align)
    align.train()
    assert align.step == 0
    assert _call(align).loss != 0 and align.step == 1


def test_accumulation_steps_count_micro_batches_per_step():
    # Planted bug (counting calls): with 4 micro-batches per step and stop_step=2 the stop came after 2 calls.
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), stop_step=2, accumulation_steps=4)
    losses = [_call(align, i).loss for i in range(9)]
    assert all(loss != 0 for loss in losses[:8]) and losses[8] == 0
    assert align.step == 2 and align.clock.micro == 1


def test_stop_ramp_follows_optimizer_steps():
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa", stop_step=3, stop_ramp=2,
                          accumulation_steps=2)
    ref = VRPOAlignment(hidden_dim=None, target_dims=(C,), mode="repa")
    factors = []
    for i in range(8):
        factors.append(float(_call(align, i).loss.detach() / _call(ref, i).loss.detach()))
    # clamp((3 - step) / 3, 0, 1) at steps 0, 0, 1, 1, 2, 2, 3, 3 (two calls each)
    assert factors == pytest.approx([1, 1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0, 0])


def test_explicit_step_sets_the_counter():
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), stop_step=3)
    assert _call(align, step=2).loss != 0 and align.step == 2  # with step= the counter does not roll over
    assert _call(align, step=2).loss != 0 and align.clock.micro == 2
    assert _call(align, step=3).loss == 0 and align.step == 3 and align.clock.micro == 1
    assert _call(align, step=0).loss != 0 and align.step == 0  # the host's word wins (a new run, a resume)
    with torch.no_grad():
        _call(align, step=5)  # a validation call may say its step too; it counts no call
    assert align.step == 5 and align.clock.micro == 0
    with pytest.raises(TypeError, match="step: expected an int"):
        _call(align, step=1.5)
    with pytest.raises(TypeError, match="step: expected an int"):
        _call(align, step=True)
    with pytest.raises(ValueError, match="step: expected an int >= 0"):
        _call(align, step=-1)


def test_metrics_schedule_follows_steps():
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), metrics_every=2, accumulation_steps=2)
    full = []
    for i in range(8):
        out = _call(align, i)
        full.append(set(out.metrics) != {"loss_anchor", "cos", "loss_policy", "rewards/semantic/mean"})
    assert full == [True, True, False, False, True, True, False, False]  # steps 0,0,1,1,2,2,3,3


def test_gaussian_noise_differs_between_micro_batches_and_replays_per_step():
    kw = dict(hidden_dim=None, target_dims=(C,), policy="gaussian", accumulation_steps=2)
    a = VRPOAlignment(**kw)
    b = copy.deepcopy(a)
    first = [_call(a).metrics["rewards/semantic/mean"] for _ in range(4)]  # same inputs: only the noise differs
    assert len({float(x) for x in first}) == 4  # (0, 0), (0, 1), (1, 0), (1, 1): four draws
    b.load_state_dict(a.state_dict())
    assert b.step == 2 and b.clock.micro == 0
    again = [_call(b, step=k).metrics["rewards/semantic/mean"] for k in (0, 0, 1, 1)]
    assert [float(x) for x in again] == [float(x) for x in first]


def test_micro_position_travels_in_state_dict():
    kw = dict(hidden_dim=None, target_dims=(C,), policy="gaussian", accumulation_steps=3)
    a = VRPOAlignment(**kw)
    _call(a)
    b = VRPOAlignment(**kw)
    b.load_state_dict(a.state_dict())
    assert (b.step, b.clock.micro) == (0, 1)
    for i in range(4):
        assert torch.equal(_call(a, i).loss, _call(b, i).loss)
    assert (a.step, a.clock.micro) == (b.step, b.clock.micro) == (1, 2)


def test_clock_alone():
    clock = StepClock(accumulation_steps=2)
    clock.count(explicit=False)
    assert (clock.step, clock.micro) == (0, 1)
    clock.count(explicit=False)
    assert (clock.step, clock.micro) == (1, 0)
    clock.set(1)
    assert (clock.step, clock.micro) == (1, 0)
    clock.load({"step": 9})  # a first-release state: no "micro"
    assert (clock.step, clock.micro) == (9, 0)


# ----- torch.compile: the step stays out of the guards -----------------------------------------------
def _counting_backend():
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    return backend, compiled


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
@pytest.mark.parametrize("explicit", [False, True])
def test_torch_compile_compiles_each_graph_once_for_every_policy(policy, explicit):
    # Planted bug (the Gaussian policy's seed computed from the Python step in traced code): every
    # training call recompiled (the guard on the step failed), until dynamo's cache limit.
    # The metrics schedule (metrics_every=3, diagnostics_every=3) gives two graph sets, a metric step's
    # (step 0) and an off step's (step 1): the one recompile this module has, at the first off step.
    import torch._dynamo

    torch._dynamo.reset()
    backend, compiled = _counting_backend()
    align = VRPOAlignment(hidden_dim=None, target_dims=(C,), policy=policy, metrics_every=3, diagnostics_every=3,
                          accumulation_steps=1 if explicit else 2, stop_step=50, stop_ramp=10)
    fn = torch.compile(align, backend=backend)
    y = torch.randn(B, N, C)

    def step(k):
        for _ in range(2):  # two micro-batches per step
            kw = {"step": k} if explicit else {}
            fn(torch.randn(B, N, C, requires_grad=True), y, t=torch.rand(B), denoise_loss=torch.rand(B), **kw).loss.backward()

    step(0)
    after_metric_step = len(compiled)
    step(1)
    assert len(compiled) > after_metric_step  # the off step's graphs: the one documented recompile
    warm = len(compiled)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for k in range(2, 9):  # two more metric steps (3, 6), a sigma/noise per step, the ramp as a tensor
            step(k)
    assert len(compiled) == warm and align.step == (8 if explicit else 9)
