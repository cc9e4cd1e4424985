"""The final full-data epoch: continue a trained model for one epoch on train + dev at a
small learning rate, with a warmup-then-decay schedule set for that one epoch.

The recipe: pick the number of epochs and the lr on a dev split, train, then show the model
the dev examples too — one more epoch over ``ConcatDataset([train, dev])`` at about
0.1–0.3× the peak lr. There is no data left to check this last epoch on, so keep its
settings fixed in advance and compare the recipe once on a K-fold or a second split before
relying on it.

Incremental training is the other reuse of a trained model: when new labelled data arrives,
continue from your own fine-tuned checkpoint on the new data only
(:func:`incremental_train`, with :func:`save_training_state` at the end of the first run)
instead of retraining on everything. It is cheap, but the model drifts towards the new data:
keep a dev set of the old distribution and retrain from scratch on all data when it drops.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from danlu.core import LossFn, Tricks
from danlu.optim.schedules import Kind, warmup_schedule

__all__ = ["EpochSummary", "full_data_epoch", "save_training_state", "incremental_train"]


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
    return _train_epochs(model, optimizer, loader, loss_fn, 1, lr, warmup, schedule, tricks)[0]


def _train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer],
    loader: Iterable[Any],
    loss_fn: LossFn,
    epochs: int,
    lr: float | None,
    warmup: float,
    schedule: Kind,
    tricks: Tricks | None,
    peaks: list[float] | None = None,
) -> list[EpochSummary]:
    """``epochs`` passes over ``loader`` under one warmup + decay schedule; the groups' peak
    lrs are ``peaks`` (default their current lrs), all scaled so the largest is ``lr``."""
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(
            f"lr must be a finite number > 0 (or None to keep the optimizer's), got {lr!r}"
        )
    if not (isinstance(warmup, int | float) and 0 <= warmup < 1):
        raise ValueError(
            f"warmup must be a fraction of the epoch in [0, 1) (of all the steps over "
            f"several epochs), got {warmup!r}"
        )
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
    total = epochs * math.ceil(n_batches / tricks.accumulate)
    peaks = peaks if peaks is not None else [g["lr"] for g in opt.param_groups]
    top = max(peaks)
    for g, peak in zip(opt.param_groups, peaks):
        g["lr"] = float(lr) if lr is not None and top <= 0 else peak * (lr / top if lr else 1.0)
        # A scheduler used earlier leaves "initial_lr"; a new LambdaLR would start from it
        # (setdefault) instead of this run's lr.
        g["initial_lr"] = g["lr"]
    sched = warmup_schedule(opt, schedule, int(warmup * total), total)

    was_training = model.training
    model.train()
    summaries = []
    opt.zero_grad(set_to_none=True)  # no stale gradients from the main training
    try:
        for _ in range(epochs):
            losses: list[float] = []
            lrs: list[float] = []
            steps = 0
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
            summaries.append(EpochSummary(steps, len(losses), sum(losses) / len(losses), lrs))
    finally:
        model.train(was_training)
    return summaries


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tricks: Tricks | None = None,
) -> None:
    """Save what :func:`incremental_train` continues from: the model's ``state_dict``, the
    optimizer's (Adam moments, each group's ``initial_lr`` = the run's peak lr) and the
    tricks' (EMA shadow, counters). Save the *training* weights, not the EMA-applied ones:
    the EMA shadow is in the tricks' state.

    Example:
        >>> save_training_state("run1.pt", model, optimizer, tricks)   # doctest: +SKIP
    """
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "tricks": tricks.state_dict() if tricks is not None else None,
        },
        path,
    )


def incremental_train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Any],
    loss_fn: LossFn,
    *,
    checkpoint: str | Path | dict[str, Any] | None = None,
    epochs: int = 1,
    lr: float | None = None,
    warmup: float = 0.1,
    schedule: Kind = "linear",
    tricks: Tricks | None = None,
    optimizer_state: Literal["keep", "reset"] = "keep",
) -> list[EpochSummary]:
    """Continue training your own fine-tuned model on *new data only*.

    What is carried over and what is not:

    - weights: loaded from ``checkpoint`` (:func:`save_training_state`), or the model as
      passed when ``checkpoint`` is None;
    - optimizer: ``"keep"`` loads its state (Adam moments: the update sizes continue
      smoothly); ``"reset"`` drops the moments (use it when the new data differs a lot, and
      give it a warmup: fresh moments make the first steps large);
    - schedule: *not* resumed. The first run's schedule ended at (nearly) zero lr; a new
      warmup + ``schedule`` decay runs over this run's steps, peaking at ``lr``, by default
      the first run's peak (each group's ``initial_lr``, which keeps layer-decay ratios), not
      the decayed lr the optimizer ended with;
    - tricks (EMA shadow, SWA, counters): loaded from the checkpoint when it holds them, so
      the EMA keeps averaging across both runs; evaluate with its weights as before.

    Args:
        model: the model (same architecture as the checkpoint's).
        optimizer: the optimizer over ``model``'s parameters, built as in the first run.
        loader: a sized iterable over the new data only.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, logits)``.
        checkpoint: a path or dict from :func:`save_training_state`.
        epochs: passes over the new data (>= 1); 1–2 is usual.
        lr: peak lr of the largest group; ``None``: the first run's peak. A smaller one
            (0.3–0.5x) drifts less from what the model knows.
        warmup: fraction of this run's steps spent warming up, in [0, 1).
        schedule: ``"linear"``, ``"cosine"`` or ``"constant"`` after the warmup.
        tricks: the :class:`danlu.Tricks` of the first run, rebuilt (EMA over ``model``...).
        optimizer_state: ``"keep"`` (default) or ``"reset"``.

    Returns:
        one :class:`EpochSummary` per epoch.

    Example:
        >>> save_training_state("run1.pt", model, optimizer, tricks)          # doctest: +SKIP
        >>> incremental_train(model, optimizer, new_loader, loss_fn,          # doctest: +SKIP
        ...                   checkpoint="run1.pt", tricks=tricks)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if optimizer_state not in ("keep", "reset"):
        raise ValueError(f"optimizer_state must be 'keep' or 'reset', got {optimizer_state!r}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if checkpoint is not None:
        state = (
            checkpoint
            if isinstance(checkpoint, dict)
            else torch.load(checkpoint, weights_only=False)
        )
        missing = {"model", "optimizer", "tricks"} - set(state)
        if missing:
            raise ValueError(
                f"checkpoint lacks {sorted(missing)}: save it with save_training_state(path, "
                "model, optimizer, tricks)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["tricks"] is not None and tricks is None:
            warnings.warn(
                "the checkpoint holds the first run's tricks state (EMA shadow, counters) but "
                "tricks=None, so it is not used; pass the first run's Tricks, rebuilt",
                UserWarning,
                stacklevel=2,
            )
        elif state["tricks"] is not None:
            tricks.load_state_dict(state["tricks"])
    peaks = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    if optimizer_state == "reset":
        optimizer.state.clear()
    return _train_epochs(
        model, optimizer, loader, loss_fn, epochs, lr, warmup, schedule, tricks, peaks
    )
