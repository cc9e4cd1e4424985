"""Warmup learning-rate schedules as ``torch.optim.lr_scheduler.LambdaLR`` factories, and
the :class:`Schedule` trick that steps any torch scheduler after each real optimizer step.

Each factory multiplies every param group's own initial lr, so per-group lrs (e.g. from
layer-wise decay) keep their ratios.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from danlu._checks import check_int, check_number
from danlu.core import Order, State, Trick

__all__ = [
    "warmup_factor",
    "linear_warmup",
    "cosine_warmup",
    "constant_warmup",
    "warmup_schedule",
    "Schedule",
]

Kind = Literal["linear", "cosine", "constant"]


def _check(warmup_steps: int, total_steps: int | None, kind: str, min_factor: float) -> None:
    if kind not in ("linear", "cosine", "constant"):
        raise ValueError(f"kind must be 'linear', 'cosine' or 'constant', got {kind!r}")
    check_int("warmup_steps", warmup_steps, 0, fix="count optimizer steps, e.g. 6% of total_steps")
    if kind != "constant":
        check_int("total_steps", total_steps, 1, fix=f"a {kind} schedule needs the number of steps")
        if warmup_steps > total_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})"
            )
    check_number("min_factor", min_factor, 0.0, 1.0, fix="the final lr as a fraction of the peak")


def warmup_factor(
    step: int,
    kind: Kind,
    warmup_steps: int,
    total_steps: int | None = None,
    min_factor: float = 0.0,
) -> float:
    """The lr multiplier at ``step`` (0-based count of optimizer steps done).

    linear: ramps 0→1 over ``warmup_steps`` then decays linearly to ``min_factor`` at
    ``total_steps``; cosine: same ramp then half a cosine to ``min_factor``; constant: ramp
    then 1.

    Example:
        >>> warmup_factor(5, "linear", warmup_steps=10, total_steps=110)
        0.5
    """
    check_int("step", step, 0, fix="the number of optimizer steps done (0 at the start)")
    _check(warmup_steps, total_steps, kind, min_factor)
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        shape = 1.0 - progress
    else:  # cosine (kind checked by _check)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_factor + (1.0 - min_factor) * shape


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    kind: Kind,
    warmup_steps: int,
    total_steps: int | None = None,
    min_factor: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` with linear warmup followed by a ``kind`` decay (see :func:`warmup_factor`).

    Example:
        >>> opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=2e-5)
        >>> sched = warmup_schedule(opt, "cosine", warmup_steps=100, total_steps=1000)
    """
    _check(warmup_steps, total_steps, kind, min_factor)
    return LambdaLR(
        optimizer, lambda s: warmup_factor(s, kind, warmup_steps, total_steps, min_factor)
    )


def linear_warmup(optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0):
    """Linear warmup then linear decay to ``min_factor`` (BERT's default schedule)."""
    return warmup_schedule(optimizer, "linear", warmup_steps, total_steps, min_factor)


def cosine_warmup(optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0):
    """Linear warmup then cosine decay to ``min_factor``."""
    return warmup_schedule(optimizer, "cosine", warmup_steps, total_steps, min_factor)


def constant_warmup(optimizer, warmup_steps: int):
    """Linear warmup then a constant lr."""
    return warmup_schedule(optimizer, "constant", warmup_steps)


class Schedule(Trick):
    """Step a torch lr scheduler after every optimizer step that really happened (an fp16
    step skipped by the GradScaler does not advance it).

    Example:
        >>> from danlu import Tricks
        >>> opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=2e-5)
        >>> sched = linear_warmup(opt, warmup_steps=100, total_steps=1000)
        >>> tricks = Tricks([Schedule(sched)])
    """

    order = Order.SCHEDULE

    def __init__(self, scheduler: LRScheduler) -> None:
        if not hasattr(scheduler, "step") or not hasattr(scheduler, "state_dict"):
            raise TypeError(
                f"Schedule takes a torch.optim.lr_scheduler scheduler, got {type(scheduler).__name__}"
            )
        self.scheduler = scheduler

    def after_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.scheduler.load_state_dict(state_dict["scheduler"])

    def __repr__(self) -> str:
        return f"Schedule({type(self.scheduler).__name__})"
