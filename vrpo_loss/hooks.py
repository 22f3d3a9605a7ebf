"""Feature taps: capture the hidden tokens after block ``depth`` of a diffusion transformer.

SiT and DiT return only their output, so the features REPA aligns (the tokens after block
``encoder_depth``) are read with a forward hook. :class:`FeatureTap` gives exactly one capture
per forward of the tapped model:

- it is *armed* by a pre-hook on the model and disarmed by the first output of the block, so a
  block re-run by activation checkpointing during backward, or called twice, is not captured again;
- it works on the module inside ``DistributedDataParallel`` (register it on ``model`` before or
  after wrapping, the hooks live on the inner module) and under ``torch.compile`` (the hooks are
  traced; the capture is a graph output);
- a ``deepcopy`` of the model (the EMA copy) gets inert hooks, not a second tap;
- :meth:`FeatureTap.pop` raises a clear error when the forward did not reach the block.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

__all__ = ["FeatureTap", "find_blocks", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` and ``torch.compile``."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model


def find_blocks(model: nn.Module, blocks: str = "blocks") -> nn.Module:
    """The ``nn.ModuleList`` (or ``nn.Sequential``) of transformer blocks at dotted path ``blocks``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    obj: Any = unwrap_model(model)
    for part in blocks.split("."):
        if not hasattr(obj, part):
            lists = [n for n, m in unwrap_model(model).named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]
            raise ValueError(
                f"blocks: {type(unwrap_model(model)).__name__} has no attribute path {blocks!r}; "
                f"expected the name of its block list. Module lists found: {lists[:8]}"
            )
        obj = getattr(obj, part)
    if not isinstance(obj, (nn.ModuleList, nn.Sequential)):
        raise TypeError(f"blocks: expected {blocks!r} to be an nn.ModuleList, got {type(obj).__name__}")
    return obj


def _inert_hook(*args: Any, **kwargs: Any) -> None:
    return None


class _Hook:
    """A hook callable bound to a tap; copies of it (EMA deepcopy, pickling) are inert."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        return _inert_hook

    def __reduce__(self):
        return (_make_inert, ())


def _make_inert():
    return _inert_hook


class FeatureTap:
    """Capture the output of block ``depth`` (1-based, REPA's ``encoder_depth``) of ``model``.

    Args:
        model: a model whose blocks are an ``nn.ModuleList`` (SiT, DiT, REPA's SiT), possibly
            wrapped by DDP or ``torch.compile``.
        depth: capture the output of ``blocks[depth - 1]``, i.e. after ``depth`` blocks, as REPA
            does with ``encoder_depth`` (8 for SiT-XL/L, 4 for SiT-B).
        blocks: dotted attribute path of the block list.
        keep_inputs: also keep the positional and keyword arguments of the model's last forward,
            read with :meth:`input` (SiT's ``t`` is its second argument).
        keep_output: also keep the model's output of its last forward, read with :meth:`output`
            (DiT's ``training_losses`` does not return it).

    Example::

        tap = FeatureTap(model, depth=8)
        loss_dict = transport.training_losses(model, x, model_kwargs)
        h = tap.pop()  # (B, N, D)

    Shape:
        - :meth:`pop`: (B, N, D), the block's output (first element if the block returns a tuple).
    """

    def __init__(self, model: nn.Module, *, depth: int, blocks: str = "blocks", keep_inputs: bool = False,
                 keep_output: bool = False) -> None:
        block_list = find_blocks(model, blocks)
        n = len(block_list)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= n:
            raise ValueError(
                f"depth: expected an int in [1, {n}] (the model has {n} blocks; depth k taps the "
                f"output of the k-th block, REPA's encoder_depth), got {depth!r}"
            )
        self.depth = depth
        self.keep_inputs = bool(keep_inputs)
        self.keep_output = bool(keep_output)
        self._output: Any = None
        self._root = unwrap_model(model)
        self._block = block_list[depth - 1]
        self._armed = False
        self._grad_enabled = False
        self._features: Optional[torch.Tensor] = None
        self._args: tuple = ()
        self._kwargs: dict = {}
        self._forwards = 0
        self._handles = [
            self._root.register_forward_pre_hook(_Hook(self._arm), with_kwargs=True),
            self._block.register_forward_hook(_Hook(self._capture)),
            self._root.register_forward_hook(_Hook(self._disarm)),
        ]

    # hooks -------------------------------------------------------------------------------
    def _arm(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._armed = True
        self._grad_enabled = torch.is_grad_enabled()
        self._features = None
        self._forwards += 1
        if self.keep_inputs:
            self._args, self._kwargs = args, dict(kwargs)

    def _capture(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._armed:  # recomputation by activation checkpointing, or a second call
            return
        self._armed = False
        if isinstance(output, (tuple, list)):
            output = output[0]
        self._features = output

    def _disarm(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._armed = False
        if self.keep_output:
            self._output = output

    # public ------------------------------------------------------------------------------
    @property
    def has_features(self) -> bool:
        """Whether a capture is waiting to be popped."""
        return self._features is not None

    def pop(self) -> torch.Tensor:
        """Return the features captured by the last forward and forget them.

        Raises:
            RuntimeError: if no forward reached block ``depth`` since the last ``pop``, or if the
                features carry no gradient although the forward ran with grad enabled (reentrant
                activation checkpointing runs blocks under ``no_grad``).
        """
        feats = self._features
        if feats is None:
            if self._forwards == 0:
                why = "the model has not been called since the tap was registered"
            else:
                why = "the last forward did not reach it, or its capture was already popped"
            raise RuntimeError(
                f"FeatureTap: no features captured at block {self.depth} ({why}). Hint: call pop() "
                f"once after each forward of the tapped model (the training model, not its EMA copy), "
                f"and check that tap.remove() was not called."
            )
        self._features = None
        if (
            self._grad_enabled
            and isinstance(feats, torch.Tensor)
            and not feats.requires_grad
            and any(p.requires_grad for p in self._block.parameters())
        ):
            raise RuntimeError(
                f"FeatureTap: features of block {self.depth} carry no gradient although the forward "
                f"ran with grad enabled; the block likely ran under reentrant activation "
                f"checkpointing. Hint: use torch.utils.checkpoint.checkpoint(..., use_reentrant=False)."
            )
        return feats

    def input(self, index: int, name: Optional[str] = None) -> Any:
        """Argument ``index`` (or keyword ``name``) of the model's last forward (``keep_inputs=True``)."""
        if not self.keep_inputs:
            raise RuntimeError("FeatureTap.input: construct the tap with keep_inputs=True to keep the model's inputs")
        if index < len(self._args):
            return self._args[index]
        if name is not None and name in self._kwargs:
            return self._kwargs[name]
        raise RuntimeError(
            f"FeatureTap.input: the last forward had {len(self._args)} positional arguments and "
            f"keywords {sorted(self._kwargs)}; expected positional {index} or keyword {name!r}"
        )

    def output(self) -> Any:
        """The model's output in its last forward (``keep_output=True``), as the model returned it."""
        if not self.keep_output:
            raise RuntimeError("FeatureTap.output: construct the tap with keep_output=True to keep the model's output")
        if self._output is None:
            raise RuntimeError("FeatureTap.output: the tapped model has not completed a forward since the tap was registered")
        return self._output

    def remove(self) -> None:
        """Remove the hooks and drop any capture."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._features = None
        self._args, self._kwargs = (), {}
        self._output = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTap(depth={self.depth}, block={type(self._block).__name__}, keep_inputs={self.keep_inputs})"
