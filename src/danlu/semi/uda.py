"""UDA (Xie et al. 2020, https://arxiv.org/abs/1904.12848): consistency between the
prediction on an unlabelled example and on its augmentation,

    term = mean_i  1[max p(x_i) >= threshold] · KL( sharpen(p(x_i), T) ‖ p(aug(x_i)) )

with the clean side a fixed target (no gradient), averaged over the whole unlabelled batch as
in the authors' code (masked examples count as 0), and training-signal annealing (TSA) on
the supervised loss: at step t of T, labelled examples whose correct-class probability is
above ``eta_t = a_t (1 - 1/K) + 1/K`` leave the loss, with ``a_t`` = t/T (linear),
1 - exp(-5 t/T) (log) or exp(5 (t/T - 1)) (exp).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from danlu.core import State
from danlu.loss._swap import as_float, batch_field
from danlu.semi.unlabelled import ConsistencyTrick, check_probability, views

__all__ = ["uda_loss", "tsa_threshold", "tsa_cross_entropy", "UDA"]

Schedule = Literal["linear", "log", "exp"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        temperature > 0 and math.isfinite(temperature)
    ):
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r}; < 1 sharpens "
            "the target (UDA: 0.4), 1 leaves it as is"
        )
    return float(temperature)


def uda_loss(
    logits_clean: torch.Tensor,
    logits_aug: torch.Tensor,
    temperature: float = 0.4,
    threshold: float | None = 0.8,
) -> torch.Tensor:
    """UDA's masked, sharpened KL (see the module docstring); ``logits_clean`` is detached
    here whatever the caller did.

    Args:
        logits_clean: ``(B, C)`` logits on the clean unlabelled examples.
        logits_aug: ``(B, C)`` logits on their augmentations (gets the gradient).
        temperature: sharpening temperature of the target (> 0; 1 = none).
        threshold: confidence mask on the unsharpened clean max probability, in (0, 1];
            ``None`` keeps every example.

    Example:
        >>> a = torch.tensor([[4.0, 0.0], [0.1, 0.0]])
        >>> float(uda_loss(a, a, temperature=1.0))   # same prediction: no loss
        0.0
    """
    if logits_clean.shape != logits_aug.shape:
        raise ValueError(
            f"clean and augmented logits must have the same shape, got "
            f"{tuple(logits_clean.shape)} and {tuple(logits_aug.shape)}"
        )
    t = _check_temperature(temperature)
    clean = as_float(logits_clean.detach())
    target_log = F.log_softmax(clean / t, dim=-1)
    kl = (target_log.exp() * (target_log - F.log_softmax(as_float(logits_aug), dim=-1))).sum(-1)
    if threshold is not None:
        thr = check_probability("threshold", threshold)
        kl = kl * (clean.softmax(-1).amax(-1) >= thr).to(kl.dtype)
    return kl.mean()


def tsa_threshold(
    step: int, total_steps: int, num_classes: int, schedule: Schedule = "linear"
) -> float:
    """TSA's ``eta_t = a_t (1 - 1/K) + 1/K`` at ``step`` of ``total_steps`` (clipped to 1).

    Example:
        >>> tsa_threshold(0, 100, 2, "linear"), tsa_threshold(100, 100, 2, "exp")
        (0.5, 1.0)
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    r = min(max(step, 0) / total_steps, 1.0)
    if schedule == "linear":
        a = r
    elif schedule == "log":
        a = 1.0 - math.exp(-5.0 * r)
    elif schedule == "exp":
        a = math.exp(5.0 * (r - 1.0))
    else:
        raise ValueError(f"schedule must be 'linear', 'log' or 'exp', got {schedule!r}")
    return a * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def tsa_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Cross-entropy over the labelled examples whose correct-class probability is at most
    ``threshold`` (the others are too easy at this point of training), summed and divided by
    their count (at least 1), as in the UDA code.

    Example:
        >>> logits = torch.tensor([[5.0, 0.0], [0.0, 0.0]])
        >>> bool(tsa_cross_entropy(logits, torch.tensor([0, 0]), 0.6)
        ...      == torch.nn.functional.cross_entropy(logits[1:], torch.tensor([0])))
        True
    """
    logits = as_float(logits)
    ce = F.cross_entropy(logits, target, reduction="none")
    p_correct = torch.exp(-ce.detach())
    keep = (p_correct <= threshold).to(ce.dtype)
    return (ce * keep).sum() / keep.sum().clamp_min(1.0)


class UDA(ConsistencyTrick):
    """UDA consistency on unlabelled batches (+ optional TSA on the supervised loss).

    ``loss = supervised + alpha · uda_loss(p(clean), p(augmented))`` per micro-batch: one
    extra forward without a graph (the clean side) and one with (the augmented side).

    Args:
        unlabelled: re-iterable of unlabelled items: ``(clean, augmented)`` batch pairs
            (e.g. a DataLoader with :func:`~danlu.semi.text_views` as collate), or plain
            batches with ``augment=``.
        alpha: weight of the consistency term (>= 0; UDA: 1).
        temperature: target sharpening (> 0; UDA: 0.4).
        threshold: confidence mask in (0, 1] (UDA: 0.8), ``None`` for none.
        augment: ``augment(batch) -> batch`` making the augmented view (e.g. token cutoff on
            ids); with ``lambda b: b`` the two views differ only by dropout.
        tsa: ``None`` (off), ``"linear"``, ``"log"`` or ``"exp"``; then the supervised loss
            is recomputed from the logits with :func:`tsa_cross_entropy` (labels from
            ``target_key`` / ``target_fn``) and ``total_steps`` and ``num_classes`` are
            required. ``"exp"`` suits few labels (the paper's choice for text).
        logits_fn: ``logits_fn(model, batch) -> logits`` for the unlabelled forwards.

    Example:
        >>> uda = UDA(unlabelled_loader, alpha=1.0, temperature=0.4, threshold=0.8)
        >>> tricks = danlu.Tricks([uda])                    # composed
        >>> term = uda.term(model, next(iter(unlabelled_loader)))   # a hand-written loop
    """

    name = "uda"

    def __init__(
        self,
        unlabelled: Iterable[Any],
        alpha: float = 1.0,
        temperature: float = 0.4,
        threshold: float | None = 0.8,
        augment: Callable[[Any], Any] | None = None,
        *,
        tsa: Schedule | None = None,
        total_steps: int | None = None,
        num_classes: int | None = None,
        logits_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        target_key: str = "labels",
        target_fn: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(unlabelled, alpha, logits_fn)
        self.temperature = _check_temperature(temperature)
        self.threshold = None if threshold is None else check_probability("threshold", threshold)
        self.augment = augment
        if tsa is not None:
            if total_steps is None or num_classes is None:
                raise ValueError(
                    f"tsa={tsa!r} needs total_steps= (the planned optimizer steps) and "
                    "num_classes="
                )
            tsa_threshold(0, total_steps, num_classes, tsa)  # validates eagerly
        self.tsa, self.total_steps, self.num_classes = tsa, total_steps, num_classes
        self.replaces_loss = tsa is not None
        self.target_key, self.target_fn = target_key, target_fn

    def term(self, model: nn.Module, item: Any, state: State | None = None) -> torch.Tensor:
        """The consistency term on one unlabelled item (see ``unlabelled``)."""
        clean, aug = views(item, self.augment)
        return uda_loss(
            self.clean_logits(model, clean),
            self.logits_fn(model, aug),
            self.temperature,
            self.threshold,
        )

    def compute_loss(self, forward, batch: Any, state: State):
        if self.tsa is None:
            return super().compute_loss(forward, batch, state)
        _, logits = forward(batch)
        if logits is None:
            raise ValueError("UDA with tsa= needs loss_fn to return (loss, logits)")
        target = batch_field(batch, self.target_key, self.target_fn, "labels")
        eta = tsa_threshold(state.step, self.total_steps, self.num_classes, self.tsa)
        state.extra["tsa_threshold"] = eta
        sup = tsa_cross_entropy(logits, target, eta)
        term = self.term(state.model, self._item, state)
        state.extra[self.name] = term.detach()
        return sup + self.alpha * term, logits

    def __repr__(self) -> str:
        return (
            f"UDA(alpha={self.alpha}, temperature={self.temperature}, "
            f"threshold={self.threshold}, tsa={self.tsa!r})"
        )
