"""The final full-data epoch: continue a trained model for one epoch on train + dev at a
small learning rate, with a warmup-then-decay schedule set for that one epoch.

The recipe: pick the number of epochs and the lr on a dev split, train, then show the model
the dev examples too — one more epoch over ``ConcatDataset([train, dev])`` at about
0.1–0.3× the peak lr. There is no data left to check this last epoch on, so keep its
settings fixed in advance and compare the recipe once on a K-fold or a second split before
relying on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from danlu.core import LossFn, Tricks
from danlu.optim.schedules import Kind, warmup_schedule

__all__ = ["EpochSummary", "full_data_epoch"]


@dataclass
class EpochSummary:
    """What :func:`full_data_epoch` did.

    Attributes:
        steps: optimizer steps taken (``ceil(micro_batches / accumulate)`` unless fp16 skipped
            some).
        micro_batches: batches read from the loader.
        mean_loss: mean of the micro-batch losses.
        lrs: the first param group's lr used at each optimizer step.
    """

    steps: int
    micro_batches: int
    mean_loss: float
    lrs: list[float] = field(default_factory=list)


def _optimizer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer],
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        made = optimizer(model)
        if isinstance(made, torch.optim.Optimizer):
            return made
        raise TypeError(
            f"the optimizer factory must return a torch.optim.Optimizer, got {type(made).__name__}"
        )
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer or a factory model -> optimizer, got "
        f"{type(optimizer).__name__}"
    )


def full_data_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer],
    loader: Iterable[Any],
    loss_fn: LossFn,
    *,
    lr: float | None = None,
    warmup: float = 0.1,
    schedule: Kind = "linear",
    tricks: Tricks | None = None,
) -> EpochSummary:
    """Train ``model`` for exactly one pass over ``loader`` (train + dev) at a small lr.

    The lr of every param group follows ``warmup`` then a ``schedule`` decay
    (:func:`danlu.optim.schedules.warmup_schedule`) over this epoch's optimizer steps,
    ``ceil(len(loader) / tricks.accumulate)``; the last, partial accumulation window still
    steps. Groups keep their lr ratios (e.g. from layer-wise decay).

    Args:
        model: the trained model (put in train mode here; its mode is restored after).
        optimizer: the optimizer to continue with (its Adam moments carry over: the usual
            choice), or a factory ``model -> optimizer`` for a fresh one.
        loader: a sized iterable of batches (a ``DataLoader`` over train + dev).
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, logits)``, as for
            :class:`danlu.Tricks`.
        lr: peak lr of the largest param group for this epoch (the others are scaled with
            it); about 0.1–0.3× the peak lr of the main training. ``None`` keeps the
            optimizer's current lrs as the peak.
        warmup: fraction of the epoch's steps spent warming up, in [0, 1) (default 0.1;
            use more with a fresh optimizer, whose moments start at zero).
        schedule: ``"linear"`` (default) or ``"cosine"`` decay to 0, or ``"constant"``.
        tricks: a :class:`danlu.Tricks` to train with (accumulation, AMP, EMA, FGM …; its
            ``epoch_end`` runs at the end); by default plain steps.

    Returns:
        an :class:`EpochSummary`.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(10)]
        >>> def loss_fn(m, b):
        ...     return torch.nn.functional.cross_entropy(m(b[0]), b[1])
        >>> opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
        >>> summary = full_data_epoch(model, opt, data, loss_fn, lr=5e-6)
        >>> summary.steps, summary.lrs[1]
        (10, 5e-06)
    """
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(
            f"lr must be a finite number > 0 (or None to keep the optimizer's), got {lr!r}"
        )
    if not (isinstance(warmup, int | float) and 0 <= warmup < 1):
        raise ValueError(f"warmup must be a fraction of the epoch in [0, 1), got {warmup!r}")
    try:
        n_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"loader must have a length (a DataLoader or a list), got {type(loader).__name__}; "
            "the schedule needs the number of steps in advance"
        ) from None
    if n_batches < 1:
        raise ValueError("loader is empty: there is nothing to train on")
    tricks = tricks if tricks is not None else Tricks()
    if not isinstance(tricks, Tricks):
        raise TypeError(f"tricks must be a danlu.Tricks or None, got {type(tricks).__name__}")

    opt = _optimizer(model, optimizer)
    total = math.ceil(n_batches / tricks.accumulate)
    peak = max(g["lr"] for g in opt.param_groups)
    for g in opt.param_groups:
        if lr is not None:
            g["lr"] = g["lr"] * (lr / peak) if peak > 0 else float(lr)
        # A scheduler used earlier leaves "initial_lr"; a new LambdaLR would start from it
        # (setdefault) instead of this epoch's lr.
        g["initial_lr"] = g["lr"]
    sched = warmup_schedule(opt, schedule, int(warmup * total), total)

    was_training = model.training
    model.train()
    losses: list[float] = []
    lrs: list[float] = []
    steps = 0
    opt.zero_grad(set_to_none=True)  # no stale gradients from the main training
    try:
        for i, batch in enumerate(loader):
            current_lr = opt.param_groups[0]["lr"]
            boundary = (i + 1) % tricks.accumulate == 0 or i == n_batches - 1
            state = tricks.step(model, opt, batch, loss_fn, boundary=boundary)
            losses.append(float(state.loss))
            if state.stepped:
                lrs.append(current_lr)
                steps += 1
                sched.step()
        tricks.epoch_end()
    finally:
        model.train(was_training)
    return EpochSummary(steps, len(losses), sum(losses) / max(1, len(losses)), lrs)
