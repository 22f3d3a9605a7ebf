"""Two-process gloo test: the sample-level statistics agree across ranks and equal one process on the joined batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vrpo_loss import VRPOAlignment

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
