"""Snapshot ensembles (Huang et al. 2017, https://arxiv.org/abs/1704.00109): cosine
annealing with warm restarts, a snapshot of the weights at the end of every cycle (where the
lr is lowest), and prediction averaging over the snapshots.

The schedule is torch's ``CosineAnnealingWarmRestarts``, stepped after every *real*
optimizer step (an fp16 step skipped by the GradScaler advances neither the schedule nor
the snapshot count). The snapshots are ordinary state_dicts (in memory) or
``torch.save`` files, so the same list feeds :func:`ensemble_predict` (average the
predictions) and :func:`danlu.optim.average_checkpoints` (average the weights).

SWA with a cyclic lr (Izmailov et al. 2018) is the weight-averaging twin: add
``danlu.optim.SWA(model, start_step=cycle_steps, every=cycle_steps)`` (``swa_lr=None``) beside
a ``SnapshotEnsemble`` with ``cycle_mult=1``; it averages the same end-of-cycle weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from danlu.core import Order, State, Trick, unwrap_model
from danlu.kfold import Method, _as_logits, ensemble
from danlu.optim.fma import Checkpoint, _load, _name

__all__ = ["cycle_ends", "snapshot_schedule", "SnapshotEnsemble", "ensemble_predict"]


def _check_cycle(cycle_steps: Any, cycle_mult: Any) -> None:
    if isinstance(cycle_steps, bool) or not isinstance(cycle_steps, int) or cycle_steps < 1:
        raise ValueError(
            f"cycle_steps must be an integer >= 1 (optimizer steps per cycle), got {cycle_steps!r}"
        )
    if isinstance(cycle_mult, bool) or not isinstance(cycle_mult, int) or cycle_mult < 1:
        raise ValueError(
            f"cycle_mult must be an integer >= 1 (each cycle is cycle_mult times longer than "
            f"the last; torch's T_mult), got {cycle_mult!r}"
        )


def cycle_ends(cycle_steps: int, n_cycles: int, cycle_mult: int = 1) -> list[int]:
    """The optimizer-step counts at which the first ``n_cycles`` cycles end (the snapshot
    steps): ``T, T + T*m, T + T*m + T*m^2, ...``.

    Example:
        >>> cycle_ends(10, 3), cycle_ends(10, 3, cycle_mult=2)
        ([10, 20, 30], [10, 30, 70])
    """
    _check_cycle(cycle_steps, cycle_mult)
    ends, total, length = [], 0, cycle_steps
    for _ in range(n_cycles):
        total += length
        ends.append(total)
        length *= cycle_mult
    return ends


def snapshot_schedule(
    optimizer: torch.optim.Optimizer, cycle_steps: int, cycle_mult: int = 1, min_lr: float = 0.0
) -> CosineAnnealingWarmRestarts:
    """torch's ``CosineAnnealingWarmRestarts`` counted in optimizer steps: each param group's
    lr falls from its initial value to ``min_lr`` over a cycle, then restarts.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> sched = snapshot_schedule(opt, cycle_steps=4)
    """
    _check_cycle(cycle_steps, cycle_mult)
    if isinstance(min_lr, bool) or not isinstance(min_lr, int | float) or min_lr < 0:
        raise ValueError(f"min_lr must be a number >= 0, got {min_lr!r}")
    return CosineAnnealingWarmRestarts(
        optimizer, T_0=cycle_steps, T_mult=cycle_mult, eta_min=float(min_lr)
    )


class SnapshotEnsemble(Trick):
    """Cosine annealing with warm restarts and a snapshot of the weights at every cycle end.

    Args:
        model: the model (DDP-wrapped is fine: the inner module is saved).
        optimizer: the optimizer whose lr is scheduled.
        cycle_steps: optimizer steps in the first cycle (>= 1); e.g. ``total_steps //
            n_snapshots``.
        cycle_mult: growth factor of the cycle length (torch's ``T_mult``, default 1).
        min_lr: the lr at the end of each cycle (default 0).
        out_dir: save snapshots as ``out_dir/snapshot_{k}.pt`` instead of keeping them in
            memory (the directory is created).
        trainable_only: leave the frozen parameters (a LoRA model's base) out of the
            snapshots (default); load them with ``strict=False``.

    Example:
        >>> import danlu
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> snap = SnapshotEnsemble(model, opt, cycle_steps=2)   # e.g. total_steps // 5
        >>> tricks = danlu.Tricks([snap])
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
        >>> for _ in range(6):
        ...     _ = tricks.step(model, opt, (x, y), loss_fn)
        >>> len(snap.snapshots)                    # steps 2, 4 and 6 ended a cycle
        3
        >>> probs = ensemble_predict(model, snap.snapshots, lambda m: m(x))  # average predictions
        >>> from danlu.optim import average_checkpoints                      # or the weights
        >>> model.load_state_dict(average_checkpoints(snap.snapshots))
        <All keys matched successfully>
    """

    order = Order.SCHEDULE

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cycle_steps: int,
        *,
        cycle_mult: int = 1,
        min_lr: float = 0.0,
        out_dir: str | os.PathLike | None = None,
        trainable_only: bool = True,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
        if not isinstance(trainable_only, bool):
            raise TypeError(f"trainable_only must be True or False, got {trainable_only!r}")
        self.scheduler = snapshot_schedule(optimizer, cycle_steps, cycle_mult, min_lr)
        self.model = unwrap_model(model)
        self.cycle_steps, self.cycle_mult = cycle_steps, cycle_mult
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.trainable_only = trainable_only
        self.snapshots: list[dict[str, torch.Tensor] | Path] = []

    def is_cycle_end(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based count of real steps) ends a cycle."""
        length, end = self.cycle_steps, self.cycle_steps
        while end < step:
            length *= self.cycle_mult
            end += length
        return end == step

    def snapshot(self) -> None:
        """Keep the model's current weights (on the CPU, or on disk with ``out_dir``)."""
        sd = {
            k: v.detach().to("cpu", copy=True)
            for k, v in self.model.state_dict(keep_vars=True).items()
            if not (self.trainable_only and isinstance(v, nn.Parameter) and not v.requires_grad)
        }
        if self.out_dir is None:
            self.snapshots.append(sd)
            return
        path = self.out_dir / f"snapshot_{len(self.snapshots)}.pt"
        torch.save(sd, path)
        self.snapshots.append(path)

    def update(self, step: int) -> None:
        """Advance the schedule after real optimizer step number ``step`` (1-based) and take
        the snapshot when it ends a cycle (what the hook calls; call it yourself in a
        hand-written loop, only after steps that happened)."""
        self.scheduler.step()
        if self.is_cycle_end(step):
            self.snapshot()

    def after_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        self.update(state.step)

    def state_dict(self) -> dict[str, Any]:
        snaps = [str(s) if isinstance(s, Path) else s for s in self.snapshots]
        return {"scheduler": self.scheduler.state_dict(), "snapshots": snaps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict["scheduler"])
        self.snapshots = [
            Path(s) if isinstance(s, str) else dict(s) for s in state_dict["snapshots"]
        ]

    def __repr__(self) -> str:
        return (
            f"SnapshotEnsemble(cycle_steps={self.cycle_steps}, cycle_mult={self.cycle_mult}, "
            f"snapshots={len(self.snapshots)})"
        )


def ensemble_predict(
    model: nn.Module,
    checkpoints: Sequence[Checkpoint],
    predict_fn: Callable[[nn.Module], Any],
    method: Method = "mean_probs",
) -> np.ndarray:
    """Load each checkpoint into ``model``, predict, and combine the predictions; the model's
    own weights are restored afterwards (also on an error).

    A checkpoint may leave out parameters (a trainable-only snapshot): those keep the
    model's current values.

    Args:
        model: the architecture the checkpoints belong to.
        checkpoints: state_dicts and/or ``torch.save`` paths (e.g.
            ``SnapshotEnsemble.snapshots``, or fine-tuned runs with different seeds).
        predict_fn: ``predict_fn(model) -> logits`` ``(n, n_classes)`` on your data (e.g. a
            closure over :func:`~danlu.predict.predict` with ``activation="none"``).
        method: ``"mean_probs"`` (default; returns probabilities), ``"mean_logits"`` or
            ``"rank"`` (see :func:`danlu.kfold.ensemble`).

    Example:
        >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> probs = ensemble_predict(a, [a.state_dict(), b.state_dict()], lambda m: m(x))
        >>> probs.shape
        (4, 2)
    """
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("checkpoints is empty: give at least one state_dict or path")
    target = unwrap_model(model)
    backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
    outputs = []
    try:
        for i, ckpt in enumerate(checkpoints):
            where = _name(ckpt, i)
            _, unexpected = target.load_state_dict(_load(ckpt, where), strict=False)
            if unexpected:
                raise ValueError(
                    f"{where} has keys this model does not: {sorted(unexpected)}; is it a "
                    "checkpoint of another architecture?"
                )
            with torch.no_grad():
                outputs.append(_as_logits(predict_fn(model), "logits", f"prediction of {where}"))
    finally:
        target.load_state_dict(backup)
    return ensemble(np.stack(outputs), method)
