import dataclasses
from types import SimpleNamespace

import pytest
import torch

from vrpo_loss import VRPOConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def repa_loop_loss(zs_tilde, zs):
    """REPA's projection loss, transcribed from its loss.py (a loop over encoders and samples)."""
    proj_loss = 0.0
    bsz = zs[0].shape[0]
    for z, z_tilde in zip(zs, zs_tilde):
        for z_j, z_tilde_j in zip(z, z_tilde):
            z_tilde_j = torch.nn.functional.normalize(z_tilde_j, dim=-1)
            z_j = torch.nn.functional.normalize(z_j, dim=-1)
            proj_loss = proj_loss + torch.mean(-(z_j * z_tilde_j).sum(dim=-1))
    return proj_loss / (len(zs) * bsz)


def acting_only(kw):
    """``kw`` with every option whose condition does not hold back at its default (to a fixpoint: a
    reset option may be another's condition), as the generic rule of config_checks requires."""
    changed = True
    while changed:
        cfg = SimpleNamespace(**{**{f.name: VRPOConfig.default(f.name) for f in dataclasses.fields(VRPOConfig)}, **kw})
        changed = False
        for name in kw:
            when = VRPOConfig.condition(name)
            if when is not None and not when.holds(cfg) and kw[name] != VRPOConfig.default(name):
                kw[name], changed = VRPOConfig.default(name), True
    return kw
