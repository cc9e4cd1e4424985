"""danlu tricks inside Lightning (extra ``lightning``; written for ``lightning`` 2.x).

Automatic optimisation (step-level tricks: EMA, SWA, clipping, schedules, monitors)::

    trainer = L.Trainer(callbacks=[DanluCallback([EMA(model, decay=0.999)])],
                        accumulate_grad_batches=4, precision="bf16-mixed")

``before_step`` runs on ``on_before_optimizer_step`` (Lightning has unscaled fp16 gradients
there and clips after it), ``after_step`` on ``on_train_batch_end`` only when an optimizer
step happened and the GradScaler did not skip it (under :func:`manual_step`: right after
``optimizer.step()``), ``on_epoch_end`` on
``on_train_epoch_end``; the tricks' state is saved in Lightning checkpoints. With
``average=ema`` (or an ``SWA``) validation and test loops see the averaged weights.

Adversarial training and loss wrappers (FGM, PGD, AWP, R-Drop, focal, mixup) need the
backward pass, which Lightning's automatic optimisation keeps to itself: use manual
optimisation and :func:`manual_step`, which runs danlu's micro-batch hooks with
``self.manual_backward`` and steps the optimizer every ``accumulate`` micro-batches and on
the epoch's last batch (a partial window: the mean over its micro-batches)::

    class Module(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net, self.automatic_optimization = net, False

        def training_step(self, batch, batch_idx):
            state = manual_step(self, batch, loss_fn)   # loss_fn(module, batch) -> loss
            self.log("loss", state.loss)

    trainer = L.Trainer(callbacks=[DanluCallback(danlu.Tricks([FGM(net), EMA(net)],
                                                              accumulate=2))])
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from danlu._optional import require
from danlu.core import LossFn, State, Trick, Tricks
from danlu.integrations._average import averaged_weights, check_average

_pl = require("lightning.pytorch", "lightning", "the Lightning integration")

__all__ = ["DanluCallback", "manual_step"]

_MICRO_HOOKS = ("on_batch", "compute_loss", "after_backward")


def _micro_hooks(trick: Trick) -> list[str]:
    return [h for h in _MICRO_HOOKS if getattr(type(trick), h) is not getattr(Trick, h)]


def _scaler(trainer: Any) -> torch.amp.GradScaler | None:
    return getattr(trainer.precision_plugin, "scaler", None)


class DanluCallback(_pl.Callback):
    """Run danlu tricks in a Lightning ``Trainer``.

    Under automatic optimisation only step-level tricks are allowed (accumulation is
    ``Trainer(accumulate_grad_batches=...)``); under manual optimisation, call
    :func:`manual_step` in ``training_step`` and every hook runs (accumulation is
    ``Tricks(..., accumulate=k)``). Mixed precision is always Lightning's ``precision=``.

    Args:
        tricks: danlu ``Trick`` s, or a ``Tricks`` (for ``accumulate`` under manual
            optimisation; its ``amp`` must be None).
        average: a danlu ``EMA`` or ``SWA``: validation and test loops run with its
            averaged weights (swapped in at the loop's start, restored at its end).

    Example:
        >>> ema = EMA(model.net, decay=0.999)
        >>> trainer = L.Trainer(max_epochs=3, callbacks=[DanluCallback([ema], average=ema)])
        >>> trainer.fit(model, loader, val_loader)        # validation sees the EMA weights
        >>> with ema.averaged():
        ...     torch.save(model.net.state_dict(), "ema.pt")
    """

    def __init__(self, tricks: Tricks | Sequence[Trick], average: Any = None) -> None:
        check_average(average)
        self.average = average
        self._swap: contextlib.ExitStack | None = None
        self.tricks = tricks if isinstance(tricks, Tricks) else Tricks(tricks)
        if self.tricks.amp is not None:
            raise ValueError(
                f"Lightning owns mixed precision, but {self.tricks!r} sets amp: use "
                "Trainer(precision='bf16-mixed' / '16-mixed') and Tricks(..., amp=None)"
            )
        self._steps_seen = 0
        self._scale: float | None = None
        self._manual = False

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._manual = not pl_module.automatic_optimization
        if not self._manual:
            needs = {repr(t): _micro_hooks(t) for t in self.tricks if _micro_hooks(t)}
            if needs:
                raise ValueError(
                    f"{needs} need the forward/backward pass, which automatic optimisation "
                    "does not expose: set self.automatic_optimization = False and call "
                    "danlu.integrations.lightning.manual_step(self, batch, loss_fn) in "
                    "training_step"
                )
            if self.tricks.accumulate != 1:
                raise ValueError(
                    f"under automatic optimisation use Trainer(accumulate_grad_batches="
                    f"{self.tricks.accumulate}) instead of Tricks(accumulate=...)"
                )
        st = self.tricks.state
        st.model = pl_module
        st.accumulate = self.tricks.accumulate if self._manual else trainer.accumulate_grad_batches
        self._steps_seen = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._manual:
            self.tricks.state.is_boundary = self.tricks.state.stepped = False

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer) -> None:
        st = self.tricks.state
        scaler = _scaler(trainer)
        st.optimizer, st.scaler, st.is_boundary = optimizer, scaler, True
        self._scale = scaler.get_scale() if scaler is not None else None
        for trick in self.tricks:
            trick.before_step(optimizer, st)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._manual:  # manual_step has run after_step itself
            return
        self.tricks.state.micro_step += 1
        if trainer.global_step != self._steps_seen:
            self._after_optimizer_step(trainer)

    def _after_optimizer_step(self, trainer: Any) -> None:
        self._steps_seen = trainer.global_step
        scaler = _scaler(trainer)
        if scaler is not None and self._scale is not None and scaler.get_scale() < self._scale:
            return  # the GradScaler skipped this step (inf/nan gradients)
        st = self.tricks.state
        st.stepped = True
        st.step += 1
        for trick in self.tricks:
            trick.after_step(st.optimizer, st)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.tricks.epoch_end()

    def _swap_in(self, pl_module: Any) -> None:
        if self.average is not None and self._swap is None:
            self._swap = contextlib.ExitStack()
            self._swap.enter_context(averaged_weights(self.average, pl_module))

    def _swap_out(self) -> None:
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap.close()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._swap_out()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._swap_out()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._swap_out()

    def state_dict(self) -> dict[str, Any]:
        return self.tricks.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tricks.load_state_dict(state_dict)


def _callback(module: Any) -> DanluCallback:
    found = [cb for cb in module.trainer.callbacks if isinstance(cb, DanluCallback)]
    if len(found) != 1:
        raise ValueError(
            f"manual_step needs exactly one DanluCallback in Trainer(callbacks=...), found "
            f"{len(found)}"
        )
    return found[0]


def manual_step(
    module: Any, batch: Any, loss_fn: LossFn, *, boundary: bool | None = None
) -> State:
    """One micro-batch of danlu's hooks under Lightning manual optimisation.

    Runs ``on_batch``, the ``compute_loss`` chain around ``loss_fn(module, batch)``,
    ``module.manual_backward(loss / accumulate)``, every ``after_backward(closure, state)``
    (FGM, PGD, AWP: ``closure()`` re-runs the chain and the same backward), and at the end of
    each accumulation window ``optimizer.step()``, ``after_step`` (unless the GradScaler
    skipped the step) and ``zero_grad()``. A window ends after ``accumulate`` micro-batches
    or on the epoch's last batch (``trainer.is_last_batch``), whose partial window of m
    micro-batches steps with the mean over those m, so no gradient leaks into the next
    epoch; ``before_step`` runs from the ``DanluCallback`` on
    Lightning's ``on_before_optimizer_step``, after its fp16 unscale. Call it from ``training_step`` with
    ``self.automatic_optimization = False``; the tricks and ``accumulate`` come from the
    trainer's :class:`DanluCallback`. Under DDP the gradients are synchronised on every
    micro-batch (correct, not the fastest).

    Args:
        module: the ``LightningModule`` (one optimizer).
        batch: the batch ``training_step`` received.
        loss_fn: ``loss_fn(module, batch) -> loss`` or ``(loss, logits)``, mean-reduced.
        boundary: force (``True``) or suppress (``False``) the optimizer step after this
            micro-batch; ``None``: every ``accumulate`` micro-batches and on the epoch's
            last batch.

    Returns:
        the danlu :class:`~danlu.State` (``loss``, ``logits``, ``step``, ``stepped``).

    Example:
        >>> def training_step(self, batch, batch_idx):
        ...     state = manual_step(self, batch, lambda m, b: F.cross_entropy(m(b["x"]), b["y"]))
        ...     self.log("train_loss", state.loss)
    """
    if module.automatic_optimization:
        raise ValueError(
            "manual_step needs manual optimisation: set self.automatic_optimization = False "
            "in the LightningModule's __init__"
        )
    callback = _callback(module)
    tricks = callback.tricks
    optimizer = module.optimizers()
    if isinstance(optimizer, list):
        raise ValueError(f"manual_step drives one optimizer, the module has {len(optimizer)}")
    st = tricks.state
    st.model, st.optimizer, st.scaler = module, optimizer.optimizer, _scaler(module.trainer)
    if boundary is None and module.trainer.is_last_batch:
        boundary = True
    st.is_boundary = tricks.window_ends(boundary)
    st.stepped = False
    for trick in tricks:
        batch = trick.on_batch(batch, st)
    weight = 1.0 / tricks.accumulate
    tricks.forward_backward(
        module, batch, loss_fn, lambda loss: module.manual_backward(loss * weight)
    )
    if st.is_boundary:
        # the window's mean over its micro-batches (Lightning's fp16 unscale inside step()
        # is linear, so rescaling the scaled gradients first is the same)
        tricks.close_window(optimizer.optimizer)
        optimizer.step()
        callback._after_optimizer_step(module.trainer)
        optimizer.zero_grad(set_to_none=True)
    return st
