"""The shared pattern of the loss-swap tricks (Focal, LabelSmoothing, TemperatureCE).

The user's ``loss_fn`` returns ``(loss, logits)``; a loss swap keeps the logits, finds the
labels in the batch and computes its own loss from the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from danlu.core import Order, State, Trick

__all__ = ["batch_field", "as_float", "classes_on_dim1", "LossSwap"]


def batch_field(batch: Any, key: str | None, fn: Callable[[Any], Any] | None, what: str) -> Any:
    """``fn(batch)`` when ``fn`` is given, else ``batch[key]`` of a dict batch."""
    if fn is not None:
        return fn(batch)
    if isinstance(batch, Mapping) and key in batch:
        return batch[key]
    found = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    raise ValueError(
        f"cannot find the {what} in the batch: no key {key!r} (batch has {found}); "
        f"pass the right key or a callable that takes the batch and returns the {what}"
    )


def as_float(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32: fp16/bf16 logits from autocast are upcast."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def classes_on_dim1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Token-level models return ``(B, T, C)`` logits for ``(B, T)`` labels; the
    cross-entropy family wants the classes on dim 1."""
    if logits.dim() == 3 and target.shape == logits.shape[:2]:
        return logits.transpose(1, 2)
    return logits


class LossSwap(Trick):
    """Base of the loss swaps: replace the user's loss by ``self.loss(logits, target)``.

    Logits are upcast to fp32, and ``(B, T, C)`` token logits with ``(B, T)`` labels are
    passed as ``(B, C, T)``.

    Args:
        target_key: key of the labels in a dict batch (default ``"labels"``).
        target_fn: ``target_fn(batch) -> labels`` for any other batch layout; wins over
            ``target_key``.
    """

    order = Order.LOSS
    replaces_loss = True

    def __init__(
        self, target_key: str = "labels", target_fn: Callable[[Any], torch.Tensor] | None = None
    ) -> None:
        if target_fn is not None and not callable(target_fn):
            raise TypeError(f"target_fn must be callable, got {type(target_fn).__name__}")
        self.target_key, self.target_fn = target_key, target_fn

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, forward, batch: Any, state: State):
        _, logits = forward(batch)
        if not isinstance(logits, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__} needs the logits: make loss_fn return (loss, logits)"
            )
        target = batch_field(batch, self.target_key, self.target_fn, "labels")
        return self.loss(classes_on_dim1(as_float(logits), target), target), logits
