"""danlu tricks inside ``transformers.Trainer`` (extra ``hf``; written for transformers 5.x).

Which Trainer hooks are used, and why:

- ``training_step`` is overridden (:class:`TricksMixin`). Adversarial tricks (FGM, PGD, AWP,
  FreeLB) must re-run forward + backward on the *same* micro-batch after the main backward,
  and loss wrappers (R-Drop, focal) must sit between the model and the backward. No
  ``TrainerCallback`` event fires there (callbacks see neither the loss nor the backward),
  so the override runs danlu's hooks for one micro-batch::

      batch = trick.on_batch(batch, state)
      loss, logits = chain(batch)         # compute_loss chain; innermost = Trainer.compute_loss
      accelerator.backward(loss * weight)
      trick.after_backward(closure, state)  # closure(): chain + the same weighted backward

- ``before_step`` / ``after_step`` / ``on_epoch_end`` run from :class:`TricksCallback` on
  ``on_pre_optimizer_step`` (gradients are unscaled there: Trainer always calls
  ``accelerator.clip_grad_norm_`` first), ``on_optimizer_step`` (only when accelerate did
  not skip the step, so a skipped fp16 step advances neither EMA nor ``state.step``) and
  ``on_epoch_end``. Alone, the callback serves a plain ``Trainer`` for step-level tricks.
- ``create_optimizer`` when ``param_groups=`` is given (layer-wise lr decay);
  ``evaluate`` / ``predict`` / ``save_model`` when ``average=`` is given (EMA / SWA weights);
  ``_save_checkpoint`` / ``_load_from_checkpoint`` / ``_load_best_model`` keep the tricks'
  state in ``danlu_tricks.pt`` beside each checkpoint, so ``resume_from_checkpoint``
  continues the EMA and ``load_best_model_at_end`` brings back the best checkpoint's EMA.

Loss scaling. The chain sees per-micro-batch *mean* losses (danlu's convention, so R-Drop
and the loss swaps compose); ``Trainer.compute_loss`` is therefore called without
``num_items_in_batch``. The backward weight is ``n_i / N`` (``n_i`` label items in this
micro-batch, ``N = num_items_in_batch`` of the whole accumulation window, as Trainer counts
them) when Trainer counts items, else ``1 / current_gradient_accumulation_steps``. For
token-mean losses this gives Trainer's own gradient; for losses that ignore
``num_items_in_batch`` (e.g. ``BertForSequenceClassification``) it gives the correct window
mean where transformers 5.23's ``Trainer`` sums micro-batch means (2x at accumulation 2).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from danlu._optional import require
from danlu.core import Trick, Tricks
from danlu.integrations._average import averaged_weights, check_average

_transformers = require("transformers", "hf", "the HF Trainer integration")
Trainer = _transformers.Trainer
TrainerCallback = _transformers.TrainerCallback

__all__ = ["TricksCallback", "TricksMixin", "DanluTrainer", "averaged_weights", "TRICKS_FILE"]

TRICKS_FILE = "danlu_tricks.pt"


def _as_tricks(tricks: Tricks | Sequence[Trick]) -> Tricks:
    if isinstance(tricks, Tricks):
        if tricks.accumulate != 1 or tricks.amp is not None:
            raise ValueError(
                f"the Trainer owns accumulation and mixed precision, but {tricks!r} sets "
                "accumulate/amp: use TrainingArguments(gradient_accumulation_steps=..., "
                "bf16=True / fp16=True) and pass Tricks([...]) with the defaults"
            )
        return tricks
    return Tricks(tricks)


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` wrapper."""
    accelerate_optimizer = require("accelerate.optimizer", "hf")
    if isinstance(optimizer, accelerate_optimizer.AcceleratedOptimizer):
        return optimizer.optimizer
    return optimizer


class _StepHooks(TrainerCallback):
    """Forwards Trainer's optimizer-step and epoch events to danlu's step-level hooks."""

    def __init__(self, tricks: Tricks | Sequence[Trick]) -> None:
        self.tricks = _as_tricks(tricks)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        st = self.tricks.state
        st.accumulate = args.gradient_accumulation_steps
        if model is not None and st.model is None:
            st.model = model
        if optimizer is not None:
            st.optimizer = _inner_optimizer(optimizer)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        st = self.tricks.state
        st.is_boundary, st.stepped = True, False
        opt = _inner_optimizer(optimizer)
        for trick in self.tricks:
            trick.before_step(opt, st)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if getattr(optimizer, "step_was_skipped", False):  # fp16 overflow: no real step
            return
        st = self.tricks.state
        st.stepped = True
        st.step += 1
        opt = _inner_optimizer(optimizer)
        for trick in self.tricks:
            trick.after_step(opt, st)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.tricks.epoch_end()


class TricksCallback(_StepHooks):
    """Run step-level danlu tricks (EMA, SWA, clipping, schedules, grad-norm monitors) in a
    plain ``transformers.Trainer``.

    ``before_step`` runs on ``on_pre_optimizer_step`` (after Trainer's own clipping, on
    unscaled gradients), ``after_step`` on ``on_optimizer_step`` only when the step was not
    skipped, ``on_epoch_end`` on ``on_epoch_end``. Tricks that need the forward or backward
    pass (FGM, R-Drop, focal, mixup) are refused: use :class:`DanluTrainer` for those.

    Args:
        tricks: danlu ``Trick`` s (or a ``Tricks`` without accumulate/amp).

    Example:
        >>> ema = EMA(model, decay=0.999)
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds,
        ...                   callbacks=[TricksCallback([ema])])
        >>> trainer.train()
        >>> with ema.averaged():
        ...     trainer.evaluate()
    """

    def __init__(self, tricks: Tricks | Sequence[Trick]) -> None:
        super().__init__(tricks)
        for trick in self.tricks:
            needs = [
                hook
                for hook in ("on_batch", "compute_loss", "after_backward")
                if getattr(type(trick), hook) is not getattr(Trick, hook)
            ]
            if needs:
                raise ValueError(
                    f"{trick!r} overrides {needs}, which a TrainerCallback cannot reach (it "
                    "sees neither the forward nor the backward): use "
                    "danlu.integrations.transformers.DanluTrainer(..., tricks=[...])"
                )


class TricksMixin:
    """Mix into any ``transformers.Trainer`` subclass to run danlu tricks in its loop.

    See the module docstring for which Trainer methods are overridden and why. Use it as
    ``class MyTrainer(TricksMixin, SomeTrainer)`` or take :class:`DanluTrainer`.

    Args:
        tricks: danlu ``Trick`` s (or a ``Tricks`` without accumulate/amp: the Trainer owns
            ``gradient_accumulation_steps`` and ``bf16``/``fp16``).
        param_groups: ``param_groups(model) -> list[dict]`` for the optimizer, e.g.
            ``lambda m: layer_decay_groups(m, lr=2e-5, decay=0.9)``; the optimizer class and
            its other kwargs still come from ``TrainingArguments.optim``. Per-group ``lr``
            values keep their ratios under Trainer's schedule (it scales each group).
        average: a danlu ``EMA`` or ``SWA`` (see :func:`averaged_weights`):
            ``evaluate``/``predict`` run with the averaged weights, and ``save_model``
            called by you saves them; checkpoints keep the live weights plus the average
            (in ``danlu_tricks.pt`` when ``average`` is one of ``tricks``).
        **kwargs: everything else goes to the Trainer.
    """

    def __init__(
        self,
        *args: Any,
        tricks: Tricks | Sequence[Trick] = (),
        param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
        average: Any = None,
        **kwargs: Any,
    ) -> None:
        if param_groups is not None and not callable(param_groups):
            raise TypeError(
                f"param_groups must be a callable model -> list of param-group dicts, got "
                f"{type(param_groups).__name__}"
            )
        check_average(average)
        self.danlu_callback = _StepHooks(tricks)
        self.tricks = self.danlu_callback.tricks
        self.param_groups, self.average = param_groups, average
        super().__init__(*args, **kwargs)
        self.add_callback(self.danlu_callback)

    # ------------------------------------------------------------------ one micro-batch
    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One micro-batch through danlu's hooks (Trainer.training_step's job, done so that
        ``after_backward`` closures can re-run forward + backward). Returns the weighted,
        detached loss, which Trainer sums over the window for logging."""
        cp_context, inputs = self._prepare_context_parallel_inputs(model, inputs)
        with cp_context():
            model.train()
            if callable(getattr(self.optimizer, "train", None)):
                self.optimizer.train()
            inputs = self._prepare_inputs(inputs)
            st = self.tricks.state
            st.model, st.optimizer = model, _inner_optimizer(self.optimizer)
            st.scaler = self.accelerator.scaler
            st.accumulate = self.args.gradient_accumulation_steps
            st.is_boundary, st.stepped = bool(self.accelerator.sync_gradients), False
            for trick in self.tricks:
                inputs = trick.on_batch(inputs, st)

            prescaled = getattr(self, "loss_is_scaled_for_ga", None) is True
            weight = 1.0 if prescaled else self._micro_weight(inputs, num_items_in_batch)
            count = num_items_in_batch if prescaled else None

            def hf_loss(m: nn.Module, batch: dict[str, Any]):
                loss, outputs = self.compute_loss(
                    m, dict(batch), return_outputs=True, num_items_in_batch=count
                )
                if loss.dim() > 0:  # DataParallel: one loss per device
                    loss = loss.mean()
                logits = outputs.get("logits") if isinstance(outputs, dict) else None
                return loss, logits

            backward_kwargs = {}
            if self.accelerator.distributed_type == "DEEPSPEED":
                backward_kwargs["scale_wrt_gas"] = False

            def backward(loss: torch.Tensor) -> None:
                self.accelerator.backward(loss * weight, **backward_kwargs)

            self.tricks.forward_backward(
                model, inputs, hf_loss, backward, self.compute_loss_context_manager
            )
            return (st.loss * weight).to(self.args.device)

    def _micro_weight(self, inputs: dict[str, Any], num_items_in_batch) -> float:
        """Backward weight of a mean micro-batch loss: n_i / N, or 1 / accumulation steps."""
        if num_items_in_batch is None or "labels" not in inputs:
            return 1.0 / self.current_gradient_accumulation_steps
        labels = inputs.get("shift_labels")
        if labels is None:
            labels = inputs["labels"][..., 1:] if self._loss_shifts_labels else inputs["labels"]
        weight = float(labels.ne(-100).sum()) / float(num_items_in_batch)
        if self.args.average_tokens_across_devices:  # N is summed over ranks, DDP averages
            weight *= self.accelerator.num_processes
        return weight

    # ------------------------------------------------------------------ optimizer groups
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, built on ``param_groups(model)`` when that was given."""
        if self.param_groups is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = self.param_groups(opt_model)
        if self.optimizer_cls_and_kwargs is not None:
            cls, kwargs = self.optimizer_cls_and_kwargs
        else:
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ averaged weights
    def _averaged(self) -> contextlib.AbstractContextManager:
        if self.average is None:
            return contextlib.nullcontext()
        return averaged_weights(self.average, self.model)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """``Trainer.evaluate`` with the averaged weights (when ``average`` was given)."""
        with self._averaged():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        """``Trainer.predict`` with the averaged weights (when ``average`` was given)."""
        with self._averaged():
            return super().predict(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the averaged weights when you call it; Trainer's own checkpoints
        (``_internal_call``) keep the live weights so that resuming continues exactly."""
        with contextlib.nullcontext() if _internal_call else self._averaged():
            super().save_model(output_dir, _internal_call=_internal_call)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = f"{_transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = os.path.join(self._get_output_dir(trial=trial), folder, TRICKS_FILE)
            torch.save(self.tricks.state_dict(), path)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, TRICKS_FILE)
        if os.path.isfile(path):
            self.tricks.load_state_dict(torch.load(path, weights_only=True))


    def _load_best_model(self) -> None:
        super()._load_best_model()
        path = os.path.join(self.state.best_model_checkpoint, TRICKS_FILE)
        if os.path.isfile(path):  # the EMA / SWA that was evaluated with the best weights
            self.tricks.load_state_dict(torch.load(path, weights_only=True))


class DanluTrainer(TricksMixin, Trainer):
    """``transformers.Trainer`` with danlu tricks: ``DanluTrainer(model=..., args=...,
    tricks=[FGM(model), EMA(model)], param_groups=..., average=ema)``.

    See :class:`TricksMixin` for the arguments and the module docstring for the hooks.

    Example:
        >>> from danlu.adversarial import FGM
        >>> from danlu.optim import EMA, layer_decay_groups
        >>> ema = EMA(model, decay=0.999)
        >>> trainer = DanluTrainer(
        ...     model=model, args=TrainingArguments(output_dir="out", bf16=True),
        ...     train_dataset=train, eval_dataset=dev,
        ...     tricks=[FGM(model, eps=1.0), ema], average=ema,
        ...     param_groups=lambda m: layer_decay_groups(m, lr=5e-5, decay=0.9))
        >>> trainer.train(); trainer.evaluate()   # evaluated with the EMA weights
    """
