"""Tests of vrpo_loss.encoders: REPA-identical preprocessing, loading from local files, readout.

Every encoder family is built from a config or from a file the test writes; nothing is
downloaded. References are computed independently (torchvision's Normalize, plain
``F.interpolate``, a hand-written CLIP visual transformer).
"""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vrpo_loss.encoders import (
    DINOV2_HUB_COMMIT,
    ENCODERS,
    check_token_count,
    encoder_names,
    get_spec,
    infer_encoder_name,
    load_encoder,
    preprocess,
    read_checkpoint,
    resample_pos_embed,
)

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIPN = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _raw(b=2, res=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, res, res), generator=g, dtype=torch.uint8)


def _ref_resample(pos, grid, prefix=1):
    """Independent pos-embed resampling: bicubic + antialias on the square patch grid."""
    pre, patches = pos[:, :prefix], pos[:, prefix:]
    m = int(patches.shape[1] ** 0.5)
    g = patches.reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([pre, g.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("res", [256, 512])
@pytest.mark.parametrize("name", ["dinov2-vit-b", "dinov2reg-vit-g", "clip-vit-L", "mae-vit-l", "mocov3-vit-b"])
def test_preprocess_matches_repa_formula(name, res):
    from torchvision.transforms import Normalize

    x = _raw(res=res)
    side = 224 * (res // 256)
    xf = x / 255.0
    if name.startswith("clip"):
        ref = Normalize(*CLIPN)(F.interpolate(xf, side, mode="bicubic"))
    elif name.startswith("dinov2"):
        ref = F.interpolate(Normalize(*IMNET)(xf), side, mode="bicubic")
    else:
        ref = Normalize(*IMNET)(xf)
    out = preprocess(x, name)
    assert out.shape == ref.shape
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    expected_side = res if name.startswith(("mae", "mocov3")) else side
    assert out.shape[-1] == expected_side


def test_preprocess_float_input_equals_uint8():
    x = _raw()
    torch.testing.assert_close(preprocess(x.float(), "dinov2-vit-b"), preprocess(x, "dinov2-vit-b"))


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="images"):
        preprocess(torch.zeros(2, 1, 256, 256), "dinov2-vit-b")
    with pytest.raises(TypeError, match="images"):
        preprocess([1, 2], "dinov2-vit-b")
    with pytest.raises(ValueError, match="resolution.*size="):
        preprocess(_raw(res=64), "dinov2-vit-b")
    assert preprocess(_raw(res=64), "dinov2-vit-b", size=56).shape[-1] == 56


def test_resample_pos_embed_matches_independent_interpolation():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = resample_pos_embed(pos, 16)
    assert out.shape == (1, 257, 8)
    torch.testing.assert_close(out, _ref_resample(pos, 16), rtol=1e-4, atol=1e-5)
    assert resample_pos_embed(pos, 37) is pos
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(torch.randn(1, 1 + 10, 8), 4)


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,word,dim", [("s", "small", 384), ("b", "base", 768), ("l", "large", 1024), ("g", "giant", 1536)])
@pytest.mark.parametrize("reg", [False, True])
def test_dinov2_names(size, word, dim, reg):
    spec = get_spec(f"dinov2{'reg' if reg else ''}-vit-{size}")
    assert spec.embed_dim == dim and spec.patch_size == 14 and spec.registers == (4 if reg else 0)
    assert spec.hub_name == f"dinov2_vit{size}14{'_reg' if reg else ''}"  # REPA's torch.hub entry
    assert spec.timm_name == f"vit_{word}_patch14_{'reg4_' if reg else ''}dinov2"
    assert spec.timm_name in timm.list_models("*dinov2*")
    assert spec.hf_name == f"facebook/dinov2-{'with-registers-' if reg else ''}{word}"


def test_names_case_and_unknown():
    assert get_spec("clip-vit-l").name == "clip-vit-L"  # REPA writes clip-vit-L
    assert get_spec("DINOv2-ViT-B").name == "dinov2-vit-b"
    with pytest.raises(ValueError) as err:
        get_spec("dinov3-vit-b")
    for known in ("dinov2-vit-b", "dinov2reg-vit-l", "clip-vit-L", "mae-vit-l", "mocov3-vit-b"):
        assert known in str(err.value)
    with pytest.raises(ValueError, match="mocov3-vit-b"):
        load_encoder("jepa-vit-h")
    with pytest.raises(TypeError, match="encoder name"):
        get_spec(3)
    assert encoder_names() == sorted(ENCODERS)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "mae_vitl.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_encoder("mae-vit-l", checkpoint=missing, depth=1)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_encoder(str(tmp_path / "nope" / "weights.pth"))
    with pytest.raises(ValueError, match="checkpoint="):
        load_encoder("clip-vit-L")  # CLIP needs a local file


# ---------------------------------------------------------------------------------------------
# DINOv2 from an official-format checkpoint file (through timm)
# ---------------------------------------------------------------------------------------------
def _timm_to_official(sd, reg):
    """The layout of facebookresearch/dinov2's *_pretrain.pth files."""
    sd = dict(sd)
    c = sd["cls_token"].shape[-1]
    sd["mask_token"] = torch.zeros(1, c)
    if reg:
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([torch.zeros(1, 1, c), sd["pos_embed"]], 1)  # cls position included
    return sd


@pytest.mark.parametrize("reg", [False, True])
@pytest.mark.parametrize("res", [256, 512])
def test_dinov2_from_official_file(tmp_path, reg, res):
    torch.manual_seed(0)
    arch = f"vit_small_patch14_{'reg4_' if reg else ''}dinov2"
    src = timm.create_model(arch, pretrained=False, img_size=518, num_classes=0, depth=2)  # 37x37 like the release
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / f"dinov2_vits14{'_reg4' if reg else ''}_pretrain.pth"
    torch.save(_timm_to_official(src.state_dict(), reg), path)

    enc = load_encoder(path, resolution=res, depth=2)  # name recognised from the file's keys
    assert enc.name == f"dinov2{'reg' if reg else ''}-vit-s"
    grid = 16 * res // 256
    assert enc.input_size == 14 * grid and enc.num_tokens == grid * grid and enc.embed_dim == 384
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())

    # Reference: the source weights at the new grid, pos-embed resampled independently.
    ref = timm.create_model(arch, pretrained=False, img_size=14 * grid, num_classes=0, depth=2)
    sd = src.state_dict()
    prefix = 0 if reg else 1  # timm's reg4 models keep no cls position in pos_embed
    sd["pos_embed"] = _ref_resample(sd["pos_embed"], grid, prefix=prefix)
    ref.load_state_dict(sd)
    ref.eval()
    x = _raw(res=res)
    want = ref.forward_features(preprocess(x, enc.name))[:, ref.num_prefix_tokens:]
    got = enc(x)
    assert got.shape == (2, grid * grid, 384)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the final norm is applied (x_norm_patchtokens): per-token mean ~ LayerNorm bias
    assert torch.allclose(enc.forward_tokens(preprocess(x, enc.name)), got)


def test_dinov2_by_name_with_checkpoint_and_random(tmp_path):
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0, depth=1)
    path = tmp_path / "w.pth"
    torch.save({"teacher": _timm_to_official(src.state_dict(), False)}, path)  # wrapped as in training dumps
    enc = load_encoder("dinov2-vit-s", checkpoint=path, depth=1)
    assert enc.forward_tokens(torch.randn(1, 3, 224, 224)).shape == (1, 256, 384)
    rnd = load_encoder("dinov2-vit-b", pretrained=False, depth=1)
    assert rnd.embed_dim == 768 and rnd(_raw(b=1)).shape == (1, 256, 768)
    with pytest.raises(ValueError, match="missing keys"):
        load_encoder("dinov2-vit-s", checkpoint=path, depth=2)  # file has one block


# ---------------------------------------------------------------------------------------------
# DINOv2 through torch.hub (mocked: REPA's path, not reachable offline)
# ---------------------------------------------------------------------------------------------
class _FakeHubDINOv2(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.embed_dim = dim  # as the real hub models
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + 37 * 37, dim))
        self.head = nn.Linear(dim, 3)
        self.proj = nn.Conv2d(3, dim, 14, 14)

    def forward_features(self, x):
        z = self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        return {"x_norm_patchtokens": z, "x_norm_clstoken": z.mean(1)}


def test_dinov2_hub_path(monkeypatch):
    calls = []
    fake = _FakeHubDINOv2()
    pos = fake.pos_embed.detach().clone()

    def hub_load(repo, name, **kw):
        calls.append((repo, name, kw))
        return fake

    monkeypatch.setattr(torch.hub, "load", hub_load)
    enc = load_encoder("dinov2reg-vit-b")
    assert calls == [(f"facebookresearch/dinov2:{DINOV2_HUB_COMMIT}", "dinov2_vitb14_reg", {"pretrained": True})]
    assert isinstance(enc.model.head, nn.Identity)
    torch.testing.assert_close(enc.model.pos_embed.data, _ref_resample(pos, 16), rtol=1e-4, atol=1e-5)
    assert enc(_raw()).shape == (2, 256, 16) and enc.embed_dim == 16

    def broken(*a, **k):
        raise OSError("no internet")

    monkeypatch.setattr(torch.hub, "load", broken)
    with pytest.raises(RuntimeError, match="checkpoint="):
        load_encoder("dinov2-vit-b", source="hub")


def test_hub_source_with_a_local_checkpoint_runs_no_hub_code_and_loads_strictly(tmp_path, monkeypatch):
    # Planted bug (the hub path before: torch.hub.load, then load_state_dict(strict=False) with the result
    # ignored): the hub is called, and a checkpoint of the wrong layout gives an encoder with random weights.
    def no_hub(*a, **k):
        raise AssertionError("torch.hub.load called although the weights come from a local file")

    monkeypatch.setattr(torch.hub, "load", no_hub)
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0, depth=1)
    good = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(_timm_to_official(src.state_dict(), False), good)
    enc = load_encoder("dinov2-vit-s", checkpoint=good, source="hub", depth=1)
    torch.testing.assert_close(enc.model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    wrong = tmp_path / "wrong.pth"
    sd = _timm_to_official(src.state_dict(), False)
    sd = {("renamed." + k if k.startswith("blocks.0.attn") else k): v for k, v in sd.items()}
    torch.save(sd, wrong)
    with pytest.raises(ValueError, match=r"missing keys \['blocks\.0\.attn.*unexpected keys \['renamed\.blocks\.0\.attn"):
        load_encoder("dinov2-vit-s", checkpoint=wrong, source="hub", depth=1)


# ---------------------------------------------------------------------------------------------
# untrusted files: tensors only unless trust_checkpoint=True
# ---------------------------------------------------------------------------------------------
class _Payload:
    """Unpickled with code execution, it creates the marker file (a stand-in for any code an attacker picks)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(tmp_path):
    """A DINOv2-looking training dump (one block) with a payload beside the weights."""
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0, depth=1)
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"teacher": _timm_to_official(src.state_dict(), False), "args": _Payload(marker)}, path)
    return path, marker


def test_a_checkpoint_that_needs_pickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    # Planted bug (the loader before: weights_only=True, then torch.jit.load, then a silent
    # torch.load(weights_only=False)): every call below runs the payload, the marker file appears.
    path, marker = _evil_checkpoint(tmp_path)
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: pytest.fail("torch.hub.load called"))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load called on an untrusted file"))
    calls = [
        lambda: read_checkpoint(path),
        lambda: load_encoder(path, depth=1),  # the name is inferred from the file
        lambda: load_encoder(path, pretrained=False, depth=1),
        lambda: load_encoder("dinov2-vit-s", checkpoint=path, depth=1),
        lambda: load_encoder("dinov2-vit-s", checkpoint=path, source="hub", depth=1),
        lambda: load_encoder("dinov2-vit-s", checkpoint=path, source="timm", depth=1),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert str(path) in msg and "trust_checkpoint=True" in msg and "runs code from the file" in msg
        assert "Unsupported global" in msg  # what the weights-only reader refused
        assert not marker.exists()


def test_trust_checkpoint_opts_in_and_the_file_is_read_once(tmp_path, monkeypatch):
    path, marker = _evil_checkpoint(tmp_path)
    import vrpo_loss.encoders.checkpoint as ck

    reads = []
    real = torch.load
    monkeypatch.setattr(ck.torch, "load", lambda *a, **k: reads.append(k.get("weights_only")) or real(*a, **k))
    enc = load_encoder(path, depth=1, trust_checkpoint=True)  # recognised and loaded from one read
    assert enc.name == "dinov2-vit-s" and marker.exists()
    assert reads == [True, False]  # the safe attempt, then the trusted one: one read of the file
    with pytest.raises(TypeError, match="trust_checkpoint"):
        read_checkpoint(path, trust_checkpoint="yes")


def test_torchscript_archive_needs_trust(tmp_path):
    import warnings

    lin = nn.Linear(3, 2)
    path = tmp_path / "ViT-L-14.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script/save are deprecated
        torch.jit.save(torch.jit.script(lin), str(path))
        with pytest.raises(ValueError, match="TorchScript archive.*trust_checkpoint=True"):
            read_checkpoint(path)
        sd = read_checkpoint(path, trust_checkpoint=True)
    torch.testing.assert_close(sd["weight"], lin.weight)


def test_safe_formats_load_without_trust(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = {"w": torch.randn(2, 3)}
    safetensors.save_file(sd, tmp_path / "w.safetensors")
    torch.testing.assert_close(read_checkpoint(tmp_path / "w.safetensors")["w"], sd["w"])
    torch.save({"model": sd, "epoch": 3}, tmp_path / "w.pth")  # plain containers and numbers are fine
    assert read_checkpoint(tmp_path / "w.pth")["epoch"] == 3


# ---------------------------------------------------------------------------------------------
# DINOv2 from a Hugging Face directory (transformers)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reg", [False, True])
def test_dinov2_transformers_dir(tmp_path, reg):
    transformers = pytest.importorskip("transformers")
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=518, patch_size=14)
    if reg:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kw)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        cfg = transformers.Dinov2Config(**kw)
        model = transformers.Dinov2Model(cfg)
    model.save_pretrained(tmp_path)
    enc = load_encoder(tmp_path)
    assert enc.name.startswith("dinov2reg-" if reg else "dinov2-") and enc.embed_dim == 32
    assert enc.num_prefix_tokens == (5 if reg else 1)

    model.eval()
    pe = model.embeddings.position_embeddings
    model.embeddings.position_embeddings = nn.Parameter(_ref_resample(pe.data, 16))
    x = _raw()
    with torch.no_grad():
        want = model(pixel_values=preprocess(x, "dinov2-vit-b")).last_hidden_state[:, enc.num_prefix_tokens:]
    torch.testing.assert_close(enc(x), want, rtol=1e-4, atol=1e-4)


def test_transformers_dir_of_other_model_is_rejected(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="expected DINOv2"):
        load_encoder(tmp_path)


# ---------------------------------------------------------------------------------------------
# CLIP ViT-L/14 from an OpenAI checkpoint, against a hand-written visual transformer
# ---------------------------------------------------------------------------------------------
class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _ResBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(d, 4 * d), gelu=_QuickGELU(), c_proj=nn.Linear(4 * d, d)))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _ClipVisual(nn.Module):
    """OpenAI CLIP's VisionTransformer, read out as REPA's UpdatedVisionTransformer does."""

    def __init__(self, width=64, layers=2, heads=4, patch=14, grid=16, out=32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * 0.1)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[_ResBlock(width, heads) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out) * 0.1)

    def tokens(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], 1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer.resblocks(x)
        return x.permute(1, 0, 2)[:, 1:]  # no ln_post, CLS dropped


def test_clip_from_openai_checkpoint(tmp_path):
    torch.manual_seed(0)
    vis = _ClipVisual().eval()
    sd = {f"visual.{k}": v for k, v in vis.state_dict().items()}
    sd.update({"text_projection": torch.zeros(8, 32), "positional_embedding": torch.zeros(77, 8),
               "token_embedding.weight": torch.zeros(10, 8), "ln_final.weight": torch.ones(8)})
    path = tmp_path / "ViT-L-14.pt"
    torch.save(sd, path)
    assert infer_encoder_name(sd) == "clip-vit-L"
    enc = load_encoder("clip-vit-L", checkpoint=path, embed_dim=64, depth=2, num_heads=4)
    x = _raw()
    with torch.no_grad():
        want = vis.tokens(preprocess(x, "clip-vit-L"))
    got = enc(x)
    assert got.shape == (2, 256, 64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# MAE and MoCo v3 from their checkpoint files
# ---------------------------------------------------------------------------------------------
def _tiny_vit(img=224, dim=64, depth=2):
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    m = VisionTransformer(img_size=img, patch_size=16, embed_dim=dim, depth=depth, num_heads=4, qkv_bias=True,
                          num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _ref_vit_tokens(src, x, *, final_norm):
    sd = src.state_dict()
    ref = _tiny_vit(img=256, dim=sd["cls_token"].shape[-1])
    sd["pos_embed"] = _ref_resample(sd["pos_embed"], 16)
    ref.load_state_dict(sd)
    with torch.no_grad():
        h = ref.patch_embed(x)
        h = torch.cat([ref.cls_token.expand(h.shape[0], -1, -1), h], 1) + ref.pos_embed
        h = ref.blocks(h)
        if final_norm:
            h = ref.norm(h)
    return h[:, 1:]


def test_mae_from_checkpoint(tmp_path, monkeypatch):
    src = _tiny_vit()
    sd = dict(src.state_dict())
    sd.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
               "decoder_pos_embed": torch.zeros(1, 197, 32)})
    (tmp_path / "ckpts").mkdir()
    torch.save({"model": sd}, tmp_path / "ckpts" / "mae_vitl.pth")
    monkeypatch.chdir(tmp_path)  # REPA's default location ckpts/mae_vitl.pth
    enc = load_encoder("mae-vit-l", embed_dim=64, depth=2, num_heads=4)
    assert infer_encoder_name({"model": sd}) == "mae-vit-l"
    x = _raw()
    got = enc(x)
    assert got.shape == (2, 256, 64)
    torch.testing.assert_close(got, _ref_vit_tokens(src, preprocess(x, "mae-vit-l"), final_norm=False), rtol=1e-4, atol=1e-4)


def test_mocov3_from_checkpoint(tmp_path):
    src = _tiny_vit(dim=384)
    sd = {f"module.base_encoder.{k}": v for k, v in src.state_dict().items()}
    sd.update({"module.base_encoder.head.0.weight": torch.zeros(4, 384),
               "module.momentum_encoder.cls_token": torch.zeros(1, 1, 384),
               "module.predictor.0.weight": torch.zeros(4, 4)})
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"state_dict": sd, "epoch": 300}, path)
    enc = load_encoder(path, depth=2, num_heads=4)
    assert enc.name == "mocov3-vit-s"
    x = _raw()
    got = enc(x)
    assert got.shape == (2, 256, 384)
    torch.testing.assert_close(got, _ref_vit_tokens(src, preprocess(x, "mocov3-vit-s"), final_norm=True), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the frozen wrapper and its bad inputs
# ---------------------------------------------------------------------------------------------
def test_frozen_encoder_contract():
    enc = load_encoder("dinov2-vit-s", pretrained=False, depth=1)
    enc.train()
    assert not enc.training and not enc.model.training
    assert all(not p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="224x224"):
        enc.forward_tokens(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError) as err:
        enc(_raw(b=1), num_tokens=64)
    msg = str(err.value)
    assert "256" in msg and "64" in msg and "patch size" in msg


def test_check_token_count():
    check_token_count(256, 256)
    with pytest.raises(ValueError, match=r"1024 patch tokens.*256 tokens"):
        check_token_count(1024, 256, encoder_name="dinov2-vit-b")


def test_bad_arguments():
    with pytest.raises(ValueError, match="source"):
        load_encoder("dinov2-vit-b", source="internet")
    with pytest.raises(ValueError, match="resolution"):
        load_encoder("dinov2-vit-b", resolution=0)
    with pytest.raises(ValueError, match="cannot tell"):
        infer_encoder_name({"foo": torch.zeros(1)})
