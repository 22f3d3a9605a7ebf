"""The glyph setting's candidate target encoders: what each knows of the classes, and its tokens' spatial structure.

For each encoder (``--encoders``), on the glyphs of the training faces and of the held-out faces:

- **class 1-NN accuracy**: each held-out glyph's mean-pooled tokens, classified by its nearest training
  glyph (cosine): what the encoder knows of the 26 classes across typefaces;
- **spatial structure** (iREPA, arXiv 2512.10794, found it predicts an encoder's value as a target far
  better than its accuracy): the mean cosine between tokens at grid distance 1 less that between tokens
  at distance >= 4 (Chebyshev, 8x8 grid), per image, averaged ("local vs distant similarity", LDS);
  computed on the raw tokens and on the tokens after iREPA's spatial z-score.

    python examples/toy/probe_encoders.py                      # vgg, vgg-r3, ocr; writes results/glyphs/encoders.{json,md}

Training-set features are the benchmark's cache (``cache/toy``); the held-out ones are computed here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from glyphs import load_glyphs  # noqa: E402

from data import ENCODERS, encoder_features  # noqa: E402


def grid_distance(side: int = 8) -> torch.Tensor:
    """Chebyshev distance between the cells of a side x side grid, (N, N)."""
    ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).view(-1, 2)
    return (ij[:, None, :] - ij[None, :, :]).abs().amax(-1)


def local_vs_distant(tokens: torch.Tensor, near: int = 1, far: int = 4) -> float:
    """Mean over images of mean cos(tokens at distance ``near``) - mean cos(tokens at distance >= ``far``)."""
    u = F.normalize(tokens.float(), dim=-1)
    sim = u @ u.transpose(1, 2)  # (B, N, N)
    d = grid_distance(int(round(tokens.shape[1] ** 0.5)))
    return float((sim[:, d == near].mean(1) - sim[:, d >= far].mean(1)).mean())


def zscore(tokens: torch.Tensor) -> torch.Tensor:
    t = tokens.float()
    return (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-6)


def nn_accuracy(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor) -> float:
    a, b = F.normalize(train.float().mean(1), dim=-1), F.normalize(test.float().mean(1), dim=-1)
    pred = torch.cat([y_train[(b[i:i + 512] @ a.T).argmax(1)] for i in range(0, len(b), 512)])
    return float((pred == y_test).float().mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", nargs="+", default=["vgg", "vgg-r3", "ocr"], choices=sorted(ENCODERS))
    p.add_argument("--held-out", type=int, default=1040, help="held-out glyphs probed (40 a class)")
    p.add_argument("--cache-dir", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "cache", "toy"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "glyphs", "encoders"))
    a = p.parse_args(argv)
    torch.manual_seed(0)
    g = load_glyphs(a.cache_dir)
    pick = torch.randperm(len(g.x_test))[: a.held_out]
    x_test, y_test = g.x_test[pick], g.y_test[pick]
    rows = []
    for name in a.encoders:
        train = encoder_features(g.x_train, name, a.cache_dir)
        enc = ENCODERS[name]()
        test = torch.cat([enc(x_test[i:i + 64]) for i in range(0, len(x_test), 64)])
        rows.append(dict(encoder=name, dim=int(train.shape[-1]), nn_accuracy=nn_accuracy(train, g.y_train, test, y_test),
                         lds=local_vs_distant(train[:2000]), lds_zscored=local_vs_distant(zscore(train[:2000]))))
        print(json.dumps(rows[-1]))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(dict(command="python examples/toy/probe_encoders.py " + " ".join(argv or sys.argv[1:]), rows=rows), f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write("| encoder | channels | class 1-NN accuracy (held-out faces) | LDS, raw tokens | LDS, spatially z-scored |\n"
                "|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| `{r['encoder']}` | {r['dim']} | {r['nn_accuracy']:.3f} | {r['lds']:.3f} | {r['lds_zscored']:.3f} |\n")


if __name__ == "__main__":
    main()
