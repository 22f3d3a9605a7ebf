"""Two-process gloo test: the sample-level statistics agree across ranks and equal one process on the joined batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vrpo_loss import VRPOAlignment

from conftest import acting_only

KW = dict(hidden_dim=6, projector_dim=16, target_dims=(8,), policy="correspondence", sample_weight=0.5, time_bins=4, stats_momentum=0.2)


def _data(steps=3, b=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(b, 4, 6, generator=g), torch.randn(b, 4, 8, generator=g), torch.rand(b, generator=g), torch.rand(b, generator=g)) for _ in range(steps)]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    align = VRPOAlignment(**KW)
    ddp = torch.nn.parallel.DistributedDataParallel(align)
    half = slice(rank * 4, rank * 4 + 4)
    for f, y, t, dl in _data():
        ddp(f[half], y[half], t=t[half], denoise_loss=dl[half]).loss.backward()
    out[rank] = {k: v.clone() for k, v in align.normalizer.state_dict().items()}
    # without t the rewards are normalised against the moments of the global batch, summed over ranks
    out[f"adv{rank}"] = align.normalizer(-_data()[0][3][half].unsqueeze(0)).clone()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_running_statistics_agree_across_ranks_and_match_joined_batch():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    single = VRPOAlignment(**KW)
    for f, y, t, dl in _data():
        single(f, y, t=t, denoise_loss=dl)
    for k, v in single.normalizer.state_dict().items():
        torch.testing.assert_close(out[0][k], out[1][k])
        torch.testing.assert_close(out[0][k], v)
    assert single.normalizer.count.sum() == 24
    joined = single.normalizer(-_data()[0][3].unsqueeze(0))
    torch.testing.assert_close(torch.cat([out["adv0"], out["adv1"]], 1), joined)


# An empty rank (B = 0, e.g. the last uneven batch of an epoch) in a real DDP loop: it takes part
# in the statistics' all-reduce and in DDP's gradient all-reduce, and every value stays finite.
EMPTY_CONFIGS = {
    "correspondence": KW,
    "gaussian": {**KW, "policy": "gaussian", "group_size": 4, "learn_sigma": True},
    "repa": acting_only({**KW, "mode": "repa"}),
    "peers": {**KW, "target_norm": "zscore", "time_weight": "sigmoid", "structure_coeff": 0.5, "stop_step": 2, "stop_ramp": 1},
    "adaptive-agreement": {**KW, "adaptive": "agreement", "adaptive_terminate": True},
    "adaptive-repa": acting_only({**KW, "mode": "repa", "adaptive": "achievability"}),
    "adaptive-every": {**KW, "adaptive": "agreement", "adaptive_every": 2},  # the empty step 1 updates nothing
    "metric-steps-only": {**KW, "sample_weight": 0.0, "metrics_every": 2},  # the sample stage on steps 0 and 2 only
}


def _empty_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for name, kw in EMPTY_CONFIGS.items():
        torch.manual_seed(0)
        align = VRPOAlignment(**kw)
        ddp = torch.nn.parallel.DistributedDataParallel(align)
        grads = []
        for step, (f, y, t, dl) in enumerate(_data()):
            keep = slice(0, 4) if rank == 0 else slice(4, 4 if step == 1 else 8)  # rank 1 has no samples at step 1
            h = f.clone().requires_grad_(True)[keep]  # as it leaves a model (the agreement probe reads its gradient)
            loss = ddp(h, y[keep], t=t[keep], denoise_loss=dl[keep]).loss
            assert torch.isfinite(loss)
            align.zero_grad()
            loss.backward()
            grads.append([p.grad.clone() for p in align.parameters()])
        adaptive = {} if align.adaptive is None else {k: v.clone() for k, v in align.adaptive.state_dict().items()
                                                        if isinstance(v, torch.Tensor)}
        out[(name, rank)] = ({k: v.clone() for k, v in align.normalizer.state_dict().items()}, grads, align.step, adaptive)
    dist.destroy_process_group()


def test_an_empty_rank_takes_part_in_every_collective():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_empty_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for name, kw in EMPTY_CONFIGS.items():
        (s0, g0, step0, a0), (s1, g1, step1, a1) = out[(name, 0)], out[(name, 1)]
        assert step0 == step1 == 3
        assert a0.keys() == a1.keys() and (not kw.get("adaptive") or a0)
        for k in a0:  # the adaptive statistics were all-reduced at every step, the empty one included
            torch.testing.assert_close(a0[k], a1[k])
        single = VRPOAlignment(**kw)  # one process on the joined batches (rank 1 adding nothing at step 1)
        for step, (f, y, t, dl) in enumerate(_data()):
            keep = slice(0, 4 if step == 1 else 8)
            single(f.clone().requires_grad_(True)[keep], y[keep], t=t[keep], denoise_loss=dl[keep])
        for k, v in single.normalizer.state_dict().items():
            torch.testing.assert_close(s0[k], s1[k])
            torch.testing.assert_close(s0[k], v)
        for a, b in zip(g0, g1):  # DDP averaged the gradients, the empty rank's zeros included
            for x, z in zip(a, b):
                assert torch.isfinite(x).all()
                torch.testing.assert_close(x, z)
