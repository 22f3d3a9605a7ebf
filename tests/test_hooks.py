"""Tests of vrpo_loss.hooks.FeatureTap on SiT/DiT-shaped toy models (blocks in an nn.ModuleList)."""
import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint as ckpt

from vrpo_loss.hooks import FeatureTap, find_blocks, unwrap_model


class Block(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.calls = 0

    def forward(self, x, c):
        self.calls += 1
        return x + torch.tanh(self.lin(x)) * c[:, None, None]


class ToyDiT(nn.Module):
    """forward(x, t, y) like SiT/DiT, optional activation checkpointing of every block."""

    def __init__(self, depth=4, d=8, checkpoint=None):
        super().__init__()
        self.blocks = nn.ModuleList([Block(d) for _ in range(depth)])
        self.head = nn.Linear(d, d)
        self.checkpoint = checkpoint  # None, "reentrant", "non_reentrant"

    def forward(self, x, t, y=None):
        for b in self.blocks:
            if self.checkpoint is None:
                x = b(x, t)
            else:
                x = ckpt.checkpoint(b, x, t, use_reentrant=self.checkpoint == "reentrant")
        return self.head(x)


def manual_features(model, x, t, depth):
    with torch.no_grad():
        for b in list(model.blocks)[:depth]:
            x = x + torch.tanh(b.lin(x)) * t[:, None, None]
    return x


def _inputs(b=3, n=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g), torch.rand(b, generator=g)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_captures_output_of_block_depth(depth):
    torch.manual_seed(0)
    m = ToyDiT()
    tap = FeatureTap(m, depth=depth)
    x, t = _inputs()
    m(x, t)
    h = tap.pop()
    torch.testing.assert_close(h, manual_features(m, x, t, depth))
    assert h.requires_grad  # gradient flows from the alignment loss into the blocks


def test_one_capture_per_forward_and_clear_errors():
    m = ToyDiT()
    tap = FeatureTap(m, depth=2)
    with pytest.raises(RuntimeError, match="block 2.*not been called"):
        tap.pop()
    x1, t1 = _inputs(seed=1)
    x2, t2 = _inputs(seed=2)
    m(x1, t1)
    m(x2, t2)  # the second forward replaces the first capture
    torch.testing.assert_close(tap.pop(), manual_features(m, x2, t2, 2))
    assert not tap.has_features
    with pytest.raises(RuntimeError, match="already popped"):
        tap.pop()


class TwiceModel(ToyDiT):
    def forward(self, x, t, y=None):  # block 0 reused: only its first output is captured
        x0 = self.blocks[0](x, t)
        return self.blocks[0](x0, t)


def test_block_called_twice_captured_once():
    m = TwiceModel()
    tap = FeatureTap(m, depth=1)
    x, t = _inputs()
    m(x, t)
    torch.testing.assert_close(tap.pop(), manual_features(m, x, t, 1))


@pytest.mark.parametrize("mode", ["non_reentrant", "reentrant"])
def test_checkpointing_recompute_is_ignored(mode):
    torch.manual_seed(0)
    m = ToyDiT(checkpoint=mode)
    tap = FeatureTap(m, depth=2)
    x, t = _inputs()
    out = m(x.requires_grad_(), t)
    h = tap.pop()
    calls_before = m.blocks[1].calls
    (out.sum() + h.pow(2).sum()).backward()
    assert m.blocks[1].calls == calls_before + 1  # recomputed during backward...
    assert not tap.has_features  # ...but not captured again

    # the captured features carry the same gradient as without checkpointing
    ref = ToyDiT()
    ref.load_state_dict(m.state_dict())
    rtap = FeatureTap(ref, depth=2)
    (ref(x, t).sum() + rtap.pop().pow(2).sum()).backward()
    torch.testing.assert_close(m.blocks[0].lin.weight.grad, ref.blocks[0].lin.weight.grad)


class SegmentCheckpointed(ToyDiT):
    """Reentrant checkpointing of a segment of blocks: inner outputs run under no_grad."""

    def forward(self, x, t, y=None):
        def segment(x, t):
            for b in self.blocks[:2]:
                x = b(x, t)
            return x

        x = ckpt.checkpoint(segment, x, t, use_reentrant=True)
        for b in self.blocks[2:]:
            x = b(x, t)
        return self.head(x)


def test_reentrant_segment_without_gradient_is_reported():
    m = SegmentCheckpointed()
    tap = FeatureTap(m, depth=1)
    x, t = _inputs()
    m(x.requires_grad_(), t)
    with pytest.raises(RuntimeError, match="use_reentrant=False"):
        tap.pop()


def test_no_grad_forward_is_fine():
    m = ToyDiT(checkpoint="reentrant")
    tap = FeatureTap(m, depth=3)
    x, t = _inputs()
    with torch.no_grad():
        m(x, t)
    assert tap.pop().shape == x.shape


def test_deepcopy_ema_gets_inert_hooks():
    m = ToyDiT()
    tap = FeatureTap(m, depth=2)
    ema = copy.deepcopy(m)
    x, t = _inputs()
    ema(x, t)
    assert not tap.has_features  # the EMA copy does not feed the tap
    m(x, t)
    ema(x * 3, t)  # nor overwrite the training model's capture
    torch.testing.assert_close(tap.pop(), manual_features(m, x, t, 2))


def test_keep_inputs_gives_time():
    m = ToyDiT()
    tap = FeatureTap(m, depth=1, keep_inputs=True)
    x, t = _inputs()
    m(x, t, y=torch.zeros(3))
    assert tap.input(1, "t") is t
    m(x, t=t)
    assert tap.input(1, "t") is t
    with pytest.raises(RuntimeError, match="keyword"):
        tap.input(5, "s")
    with pytest.raises(RuntimeError, match="keep_inputs=True"):
        FeatureTap(m, depth=1).input(1)


def test_remove_and_context_manager():
    m = ToyDiT()
    with FeatureTap(m, depth=2) as tap:
        m(*_inputs())
        assert tap.has_features
    assert not m._forward_hooks and not m._forward_pre_hooks and not m.blocks[1]._forward_hooks
    m(*_inputs())
    with pytest.raises(RuntimeError):
        tap.pop()


def test_bad_arguments():
    m = ToyDiT(depth=4)
    with pytest.raises(ValueError, match=r"\[1, 4\].*got 5"):
        FeatureTap(m, depth=5)
    with pytest.raises(ValueError, match="depth"):
        FeatureTap(m, depth=0)
    with pytest.raises(ValueError, match="no attribute path 'layers'.*blocks"):
        FeatureTap(m, depth=1, blocks="layers")
    with pytest.raises(TypeError, match="ModuleList"):
        FeatureTap(m, depth=1, blocks="head")
    with pytest.raises(TypeError, match="nn.Module"):
        find_blocks(object())


def test_torch_compile():
    torch.manual_seed(0)
    m = ToyDiT()
    tap = FeatureTap(m, depth=2)
    cm = torch.compile(m, backend="aot_eager")
    for seed in (0, 1):  # the capture is fresh each call, not a value frozen at trace time
        x, t = _inputs(seed=seed)
        out = cm(x, t)
        h = tap.pop()
        torch.testing.assert_close(h, manual_features(m, x, t, 2))
        (out.sum() + h.sum()).backward()
    assert m.blocks[0].lin.weight.grad is not None
    assert unwrap_model(cm) is m
    FeatureTap(cm, depth=1).remove()  # accepts the compiled wrapper


def test_ddp_single_process(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp_path, 'pg')}", rank=0, world_size=1)
    try:
        m = ToyDiT()
        ddp = nn.parallel.DistributedDataParallel(m)
        tap = FeatureTap(ddp, depth=3)  # registered through the wrapper, on the inner module
        x, t = _inputs()
        out = ddp(x, t)
        h = tap.pop()
        torch.testing.assert_close(h, manual_features(m, x, t, 3))
        (out.sum() + h.sum()).backward()
        assert m.blocks[0].lin.weight.grad is not None
    finally:
        dist.destroy_process_group()
