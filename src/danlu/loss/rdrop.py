"""R-Drop (Liang et al. 2021, https://arxiv.org/abs/2106.14448): run the model twice with
different dropout masks and pull the two predictions together with a symmetric KL term.

    loss = (CE(p1) + CE(p2)) / 2 + alpha · ½ (KL(p1‖p2) + KL(p2‖p1))

The KL is summed over classes and averaged over examples (or over real tokens when a
padding mask is given), so ``alpha`` does not depend on the batch size; code that sums the
KL over the batch uses an ``alpha`` B times smaller for the same effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from danlu._checks import check_ignore_index
from danlu.core import Order, State, Trick
from danlu.loss._swap import as_float, batch_field

__all__ = ["symmetric_kl", "rdrop_loss", "duplicate_batch", "RDrop"]


def _check_alpha(alpha: float) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not (math.isfinite(alpha) and alpha >= 0)
    ):
        raise ValueError(
            f"alpha (the weight of the KL term) must be a finite number >= 0, got {alpha!r}; "
            "typical values are 0.1-5"
        )
    return float(alpha)


def _check_pair(logits1: torch.Tensor, logits2: torch.Tensor) -> None:
    if logits1.dim() < 2:
        raise ValueError(
            f"logits must be (B, C) or (B, T, C) with the classes last, got {tuple(logits1.shape)}"
            "; for one example add the batch dim: logits.unsqueeze(0)"
        )
    if logits1.shape != logits2.shape:
        raise ValueError(
            f"the two passes' logits must have the same shape, got {tuple(logits1.shape)} "
            f"and {tuple(logits2.shape)}; pass both forward passes of the same batch"
        )


def symmetric_kl(
    logits1: torch.Tensor, logits2: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``½ (KL(p1‖p2) + KL(p2‖p1))`` of the softmaxes over the last dim, summed over classes
    and averaged over the other dims (only where ``mask`` is nonzero, when given).

    Uses ``½ KL(p1‖p2) + ½ KL(p2‖p1) = ½ sum_c (p1 - p2)(log p1 - log p2)``, in fp32.

    Args:
        logits1, logits2: ``(B, C)`` or ``(B, T, C)`` logits of the two passes.
        mask: optional ``(B,)`` / ``(B, T)`` mask, nonzero on real examples / tokens.

    Example:
        >>> a = torch.tensor([[1.0, 0.0]])
        >>> symmetric_kl(a, a)
        tensor(0.)
    """
    _check_pair(logits1, logits2)
    lp1 = F.log_softmax(as_float(logits1), dim=-1)
    lp2 = F.log_softmax(as_float(logits2), dim=-1)
    per = ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum(-1).mul(0.5)
    if mask is None:
        return per.mean()
    if mask.shape != per.shape:
        raise ValueError(
            f"mask must have the logits' shape without the class dim, {tuple(per.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


def rdrop_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    *,
    mask: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The R-Drop loss of two passes' logits: mean of the two cross-entropies plus
    ``alpha`` times :func:`symmetric_kl`.

    Args:
        logits1, logits2: ``(B, C)`` or token-level ``(B, T, C)`` logits (classes last).
        target: class indices ``(B,)`` / ``(B, T)``.
        alpha: weight of the KL term, >= 0 (the paper tunes it in 0.1-5).
        mask: optional ``(B, T)`` padding mask (nonzero = real token); pads count neither
            in the cross-entropy nor in the KL.
        ignore_index: labels equal to it are left out of the cross-entropy.

    Example:
        >>> l1, l2 = torch.randn(4, 3), torch.randn(4, 3)
        >>> loss = rdrop_loss(l1, l2, torch.tensor([0, 1, 2, 0]), alpha=1.0)
    """
    alpha = _check_alpha(alpha)
    check_ignore_index(ignore_index)
    _check_pair(logits1, logits2)  # before the cross-entropy, which fails obscurely on it
    if target.shape != logits1.shape[:-1]:
        raise ValueError(
            f"target must hold one class index per row of logits, shape "
            f"{tuple(logits1.shape[:-1])}, got {tuple(target.shape)}"
        )
    if mask is not None:
        target = target.masked_fill(mask == 0, ignore_index)
    flat_t = target.reshape(-1)

    def ce(logits: torch.Tensor) -> torch.Tensor:
        flat = as_float(logits).reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, flat_t, ignore_index=ignore_index)

    return 0.5 * (ce(logits1) + ce(logits2)) + alpha * symmetric_kl(logits1, logits2, mask)


def duplicate_batch(batch: Any) -> Any:
    """The batch twice over: every tensor with a batch dim is concatenated with itself along
    dim 0 (through dicts, lists and tuples); anything else is kept.

    Example:
        >>> duplicate_batch({"x": torch.tensor([1, 2]), "n": 3})
        {'x': tensor([1, 2, 1, 2]), 'n': 3}
    """
    if isinstance(batch, torch.Tensor):
        return torch.cat([batch, batch]) if batch.dim() > 0 else batch
    if isinstance(batch, Mapping):
        return {k: duplicate_batch(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(duplicate_batch(v) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(duplicate_batch(v) for v in batch)
    return batch


class RDrop(Trick):
    """Trick: R-Drop around the loss chain; the loss is
    ``(loss1 + loss2) / 2 + alpha · symmetric_kl(logits1, logits2)``.

    ``loss1``/``loss2`` are whatever the inner chain returns (the user's loss, or a loss swap
    such as :class:`~danlu.loss.Focal`), so R-Drop wraps any loss. Inside ``Tricks`` it also
    runs in the adversarial closures (FGM/PGD re-run the whole chain).

    Args:
        alpha: weight of the KL term (>= 0).
        mode: ``"two_pass"`` calls the model twice; ``"duplicate"`` calls it once on the
            batch concatenated with itself (every tensor doubled along dim 0) and splits the
            logits: usually faster, but needs batch-first tensors and ~2x activation memory
            in one pass. Avoid ``"duplicate"`` with BatchNorm (the two halves share
            statistics).
        mask_key / mask_fn: for token-level logits ``(B, T, C)``, where the padding mask
            is in the batch (``batch[mask_key]`` or ``mask_fn(batch)``), so pads are left out
            of the KL; ``None`` averages over all positions.

    Example:
        >>> import danlu
        >>> tricks = danlu.Tricks([RDrop(alpha=1.0, mode="duplicate")])  # loss_fn -> (loss, logits)
    """

    order = Order.LOSS_WRAP

    def __init__(
        self,
        alpha: float = 1.0,
        mode: Literal["two_pass", "duplicate"] = "two_pass",
        *,
        mask_key: str | None = None,
        mask_fn: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        if mode not in ("two_pass", "duplicate"):
            raise ValueError(f"mode must be 'two_pass' or 'duplicate', got {mode!r}")
        self.alpha, self.mode = _check_alpha(alpha), mode
        self.mask_key, self.mask_fn = mask_key, mask_fn

    def compute_loss(self, forward, batch: Any, state: State):
        if self.mode == "two_pass":
            loss1, logits1 = forward(batch)
            loss2, logits2 = forward(batch)
            loss = 0.5 * (loss1 + loss2)
        else:
            loss, logits = forward(duplicate_batch(batch))
            logits1, logits2 = (None, None) if logits is None else logits.chunk(2)
        if not isinstance(logits1, torch.Tensor):
            raise ValueError("RDrop needs the logits: make loss_fn return (loss, logits)")
        mask = None
        if self.mask_key is not None or self.mask_fn is not None:
            mask = batch_field(batch, self.mask_key, self.mask_fn, "padding mask")
        return loss + self.alpha * symmetric_kl(logits1, logits2, mask), logits1

    def __repr__(self) -> str:
        return f"RDrop(alpha={self.alpha}, mode={self.mode!r})"
