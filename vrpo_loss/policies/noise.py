"""The Gaussian policy's noise: chunked under a memory bound, regenerated from per-chunk seeds."""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch

__all__ = ["ChunkedNoise"]


class ChunkedNoise:
    """The ``G`` noise draws of a call, in chunks of at most ``max_elements`` elements.

    With ``antithetic`` only the first half of each chunk is drawn (its second half is the
    negation), and the chunk size is even. Each chunk has a seed of its own, so any chunk can be
    regenerated without holding the others.

    Args:
        group_size: actions G per token.
        antithetic: noise in pairs (eps, -eps).
        max_elements: bound on G_chunk * B * N * C.
    """

    def __init__(self, *, group_size: int, antithetic: bool, max_elements: int):
        self.group_size, self.antithetic, self.max_elements = group_size, antithetic, max_elements

    def chunk_size(self, b: int, n: int, c: int) -> int:
        """Actions per chunk under the memory bound (even when antithetic, at least 1 or 2)."""
        k = max(1, self.max_elements // max(1, b * n * c))
        if self.antithetic:
            k = max(2, k - k % 2)
        return min(k, self.group_size)

    def starts(self, shape: Sequence[int]) -> range:
        """The first action of each chunk. Shape: shape (B, N, C)."""
        b, n, c = shape
        return range(0, self.group_size, self.chunk_size(b, n, c))

    def chunk(self, seed: int, i: int, shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
        """The independent draws of chunk ``i`` alone (its own seed). Shape: (K, B, N, C), as in :meth:`chunks`."""
        b, n, c = shape
        k = self.chunk_size(b, n, c)
        size = min(k, self.group_size - i * k)
        gen = torch.Generator(device=device)
        gen.manual_seed((seed * 1_000_003 + i) % (1 << 62))
        return torch.randn((size // 2 if self.antithetic else size, b, n, c), generator=gen, device=device, dtype=dtype)

    def chunks(self, seed: int, shape: Sequence[int], device, dtype=torch.float32) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(g0, half)`` per chunk: its first action and its independent draws.

        Shape:
            shape: (B, N, C). half: (K, B, N, C), K = the chunk's actions (half of them when antithetic).
        """
        for i, g0 in enumerate(self.starts(shape)):
            yield g0, self.chunk(seed, i, shape, device, dtype)
