"""FixMatch (Sohn et al. 2020, https://arxiv.org/abs/2001.07685): the weak view's argmax is a
hard pseudo-label when its probability reaches ``threshold``, and the strong view is trained
on it with cross-entropy,

    term = 1/B · sum_i 1[max p(weak_i) >= threshold] · CE(p(strong_i), argmax p(weak_i))

(averaged over the whole unlabelled batch, as in the paper). The weak side is a fixed target
(no gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.core import State
from danlu.loss._swap import as_float
from danlu.semi.unlabelled import ConsistencyTrick, check_probability, views

__all__ = ["fixmatch_loss", "FixMatch"]


def fixmatch_loss(
    logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's masked pseudo-label cross-entropy (see the module docstring).

    Returns:
        ``(loss, mask)``: the scalar loss and the ``(B,)`` boolean mask of the examples that
        got a pseudo-label (``mask.float().mean()`` is worth logging).

    Example:
        >>> weak = torch.tensor([[5.0, 0.0], [0.1, 0.0]])
        >>> loss, mask = fixmatch_loss(weak, weak, threshold=0.9)
        >>> mask.tolist()
        [True, False]
    """
    if logits_weak.shape != logits_strong.shape:
        raise ValueError(
            f"weak and strong logits must have the same shape, got {tuple(logits_weak.shape)} "
            f"and {tuple(logits_strong.shape)}"
        )
    thr = check_probability("threshold", threshold)
    conf, pseudo = as_float(logits_weak.detach()).softmax(-1).max(-1)
    mask = conf >= thr
    ce = F.cross_entropy(as_float(logits_strong), pseudo, reduction="none")
    return (ce * mask.to(ce.dtype)).mean(), mask


class FixMatch(ConsistencyTrick):
    """FixMatch on unlabelled batches: ``loss = supervised + alpha · fixmatch_loss(...)``.

    Args:
        unlabelled: re-iterable of ``(weak, strong)`` batch pairs (e.g. a DataLoader with
            :func:`~danlu.semi.text_views` as collate: the clean text as the weak view, EDA
            as the strong one), or plain batches with ``augment=`` (the strong view; the
            batch itself is the weak one).
        alpha: weight ``lambda_u`` of the term (>= 0; paper: 1).
        threshold: confidence for a pseudo-label, in (0, 1] (paper: 0.95).
        augment: ``augment(batch) -> batch`` making the strong view.
        logits_fn: ``logits_fn(model, batch) -> logits`` for the unlabelled forwards.

    ``state.extra["fixmatch_mask"]`` holds the share of the batch above the threshold.

    Example:
        >>> tricks = danlu.Tricks([FixMatch(unlabelled_loader, threshold=0.95)])
    """

    name = "fixmatch"

    def __init__(
        self,
        unlabelled: Iterable[Any],
        alpha: float = 1.0,
        threshold: float = 0.95,
        augment: Callable[[Any], Any] | None = None,
        *,
        logits_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(unlabelled, alpha, logits_fn)
        self.threshold = check_probability("threshold", threshold)
        self.augment = augment

    def term(self, model: nn.Module, item: Any, state: State | None = None) -> torch.Tensor:
        """The FixMatch term on one unlabelled item."""
        weak, strong = views(item, self.augment)
        loss, mask = fixmatch_loss(
            self.clean_logits(model, weak), self.logits_fn(model, strong), self.threshold
        )
        if state is not None:
            state.extra["fixmatch_mask"] = mask.float().mean()
        return loss

    def __repr__(self) -> str:
        return f"FixMatch(alpha={self.alpha}, threshold={self.threshold})"
