import pytest
import torch
import torch.nn.functional as F

from vrpo_loss import VRPOAlignment
from vrpo_loss.rewards import (
    DecodabilityReward,
    FidelityReward,
    PerceptualReward,
    RewardContext,
    RewardHead,
    SemanticReward,
    patchify,
)


def test_semantic_reward_hand_computed():
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # B=1, N=2, C=2, unit
    z = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 2.0], [0.0, -3.0]]]])  # G=2
    ctx = RewardContext(targets=y)
    r = SemanticReward().reward(z, ctx)
    torch.testing.assert_close(r, torch.tensor([[[1.0, 2**-0.5]], [[0.0, -1.0]]]))
    cand = SemanticReward().candidate_reward(ctx)
    torch.testing.assert_close(cand, torch.eye(2).unsqueeze(0))
    torch.testing.assert_close(RewardHead.candidate_reward(SemanticReward(), ctx), cand)  # the generic path


def test_fidelity_reward():
    head = FidelityReward()
    assert head.sample_reward(RewardContext()) is None
    r, mask = head.sample_reward(RewardContext(denoise_loss=torch.tensor([0.5, 2.0])))
    torch.testing.assert_close(r, torch.tensor([-0.5, -2.0]))
    assert mask is None and head.level == "sample"


def test_patchify_raster_order():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (1, 4, 8)
    # token 1 is the top-right 2x2 block: channel 0 values 2,3,6,7 then channel 1 values 18,19,22,23
    torch.testing.assert_close(p[0, 1], torch.tensor([2.0, 3, 6, 7, 18, 19, 22, 23]))


def test_decodability_reward_candidates_match_actions():
    head = DecodabilityReward(target_dims=(6,), patch_dim=2, patch=1, hidden=8)
    y = F.normalize(torch.randn(2, 4, 6), dim=-1)
    x0 = torch.randn(2, 2, 2, 2)
    ctx = RewardContext(targets=y, x0=x0)
    cand = head.candidate_reward(ctx)  # (B, N, N), the closed form
    # choosing candidate j for token i = the action z = y_j for token i: loop reference
    for j in range(4):
        z = y[:, j : j + 1].expand(-1, 4, -1).unsqueeze(0)
        torch.testing.assert_close(cand[:, :, j], head.reward(z, ctx)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(RewardHead.candidate_reward(head, ctx), cand, atol=1e-5, rtol=1e-5)  # the generic path
    with pytest.raises(ValueError, match="x0"):
        head.reward(z, RewardContext(targets=y))
    with pytest.raises(ValueError, match="decodability_patch"):
        head.reward(z, RewardContext(targets=y, x0=torch.randn(2, 2, 3, 3)))


def test_perceptual_reward_with_random_lpips():
    import lpips

    net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    head = PerceptualReward(net=net, every=2, subset=2)
    x0 = torch.rand(3, 3, 32, 32) * 2 - 1
    pred = x0.clone()
    pred[1] = -pred[1]
    got = head.sample_reward(RewardContext(x0=x0, x0_pred=pred, step=0))
    r, mask = got
    assert mask.tolist() == [True, True, False]
    assert abs(r[0]) < 1e-6 and r[1] < -1e-3 and r[2] == 0  # identical images: zero distance
    ref = -net(pred[1:2], x0[1:2]).reshape(())
    torch.testing.assert_close(r[1], ref)
    assert head.sample_reward(RewardContext(x0=x0, x0_pred=pred, step=1)) is None  # not a k-th step
    # the LPIPS network stays out of the module's state_dict and parameters
    align = VRPOAlignment(hidden_dim=None, target_dims=(4,), perceptual_weight=1.0, sample_weight=1.0, perceptual_net=net)
    plain = VRPOAlignment(hidden_dim=None, target_dims=(4,))
    assert set(align.state_dict()) == set(plain.state_dict())
    lpips_tensors = {t.data_ptr() for t in net.state_dict().values()}
    assert not lpips_tensors & {t.data_ptr() for t in align.state_dict().values() if torch.is_tensor(t)}
    assert not lpips_tensors & {p.data_ptr() for p in align.parameters()}


def test_perceptual_reward_with_decode_and_in_module():
    import lpips

    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)

    def decode(z):
        return torch.tanh(z[:, :3].repeat_interleave(4, -1).repeat_interleave(4, -2))

    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), perceptual_weight=1.0, perceptual_every=1,
                          perceptual_subset=2, perceptual_net=net, decode=decode, sample_weight=0.5)
    x0 = torch.randn(4, 4, 8, 8)
    out = align(torch.randn(4, 16, 8), torch.randn(4, 16, 8), t=torch.rand(4), denoise_loss=torch.rand(4), x0=x0, x0_pred=x0 + 0.3 * torch.randn_like(x0))
    assert out.metrics["rewards/perceptual/mean"] < 0
    assert align.normalizer.count[1].sum() == 2  # two samples scored by the perceptual head
    with pytest.raises(ValueError, match="decode"):
        PerceptualReward(net=net).sample_reward(RewardContext(x0=x0, x0_pred=x0, step=0))


class Sharpness(RewardHead):
    """A user head: prefers actions with a large first channel."""

    level = "token"
    name = "first_channel"

    def reward(self, z, ctx):  # one method serves both policies
        return F.normalize(z, dim=-1)[..., 0]


@pytest.mark.parametrize("policy", ["gaussian", "correspondence"])
def test_user_head_is_used_and_reported(policy):
    align = VRPOAlignment(hidden_dim=None, target_dims=(8,), policy=policy, semantic_weight=0.0, anchor_coeff=0.0, heads=[Sharpness(weight=2.0)])
    feats = torch.randn(4, 16, 8, requires_grad=True)
    out = align(feats, torch.randn(4, 16, 8))
    assert "rewards/first_channel/mean" in out.metrics
    out.loss.backward()
    # only the user reward acts: the push favours the first channel
    g = -feats.grad
    u = F.normalize(feats.detach(), dim=-1)
    e0 = torch.zeros(8)
    e0[0] = 1
    tang = e0 - u[..., :1] * u
    assert (g * tang).sum() > 0


def test_heads_must_be_reward_heads_and_level_checked():
    with pytest.raises(TypeError, match="RewardHead"):
        VRPOAlignment(hidden_dim=None, target_dims=(8,), heads=[torch.nn.Linear(2, 2)])

    class Bad(RewardHead):
        level = "pixel"

    with pytest.raises(ValueError, match="level"):
        Bad()


def test_context_step_is_none_unless_given_and_perceptual_then_runs():
    import lpips

    assert RewardContext().step is None
    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    assert PerceptualReward(net=net, every=3).sample_reward(RewardContext(x0=x0, x0_pred=x0)) is not None
