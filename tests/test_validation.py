import pytest
import torch

from vrpo_loss import VRPOAlignment

B, N = 3, 4


def _align(**kw):
    kw.setdefault("hidden_dim", None)
    kw.setdefault("target_dims", (8,))
    return VRPOAlignment(**kw)


def _ok():
    return torch.randn(B, N, 8), torch.randn(B, N, 8)


@pytest.mark.parametrize(
    "feats, targets, match",
    [
        (torch.randn(B, N, 7), torch.randn(B, N, 8), r"features\[0\]: expected last dimension 8"),
        (torch.randn(B, N, 8), torch.randn(B, N, 9), r"targets\[0\]: expected last dimension 8"),
        (torch.randn(B, N, 8), torch.randn(B + 1, N, 8), r"targets\[0\]: batch size 4 does not match"),
        (torch.randn(B, N, 8), torch.randn(B, N + 5, 8), r"9 encoder tokens but 4 diffusion tokens.*resample_tokens=True"),
        (torch.randn(B, 2, 2, 8), torch.randn(B, N, 8), r"features\[0\]: expected rank 3"),
        (torch.randn(B, N, 8), torch.randn(B, 8), r"targets\[0\]: expected rank 3"),
        ([torch.randn(B, N, 8)] * 2, [torch.randn(B, N, 8)] * 2, r"one tensor per encoder \(1 encoders"),
    ],
)
def test_shape_errors_name_argument_and_shapes(feats, targets, match):
    with pytest.raises(ValueError, match=match):
        _align()(feats, targets)


def test_hidden_dim_mismatch_says_which_option():
    with pytest.raises(ValueError, match=r"expected last dimension 16 \(hidden_dim\)"):
        _align(hidden_dim=16, projector_dim=8)(*_ok())


def test_dtype_errors():
    f, y = _ok()
    with pytest.raises(TypeError, match=r"features\[0\]: expected a floating-point tensor, got dtype torch.int64"):
        _align()(f.long(), y)
    with pytest.raises(TypeError, match=r"targets\[0\].*torch.int32"):
        _align()(f, y.int())
    with pytest.raises(TypeError, match=r"t: expected a floating-point tensor.*\(t \+ 1\).float\(\) / 1000"):
        _align()(f, y, t=torch.randint(0, 1000, (B,)))
    with pytest.raises(TypeError, match="features: expected a tensor or a non-empty list"):
        _align()(f.numpy(), y)


def test_device_mismatch_names_both_devices():
    # Planted bug (no device check): the call failed deep inside torch (or, with a meta tensor, not at all
    # until a value was read), without naming the argument.
    f, y = _ok()
    meta = torch.device("meta")
    state = {k: v.clone() for k, v in _align().state_dict().items() if isinstance(v, torch.Tensor)}
    align = _align()
    with pytest.raises(ValueError, match=r"^targets\[0\]: expected a tensor on features\[0\]'s device cpu, got device meta; "
                                         r"move .*targets.to\(features.device\)"):
        align(f, y.to(meta))
    with pytest.raises(ValueError, match=r"targets\[0\]: expected a tensor on features\[0\]'s device meta, got device cpu"):
        align(f.to(meta), y)
    two = _align(target_dims=(8, 8))
    with pytest.raises(ValueError, match=r"features\[1\]: expected a tensor on features\[0\]'s device cpu, got device meta"):
        two([f, f.to(meta)], [y, y.to(meta)])
    with pytest.raises(ValueError, match=r"^t: expected a tensor on the features' device cpu, got device meta"):
        align(f, y, t=torch.rand(B, device=meta))
    with pytest.raises(ValueError, match=r"^denoise_loss: expected a tensor on the features' device cpu, got device meta"):
        align(f, y, denoise_loss=torch.rand(B, device=meta))
    assert align.step == 0
    for k, v in align.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k


def test_optional_argument_shapes():
    f, y = _ok()
    with pytest.raises(ValueError, match=r"t: expected 3 values"):
        _align()(f, y, t=torch.rand(B + 1))
    with pytest.raises(ValueError, match=r"denoise_loss: expected the per-sample loss, 3 values"):
        _align()(f, y, denoise_loss=torch.rand(()))
    with pytest.raises(ValueError, match=r"x0_pred: expected the shape of x0"):
        _align()(f, y, x0=torch.rand(B, 3, 4, 4), x0_pred=torch.rand(B, 3, 8, 8))
    # t of shape (B, 1, 1, 1) (the host's broadcast shape) is accepted
    _align()(f, y, t=torch.rand(B, 1, 1, 1))


@pytest.mark.parametrize("where", ["features", "targets"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise_and_leave_state_untouched(where, bad):
    align = _align(sample_weight=0.5)
    f, y = _ok()
    t, dl = torch.rand(B), torch.rand(B)
    align(f, y, t=t, denoise_loss=dl)
    state = {k: v.clone() for k, v in align.state_dict().items() if torch.is_tensor(v)}
    step = align.step
    (f if where == "features" else y)[0, 0, 0] = bad
    with pytest.raises(ValueError, match=rf"{where}\[0\]: found 1 NaN/Inf values of {B * N * 8}"):
        align(f, y, t=t, denoise_loss=dl)
    assert align.step == step
    for k, v in align.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, state[k]), k


def test_t_out_of_range_raises_and_leaves_running_statistics_untouched():
    # the value check is read at the end of the call (after the module's work is queued), so the
    # statistics' update is masked on the device; t = 2 would otherwise land in the last bin
    align = _align(sample_weight=0.5)
    f, y = _ok()
    align(f, y, t=torch.rand(B), denoise_loss=torch.rand(B))
    state = {k: v.clone() for k, v in align.normalizer.state_dict().items()}
    with pytest.raises(ValueError, match=r"t: expected finite values in \[0, 1\]"):
        align(f, y, t=torch.tensor([0.5, 2.0, 0.9]), denoise_loss=torch.rand(B))
    for k, v in align.normalizer.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert align.step == 1


def test_nan_denoise_loss_and_t_out_of_range():
    f, y = _ok()
    with pytest.raises(ValueError, match="denoise_loss: found 1 NaN/Inf"):
        _align()(f, y, denoise_loss=torch.tensor([0.1, float("nan"), 0.2]))
    with pytest.raises(ValueError, match=r"t: expected finite values in \[0, 1\].*max 999.*DiT hosts \(t \+ 1\) / 1000"):
        _align()(f, y, t=torch.tensor([0.0, 10.0, 999.0]))


def test_nan_with_validation_off_does_not_corrupt_running_statistics():
    align = _align(validate=False, sample_weight=0.5)
    f, y = _ok()
    align(f, y, t=torch.rand(B), denoise_loss=torch.rand(B))
    mean = align.normalizer.mean.clone()
    align(f, y, t=torch.rand(B), denoise_loss=torch.full((B,), float("nan")))
    assert torch.equal(align.normalizer.mean, mean)
