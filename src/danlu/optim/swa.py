"""Stochastic Weight Averaging as a thin :class:`~danlu.Trick` over ``torch.optim.swa_utils``.

The averaging is ``AveragedModel`` (equal weights), the lr switch is ``SWALR`` and the
BatchNorm refresh is ``update_bn``; this module only decides *when* they run, keeps the
per-group lr ratios (layer decay) under ``SWALR``, and averages only the trainable
parameters (a LoRA model's adapters) unless told otherwise.
Paper: Izmailov et al. 2018, https://arxiv.org/abs/1803.05407
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_swa_multi_avg_fn, update_bn

from danlu.core import Order, State, Trick, unwrap_model

__all__ = ["SWA"]


def _check_start(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")


_Slot = tuple[str, str, nn.Parameter]  # (module name, parameter name, frozen parameter)


def _skip_shared(avg_fn: Callable[..., None]) -> Callable[..., None]:
    """A ``multi_avg_fn`` that leaves out pairs sharing storage (the frozen parameters the
    averaged copy shares with the model: their average is themselves)."""

    def multi_avg(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        pairs = [(a, c) for a, c in zip(averaged, current) if a.data_ptr() != c.data_ptr()]
        if pairs:
            avg_fn([a for a, _ in pairs], [c for _, c in pairs], n_averaged)

    return multi_avg


@torch.no_grad()
def _averaged_model(model: nn.Module, slots: list[_Slot]) -> AveragedModel:
    """``AveragedModel(model)`` whose copy *shares* the frozen parameters in ``slots`` with
    ``model`` instead of deep-copying them, so a LoRA model costs one copy of its adapters.
    The frozen slots are emptied (set to ``None``, keeping their order) only while
    ``AveragedModel`` deep-copies the model."""
    if not slots:
        return AveragedModel(model)
    modules = dict(model.named_modules())
    try:
        for mod_name, name, _ in slots:
            modules[mod_name]._parameters[name] = None
        averaged = AveragedModel(model, multi_avg_fn=_skip_shared(get_swa_multi_avg_fn()))
    finally:
        for mod_name, name, p in slots:
            modules[mod_name]._parameters[name] = p
    for mod_name, name, p in slots:
        averaged.module.get_submodule(mod_name)._parameters[name] = p
    return averaged


class SWA(Trick):
    """Average the weights seen after ``start_epoch`` (at each epoch end) or ``start_step``
    (every ``every`` optimizer steps) with ``torch.optim.swa_utils.AveragedModel``, and
    anneal the lr to ``swa_lr`` with ``SWALR``.

    Exactly one of ``start_epoch`` / ``start_step`` is given; it counts completed epochs
    (``state.epoch``) or real optimizer steps (``state.step``), so skipped fp16 steps do not
    count. ``SWALR`` is created when averaging starts and stepped once per average, so
    ``anneal`` is in the same unit as the start. The averaged model is ``swa.averaged``; after
    training call :meth:`update_bn` for models with BatchNorm (not needed for LayerNorm).

    ``SWALR`` is given one lr per param group: ``swa_lr`` for the group with the largest lr
    when averaging starts, and the same ratio as before for the others, so layer-wise lr
    decay survives the switch (plain ``SWALR(opt, swa_lr=x)`` sets every group to ``x``).

    With ``trainable_only`` (default) the parameters without ``requires_grad`` (a LoRA
    model's frozen base) are shared between the model and ``swa.averaged``, not copied nor
    averaged: the extra memory and :meth:`state_dict` hold the trainable parameters only.

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
        trainable_only: average only the parameters with ``requires_grad`` at construction
            (default); ``False`` copies and averages all of them.

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
        trainable_only: bool = True,
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
        if not isinstance(trainable_only, bool):
            raise TypeError(f"trainable_only must be True or False, got {trainable_only!r}")
        self.model = unwrap_model(model)
        if next(self.model.parameters(), None) is None:
            raise ValueError(
                f"{type(self.model).__name__} has no parameters: there is nothing to average"
            )
        if any(hasattr(p, "device_mesh") for p in self.model.parameters()):
            raise ValueError(
                "SWA keeps its average in AveragedModel, a deep copy of the model, and FSDP2 "
                "refuses to be copied ('FSDP does not support deepcopy'); use EMA, which "
                "averages each rank's shard in place (EMA.full_state_dict() gathers it)"
            )
        slots = [
            (mod_name, name, p)
            for mod_name, mod in self.model.named_modules()
            for name, p in mod._parameters.items()
            if trainable_only and p is not None and not p.requires_grad
        ]
        if slots and not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(
                f"{type(self.model).__name__} has no parameter with requires_grad=True, so "
                "trainable_only=True leaves nothing to average: pass trainable_only=False"
            )
        self.averaged = _averaged_model(self.model, slots)
        self.trainable_only = trainable_only
        frozen = {id(p) for _, _, p in slots}
        self._shared = {f"module.{n}" for n, p in self.model.named_parameters(
            remove_duplicate=False) if id(p) in frozen}  # fmt: skip
        self.optimizer, self.swa_lr = optimizer, swa_lr
        self.start_epoch, self.start_step, self.every = start_epoch, start_step, every
        self.anneal, self.anneal_strategy = anneal, anneal_strategy
        self.scheduler: SWALR | None = None

    def _make_scheduler(self) -> SWALR:
        # SWALR's constructor already steps once (with anneal=0 it sets swa_lr at once):
        # only create it when averaging starts. One swa_lr per group keeps the lr ratios.
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        top = max(lrs)
        return SWALR(
            self.optimizer,
            swa_lr=[self.swa_lr * (lr / top) for lr in lrs] if top > 0 else self.swa_lr,
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
        """The averaged parameters (without the shared frozen ones), buffers, count and the
        ``SWALR`` state."""
        averaged = {k: v for k, v in self.averaged.state_dict().items() if k not in self._shared}
        return {
            "averaged": averaged,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing, unexpected = self.averaged.load_state_dict(state_dict["averaged"], strict=False)
        missing = sorted(set(missing) - self._shared)
        if missing or unexpected:
            raise ValueError(
                f"SWA state_dict does not fit this model: missing {missing}, unexpected "
                f"{sorted(unexpected)} (was it saved with another trainable_only?)"
            )
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
        return (
            f"SWA({start}, swa_lr={self.swa_lr}, anneal={self.anneal}, "
            f"trainable_only={self.trainable_only})"
        )
