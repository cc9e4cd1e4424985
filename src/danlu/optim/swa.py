"""Stochastic Weight Averaging as a thin :class:`~danlu.Trick` over ``torch.optim.swa_utils``.

The averaging is ``AveragedModel`` (equal weights), the lr switch is ``SWALR`` and the
BatchNorm refresh is ``update_bn``; this module only decides *when* they run.
Paper: Izmailov et al. 2018, https://arxiv.org/abs/1803.05407
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from danlu.core import Order, State, Trick, unwrap_model

__all__ = ["SWA"]


def _check_start(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")


class SWA(Trick):
    """Average the weights seen after ``start_epoch`` (at each epoch end) or ``start_step``
    (every ``every`` optimizer steps) with ``torch.optim.swa_utils.AveragedModel``, and
    anneal the lr to ``swa_lr`` with ``SWALR``.

    Exactly one of ``start_epoch`` / ``start_step`` is given; it counts completed epochs
    (``state.epoch``) or real optimizer steps (``state.step``), so skipped fp16 steps do not
    count. ``SWALR`` is created when averaging starts and stepped once per average, so
    ``anneal`` is in the same unit as the start. The averaged model is ``swa.averaged``; after
    training call :meth:`update_bn` for models with BatchNorm (not needed for LayerNorm).

    Args:
        model: the model (DDP-wrapped is fine: the inner module is averaged).
        optimizer: the optimizer whose lr ``SWALR`` anneals; ignored when ``swa_lr`` is None.
        swa_lr: the constant lr of the averaging phase, e.g. 0.5–1× the peak lr for SGD,
            a few times smaller for AdamW fine-tuning; ``None`` leaves the lr alone (then
            another schedule may keep running).
        start_epoch: average at the end of every epoch from this one on (1-based).
        start_step: average every ``every`` steps from this step on (1-based).
        anneal: epochs/steps of the anneal to ``swa_lr`` (0 switches at once).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        every: averaging period in steps (only with ``start_step``).

    Example:
        >>> import torch, danlu
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> swa = SWA(model, opt, swa_lr=0.05, start_epoch=3, anneal=2)
        >>> tricks = danlu.Tricks([swa])
        >>> # ... train, calling tricks.epoch_end() after each epoch; then
        >>> # swa.update_bn(train_loader); evaluate swa.averaged
    """

    order = Order.AVERAGE

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        swa_lr: float | None = None,
        *,
        start_epoch: int | None = None,
        start_step: int | None = None,
        anneal: int = 0,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        every: int = 1,
    ) -> None:
        _check_start("start_epoch", start_epoch)
        _check_start("start_step", start_step)
        if (start_epoch is None) == (start_step is None):
            raise ValueError(
                f"give exactly one of start_epoch or start_step, got start_epoch={start_epoch!r},"
                f" start_step={start_step!r}"
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if isinstance(anneal, bool) or not isinstance(anneal, int) or anneal < 0:
            raise ValueError(f"anneal must be an integer >= 0 (epochs or steps), got {anneal!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if swa_lr is not None:
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"swa_lr={swa_lr!r} needs the optimizer whose lr to anneal, got "
                    f"{type(optimizer).__name__}"
                )
            if isinstance(swa_lr, bool) or not isinstance(swa_lr, int | float) or not swa_lr > 0:
                raise ValueError(f"swa_lr must be a number > 0 or None, got {swa_lr!r}")
        self.model = unwrap_model(model)
        if next(self.model.parameters(), None) is None:
            raise ValueError(
                f"{type(self.model).__name__} has no parameters: there is nothing to average"
            )
        self.averaged = AveragedModel(self.model)
        self.optimizer, self.swa_lr = optimizer, swa_lr
        self.start_epoch, self.start_step, self.every = start_epoch, start_step, every
        self.anneal, self.anneal_strategy = anneal, anneal_strategy
        self.scheduler: SWALR | None = None

    def _make_scheduler(self) -> SWALR:
        # SWALR's constructor already steps once (with anneal=0 it sets swa_lr at once):
        # only create it when averaging starts.
        return SWALR(
            self.optimizer,
            swa_lr=self.swa_lr,
            anneal_epochs=self.anneal,
            anneal_strategy=self.anneal_strategy,
        )

    def update(self) -> None:
        """Average the current weights in and step ``SWALR`` (what the hooks call; use it
        directly in a hand-written loop)."""
        self.averaged.update_parameters(self.model)
        if self.swa_lr is None:
            return
        if self.scheduler is not None:
            self.scheduler.step()
            return
        self.scheduler = self._make_scheduler()
        with warnings.catch_warnings():  # created after the optimizer stepped: a false alarm
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()

    def after_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        start = self.start_step
        if start is not None and state.step >= start and (state.step - start) % self.every == 0:
            self.update()

    def on_epoch_end(self, state: State) -> None:
        if self.start_epoch is not None and state.epoch >= self.start_epoch:
            self.update()

    def update_bn(self, loader: Iterable[Any], device: torch.device | str | None = None) -> None:
        """Recompute the averaged model's BatchNorm statistics with one pass over ``loader``
        (``torch.optim.swa_utils.update_bn``; batches are tensors or (input, ...) tuples)."""
        update_bn(loader, self.averaged, device=device)

    @property
    def n_averaged(self) -> int:
        """How many weight snapshots are in the average."""
        return int(self.averaged.n_averaged)

    def state_dict(self) -> dict[str, Any]:
        return {
            "averaged": self.averaged.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state_dict["averaged"])
        if state_dict["scheduler"] is None:
            self.scheduler = None
            return
        if self.swa_lr is None:
            raise ValueError("state_dict holds an SWALR state but this SWA has swa_lr=None")
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler = self._make_scheduler()
        for group, lr in zip(self.optimizer.param_groups, lrs):  # keep the loaded lrs
            group["lr"] = lr
        self.scheduler.load_state_dict(state_dict["scheduler"])

    def __repr__(self) -> str:
        start = (
            f"start_epoch={self.start_epoch}"
            if self.start_epoch
            else f"start_step={self.start_step}"
        )
        return f"SWA({start}, swa_lr={self.swa_lr}, anneal={self.anneal})"
