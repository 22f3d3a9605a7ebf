"""vrpo-loss: reward-guided representation alignment for diffusion transformers."""

__version__ = "0.1.0"
