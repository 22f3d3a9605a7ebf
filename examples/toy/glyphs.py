"""Glyphs: characters rendered from many typefaces, the toy benchmark's second data set.

26 classes (the digits 0-9 and 16 capitals that no digit resembles) rendered from every installed
typeface that has all of them (Debian's DejaVu, Liberation, URW base35, FreeFont and Noto packages:
98 faces once symbol faces are dropped). Faces are split by a hash of their file name: about 80%
for training, the rest held out (the evaluator's reference set), so the generator is judged on
typefaces it never saw. Each image is 32x32 grey in [-1, 1] (glyph bright on dark): a random size
of 16-26 px, a shift of up to 2 px and a rotation of up to 8 degrees, rendered at 4x and reduced
with a box filter (antialiased). The set is rendered once and cached; its key covers the face list,
so another font installation gives another cache entry. The set rendered here (101 faces: 74 for
training, 27 held out; 11,544 and 3,510 images) is committed as ``assets/glyphs.npz`` (2.3 MB) and
used by default, so the benchmark's numbers do not depend on the font packages of the machine.

``install_fonts()`` installs the font packages with apt-get (root only) when too few faces are found.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

CLASSES = "0123456789ABCDEFGHKMNPRTXY"
FONT_PACKAGES = ("fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-urw-base35",
                 "fonts-freefont-ttf", "fonts-noto-core")
FONT_DIRS = ("/usr/share/fonts",)
MIN_FACES = 60  # fewer than this: the font packages are missing (DejaVu alone has 22)
SYMBOL_FACES = ("symbol", "d050000l", "dingbat")  # faces that map letters to pictures


@dataclass
class Glyphs:
    x_train: torch.Tensor  # (N, 1, 32, 32) in [-1, 1]
    y_train: torch.Tensor  # (N,) int64 in [0, 26)
    x_test: torch.Tensor  # (M, 1, 32, 32): held-out faces
    y_test: torch.Tensor
    faces_train: list
    faces_test: list

    num_classes = len(CLASSES)


def find_faces(dirs=FONT_DIRS, chars: str = CLASSES) -> list:
    """Sorted font files (TrueType / OpenType) under ``dirs`` that map every character of ``chars``."""
    from fontTools.ttLib import TTFont

    files = sorted(f for d in dirs for ext in ("ttf", "otf") for f in glob.glob(f"{d}/**/*.{ext}", recursive=True))
    out = []
    for f in files:
        if any(s in os.path.basename(f).lower() for s in SYMBOL_FACES):
            continue
        try:
            cmap = TTFont(f, lazy=True, fontNumber=0).getBestCmap() or {}
        except Exception:  # an unreadable file is no face
            continue
        if all(ord(c) in cmap for c in chars):
            out.append(f)
    return out


def install_fonts() -> None:
    """Install the font packages with apt-get (needs root and Debian's package index)."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit(f"glyphs: fewer than {MIN_FACES} typefaces found; install the font packages first: "
                         f"sudo apt-get install -y {' '.join(FONT_PACKAGES)}")
    log.warning("glyphs: installing the font packages with apt-get (once): %s", " ".join(FONT_PACKAGES))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", *FONT_PACKAGES], env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *FONT_PACKAGES], env=env, capture_output=True, check=True)


def split_faces(faces: list, held_out: float = 0.2) -> tuple:
    """Training and held-out faces, by a hash of each file name (stable when faces are added)."""
    def h(f):
        return int(hashlib.sha1(os.path.basename(f).encode()).hexdigest()[:8], 16) / 16 ** 8

    return [f for f in faces if h(f) >= held_out], [f for f in faces if h(f) < held_out]


def render(face: str, char: str, rng: np.random.Generator, size: int = 32, scale: int = 4) -> np.ndarray:
    """One glyph (size, size) uint8: random height 16-26 px, shift <= 2 px, rotation <= 8 degrees."""
    from PIL import Image, ImageDraw, ImageFont

    px = int(rng.integers(16, 27)) * scale
    font = ImageFont.truetype(face, px)
    big = size * scale
    img = Image.new("L", (2 * big, 2 * big), 0)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = draw.textbbox((0, 0), char, font=font)
    dx, dy = rng.integers(-2, 3, size=2) * scale
    draw.text((big - (x0 + x1) / 2 + dx, big - (y0 + y1) / 2 + dy), char, font=font, fill=255)
    img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR, center=(big, big))
    img = img.crop((big // 2, big // 2, big // 2 + big, big // 2 + big))
    return np.asarray(img.resize((size, size), Image.BOX))


def _render_set(faces, per_face_class: int, rng) -> tuple:
    xs, ys = [], []
    for face in faces:
        for c, ch in enumerate(CLASSES):
            for _ in range(per_face_class):
                xs.append(render(face, ch, rng))
                ys.append(c)
    return np.stack(xs), np.array(ys)


ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "glyphs.npz")


def load_glyphs(cache_dir: str, train_per: int = 6, test_per: int = 5, seed: int = 0, progress: bool = True,
                render_fonts: bool = False) -> Glyphs:
    """The glyph set: the committed one (``assets/glyphs.npz``, rendered here from 101 faces), or with
    ``render_fonts`` one rendered from the installed typefaces (``train_per`` / ``test_per`` images per
    (face, class); cached under a key of the face list, so another installation gives another set)."""
    path = ASSET
    if render_fonts or not os.path.exists(ASSET):
        faces = find_faces()
        if len(faces) < MIN_FACES:
            install_fonts()
            faces = find_faces()
        tr, te = split_faces(faces)
        key = hashlib.sha1(repr([[os.path.basename(f) for f in faces], train_per, test_per, seed]).encode()).hexdigest()
        path = os.path.join(cache_dir, f"glyphs_{key[:12]}.npz")
        if not os.path.exists(path):
            log.warning("glyphs: rendering %d training and %d held-out faces (once)", len(tr), len(te))
            rng = np.random.default_rng(seed)
            x_tr, y_tr = _render_set(tr, train_per, rng)
            x_te, y_te = _render_set(te, test_per, rng)
            os.makedirs(cache_dir, exist_ok=True)
            np.savez_compressed(path + ".tmp.npz", x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te,
                                faces_tr=[os.path.basename(f) for f in tr], faces_te=[os.path.basename(f) for f in te])
            os.replace(path + ".tmp.npz", path)
    d = np.load(path)

    def img(a):
        return torch.from_numpy(a).float().unsqueeze(1) / 127.5 - 1

    return Glyphs(img(d["x_tr"]), torch.from_numpy(d["y_tr"]).long(), img(d["x_te"]), torch.from_numpy(d["y_te"]).long(),
                  [str(f) for f in d["faces_tr"]], [str(f) for f in d["faces_te"]])
