"""Evaluation: an independent classifier, Frechet distance in its features, accuracy on samples.

The classifier is a small CNN trained here on the training split (not the alignment encoder, so the
metric does not reward copying the encoder): on 16x16 digits (10 classes, 64-d features) or on 32x32
glyphs (26 classes, 128-d features, one more conv stage). Its penultimate activations are the
feature space of the Frechet distance (FD) between generated samples and the held-out real images
(450 digits; the glyphs of the held-out typefaces); the real-vs-real floor is the FD of as many real
training images (same classes) against that set.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg


class DigitCNN(nn.Module):
    """The evaluation CNN: 16x16 inputs (digits, the default) or 32x32 (glyphs: one more conv stage)."""

    def __init__(self, feat_dim: int = 64, num_classes: int = 10, size: int = 16):
        super().__init__()
        extra = [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)] if size == 32 else []
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), *extra,
            nn.Flatten(), nn.Linear(64 * 4 * 4, feat_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(x, y, cache_dir: str, epochs: int = 30, seed: int = 0) -> DigitCNN:
    """Train (or load from cache) the evaluation classifier on the training split."""
    size, classes = x.shape[-1], int(y.max()) + 1
    arch = dict(feat_dim=64 if size == 16 else 128, num_classes=classes, size=size)
    name = "digit_cnn" if size == 16 else f"cnn{size}_c{classes}_n{len(x)}"
    path = os.path.join(cache_dir, f"{name}_e{epochs}_s{seed}.pt")
    asset = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", os.path.basename(path))
    if not os.path.exists(path) and size != 16 and os.path.exists(asset):
        path = asset  # the glyph classifier trained here on the committed glyph set (8 min on one core)
    if os.path.exists(path):
        net = DigitCNN(**arch)
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    # Seed before the initialisation, or the weights (and so the FD) depend on whatever drew from the
    # global generator before (e.g. building the encoder when its feature cache is cold); train on one
    # thread, or they depend on the thread count through the reduction order.
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitCNN(**arch)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(net, opt, x, y, g, epochs)
    finally:
        torch.set_num_threads(threads)
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(net.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    return net.eval()


def _fit(net, opt, x, y, g, epochs):
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            xb = x[idx]
            # light augmentation (1-pixel shifts) so the features are not tuned to exact pixels
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def features_and_logits(net: DigitCNN, x: torch.Tensor, batch: int = 500):
    f = torch.cat([net.features(x[i:i + batch]) for i in range(0, len(x), batch)])
    return f.double().numpy(), net.head(f).argmax(1)


def gaussian_stats(f: np.ndarray):
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(stats1, stats2) -> float:
    (mu1, s1), (mu2, s2) = stats1, stats2
    with warnings.catch_warnings():  # near-singular products (dead ReLU units) are expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # standard FID fallback: regularise the product
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class Evaluator:
    """Holds the classifier and the held-out reference statistics; scores a batch of samples."""

    def __init__(self, data, cache_dir: str, n_per_class: int = 45, epochs: int = 30):
        self.size = data.x_train.shape[-1]  # the classifier's resolution (16 or 32)
        self.num_classes = int(data.y_train.max()) + 1
        self.n_test = len(data.x_test)
        self.net = train_classifier(data.x_train, data.y_train, cache_dir, epochs=epochs)
        f_test, pred = features_and_logits(self.net, data.x_test)
        self.test_acc = float((pred == data.y_test).float().mean())
        self.ref = gaussian_stats(f_test)
        # floor: as many training digits as samples (n_per_class per class) against the held-out set
        # digits: the first of each class (the record's floor); glyphs, stored face by face: spread over the faces
        def pick(c):
            return c[:n_per_class] if self.size == 16 else c[torch.linspace(0, len(c) - 1, n_per_class).long()]

        idx = torch.cat([pick(torch.nonzero(data.y_train == k).flatten()) for k in range(self.num_classes)])
        f_tr, _ = features_and_logits(self.net, data.x_train[idx])
        self.floor = frechet_distance(gaussian_stats(f_tr), self.ref)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Samples (N, 1, H, W) in [-1, 1] (H < 16: upsampled bilinearly, as the real digits were)."""
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        f, pred = features_and_logits(self.net, x)
        return {"fd": frechet_distance(gaussian_stats(f), self.ref),
                "acc": float((pred == y).float().mean())}


def save_grid(x: torch.Tensor, path: str, nrow: int = 10):
    """Save a grid of (N, 1, H, W) images in [-1, 1] as a PNG (upscaled 2x, small file)."""
    from torchvision.utils import save_image

    x = F.interpolate((x + 1) / 2, scale_factor=max(1, 32 // x.shape[-1]), mode="nearest")
    save_image(x, path, nrow=nrow, padding=2, pad_value=1.0)
