"""The hook core: :class:`Trick`, :class:`State` and the orchestrator :class:`Tricks`.

One call of ``Tricks.step(model, optimizer, batch, loss_fn)`` runs one micro-batch::

    batch = trick.on_batch(batch, state)              # every trick, by ascending order
    with no_sync() if DDP and not boundary:           # DDP: sync only on the boundary
        with autocast(amp):
            loss, logits = chain(batch)               # compute_loss chain, outermost = lowest order;
                                                      # innermost calls loss_fn(model, batch)
        scaler.scale(loss * weight).backward()        # weight = 1/accumulate (or num_items)
        trick.after_backward(closure, state)          # every micro-batch; closure() re-runs
                                                      # chain + backward on the same batch
    if boundary:                                      # `accumulate` micro-batches since the last
                                                      # step, or forced with boundary=True
        scaler.unscale_(optimizer)                    # fp16: gradients are unscaled first
        (grads *= 1/total_items when num_items given,
         else grads *= accumulate/m for a window of m != accumulate micro-batches)
        trick.before_step(optimizer, state)           # grad-norm monitor, clipping
        clip_grad_norm_(max_grad_norm)                # Tricks(max_grad_norm=...)
        scaler.step(optimizer); scaler.update()       # fp16: skipped on inf/nan
        if the step happened:
            state.step += 1
            trick.after_step(optimizer, state)        # EMA, SWA, schedules
        optimizer.zero_grad(set_to_none=True)

    tricks.epoch_end()  ->  state.epoch += 1; trick.on_epoch_end(state)

Ordering rule: tricks run sorted by their ``order`` (a stable sort, so equal orders keep
list order). Lower order runs first in every hook and is the *outer* wrapper of the
``compute_loss`` chain. The bands in :class:`Order` say where each kind of trick sits:
loss wrappers (R-Drop) outside the mixup family outside loss swaps (focal); a grad-norm
monitor before clipping; schedules before weight averaging.

A trick whose ``compute_loss`` recomputes the loss from the logits (``replaces_loss =
True``: mixup, focal, label smoothing) discards the loss the inner chain returns, so
``Tricks`` refuses such a trick outside another ``compute_loss`` trick instead of silently
dropping that trick's term.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["Order", "State", "Trick", "Tricks", "LossFn", "unwrap_model", "optimizer_grads"]

Forward = Callable[[Any], "tuple[torch.Tensor, torch.Tensor | None]"]
LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
AmpMode = Literal["fp16", "bf16"] | None


class Order:
    """Conventional ``order`` bands (lower runs first, and wraps outermost)."""

    DATA = 0  # on_batch transforms of the raw batch: token cutoff
    LOSS_WRAP = 10  # multi-pass loss wrappers: R-Drop
    MIX = 15  # the mixup family: mixes inside every R-Drop pass, two-label loss from logits
    LOSS = 20  # loss swaps: focal, label smoothing, temperature
    ADVERSARIAL = 30  # after_backward closures: FGM, PGD, FreeLB, AWP
    MONITOR = 40  # reads gradients before they are changed
    CLIP = 50  # clipping
    SCHEDULE = 60  # lr schedules, lookahead
    AVERAGE = 70  # EMA, SWA: see the final weights of the step


@dataclass
class State:
    """What hooks see: where training is, and the last micro-batch's results.

    ``step`` counts optimizer steps that really happened (an fp16 step skipped by the
    GradScaler does not count); ``micro_step`` counts micro-batches; ``window`` counts the
    micro-batches of the current accumulation window that are already done (0 right after
    an optimizer step).
    """

    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    accumulate: int = 1
    step: int = 0
    micro_step: int = 0
    window: int = 0
    epoch: int = 0
    is_boundary: bool = False
    stepped: bool = False
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grad_scale(self) -> float:
        """The current loss scale (1.0 without a GradScaler): gradients are multiplied by it
        until the boundary's unscale."""
        if self.scaler is None or not self.scaler.is_enabled():
            return 1.0
        return float(self.scaler.get_scale())


class Trick:
    """Base class: every hook is a no-op / pass-through; override only what you need.

    Hooks (see the module docstring for when each fires):

    - ``on_batch(batch, state) -> batch``
    - ``compute_loss(forward, batch, state) -> (loss, logits)`` where ``forward(batch)``
      returns ``(loss, logits)`` (logits may be ``None``)
    - ``after_backward(closure, state)``; ``closure()`` re-runs the loss chain on the same
      batch and calls backward with the same scaling, and returns the detached loss
    - ``before_step(optimizer, state)`` (gradients are unscaled here)
    - ``after_step(optimizer, state)`` (only after a step that happened)
    - ``on_epoch_end(state)``
    - ``state_dict()`` / ``load_state_dict(state_dict)``
    """

    order: int = Order.LOSS
    #: True when ``compute_loss`` recomputes the loss from the logits, discarding the loss
    #: the inner chain returns (loss swaps, mixup): nothing that changes the loss may run
    #: inside it.
    replaces_loss: bool = False

    def on_batch(self, batch: Any, state: State) -> Any:
        return batch

    def compute_loss(self, forward: Forward, batch: Any, state: State):
        return forward(batch)

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        pass

    def before_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        pass

    def after_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        pass

    def on_epoch_end(self, state: State) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            raise ValueError(
                f"{type(self).__name__} keeps no state but got a state_dict with keys "
                f"{sorted(state_dict)}; was it saved from another trick list?"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside ``DistributedDataParallel`` / ``DataParallel`` /
    ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _as_loss_and_logits(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, tuple | list):
        if len(out) != 2:
            raise ValueError(
                f"loss_fn must return a loss or (loss, logits), got a {type(out).__name__} "
                f"of length {len(out)}"
            )
        loss, logits = out
    else:
        loss, logits = out, None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar loss tensor, got {shape}; reduce it "
            "(e.g. loss.mean()) or return (loss, logits)"
        )
    return loss.reshape(()), logits


def _check_loss_chain(tricks: list[Trick]) -> None:
    """Refuse a loss-replacing trick that wraps another compute_loss trick."""
    chain = [t for t in tricks if type(t).compute_loss is not Trick.compute_loss]
    for i, outer in enumerate(chain):
        if outer.replaces_loss and i + 1 < len(chain):
            inner = chain[i + 1 :]
            raise ValueError(
                f"{outer!r} recomputes the loss from the logits, so the loss of "
                f"{', '.join(map(repr, inner))} inside it would be silently dropped; give "
                f"{type(outer).__name__} that loss instead (e.g. loss_from_logits=...), or "
                "change the tricks' order so the loss-replacing trick is innermost"
            )


def _device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    raise ValueError("the model has no parameters: there is nothing to train")


class Tricks:
    """Runs a list of :class:`Trick` s around the user's own training loop.

    Args:
        tricks: the tricks; they run sorted by their ``order`` (stable).
        accumulate: micro-batches per optimizer step (>= 1). A window is counted from the
            last optimizer step, and its gradient is the mean over its micro-batches: a
            window forced to end early with ``step(..., boundary=True)`` after m
            micro-batches gives the mean over those m. With ``step(..., num_items=n)`` the
            window's gradients are divided by its total item count instead (exact for uneven
            micro-batches and under DDP).
        amp: ``None``, ``"fp16"`` (autocast + ``torch.amp.GradScaler``) or ``"bf16"``
            (autocast only).
        max_grad_norm: clip the total gradient 2-norm to this value (> 0) with
            ``torch.nn.utils.clip_grad_norm_`` after every ``before_step`` hook, and record
            the pre-clip norm in ``state.grad_norm`` (``danlu.optim.ClipGradNorm`` is the
            same as a trick, with a ``norm_type``).
        grad_scaler: an own ``GradScaler`` for ``amp="fp16"`` (e.g. with another
            ``init_scale``); by default one is made for the model's device.

    Example:
        >>> import torch, danlu
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> def loss_fn(m, b):
        ...     logits = m(b[0])
        ...     return torch.nn.functional.cross_entropy(logits, b[1]), logits
        >>> tricks = danlu.Tricks([], accumulate=2, max_grad_norm=1.0)
        >>> batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))
        >>> state = tricks.step(model, opt, batch, loss_fn)   # micro-batch 1: no step yet
        >>> state = tricks.step(model, opt, batch, loss_fn)   # micro-batch 2: optimizer step
        >>> state.step
        1
    """

    def __init__(
        self,
        tricks: Sequence[Trick] = (),
        accumulate: int = 1,
        amp: AmpMode = None,
        max_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(
                f"accumulate must be an integer >= 1 (micro-batches per optimizer step), "
                f"got {accumulate!r}"
            )
        if amp not in (None, "fp16", "bf16"):
            raise ValueError(f"amp must be None, 'fp16' or 'bf16', got {amp!r}")
        tricks = list(tricks)
        for t in tricks:
            if not isinstance(t, Trick):
                raise TypeError(
                    f"Tricks takes danlu.Trick objects, got {type(t).__name__}; "
                    "wrap drop-in objects in their Trick form"
                )
        if max_grad_norm is not None and not (
            isinstance(max_grad_norm, int | float)
            and not isinstance(max_grad_norm, bool)
            and 0 < max_grad_norm < float("inf")
        ):
            raise ValueError(
                f"max_grad_norm must be a finite number > 0 (or None: no clipping), got "
                f"{max_grad_norm!r}; 1.0 is the usual value for BERT-style models"
            )
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.tricks: list[Trick] = sorted(tricks, key=lambda t: t.order)
        _check_loss_chain(self.tricks)
        self.accumulate = accumulate
        self.amp = amp
        self.state = State(accumulate=accumulate)
        self._scaler = grad_scaler
        self._scaler_ready = grad_scaler is not None
        self._pending_scaler_state: dict[str, Any] | None = None
        self._window_items: float = 0.0
        self._weighted = False

    # ------------------------------------------------------------------ helpers
    def _ensure_scaler(self, device_type: str) -> torch.amp.GradScaler | None:
        if not self._scaler_ready:
            self._scaler = torch.amp.GradScaler(device_type) if self.amp == "fp16" else None
            if self._scaler is not None and self._pending_scaler_state is not None:
                self._scaler.load_state_dict(self._pending_scaler_state)
            self._scaler_ready = True
        return self._scaler

    def _autocast(self, device_type: str):
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.amp == "fp16" else torch.bfloat16
        return torch.autocast(device_type=device_type, dtype=dtype)

    def chain(self, model: nn.Module, loss_fn: LossFn) -> Forward:
        """The composed ``compute_loss`` chain: ``forward(batch) -> (loss, logits)``, outermost
        trick first, ``loss_fn(model, batch)`` innermost. For integrations that run their own
        backward (HF Trainer, Lightning manual optimisation)."""

        def innermost(batch: Any):
            return _as_loss_and_logits(loss_fn(model, batch))

        forward: Forward = innermost
        for trick in reversed(self.tricks):
            if type(trick).compute_loss is Trick.compute_loss:
                continue

            def forward(batch, _trick=trick, _next=forward):  # noqa: B023 (bound by default)
                return _as_loss_and_logits(_trick.compute_loss(_next, batch, self.state))

        return forward

    # ------------------------------------------------------------------ the step
    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: Any,
        loss_fn: LossFn,
        *,
        num_items: int | float | None = None,
        boundary: bool | None = None,
    ) -> State:
        """Run one micro-batch (and the optimizer step at an accumulation boundary).

        Args:
            model: the (possibly DDP-wrapped) model ``loss_fn`` calls.
            optimizer: the optimizer over the model's parameters.
            batch: anything ``loss_fn`` and the tricks understand.
            loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> (loss, logits)``, with a
                mean-reduced scalar loss.
            num_items: examples (or tokens) in this micro-batch. When given on every
                micro-batch, each contributes ``loss * num_items`` and the window's
                gradients are divided by its total count: exact accumulation for uneven
                micro-batches.
            boundary: force (``True``) or suppress (``False``) the optimizer step after
                this micro-batch; ``None`` steps every ``accumulate`` micro-batches. Use
                ``True`` on the last, partial window of an epoch.

        Returns:
            the :class:`State`, with ``loss``/``logits`` of this micro-batch, ``stepped``
            and, when a monitor or clipping ran, ``grad_norm``.
        """
        st = self.state
        device_type = _device_type(model)
        scaler = self._ensure_scaler(device_type)
        st.model, st.optimizer, st.scaler = model, optimizer, scaler
        st.is_boundary = self.window_ends(boundary)
        st.stepped = False
        weight = self._micro_weight(num_items)

        for trick in self.tricks:
            batch = trick.on_batch(batch, st)

        sync = contextlib.nullcontext()
        if isinstance(model, nn.parallel.DistributedDataParallel) and not st.is_boundary:
            sync = model.no_sync()

        def backward(loss: torch.Tensor) -> None:
            scaled = loss * weight
            (scaler.scale(scaled) if scaler is not None else scaled).backward()

        with sync:
            self.forward_backward(
                model, batch, loss_fn, backward, lambda: self._autocast(device_type)
            )
        if st.is_boundary:
            self._optimizer_step(model, optimizer, scaler)
        return st

    def forward_backward(
        self,
        model: nn.Module,
        batch: Any,
        loss_fn: LossFn,
        backward: Callable[[torch.Tensor], None],
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        """One micro-batch after ``on_batch``: the loss chain under ``autocast()``,
        ``backward(loss)``, then every ``after_backward(closure, state)`` with a closure that
        repeats both; records ``state.loss``/``state.logits`` and counts the micro-step.

        ``step`` uses it with the GradScaler backward; integrations that own the backward
        (HF ``Trainer``, Lightning manual optimisation) pass theirs.
        """
        st = self.state
        chain = self.chain(model, loss_fn)

        def closure() -> torch.Tensor:
            with autocast():
                loss, _ = chain(batch)
            backward(loss)
            return loss.detach()

        with autocast():
            loss, logits = chain(batch)
        backward(loss)
        st.loss = loss.detach()
        st.logits = logits.detach() if isinstance(logits, torch.Tensor) else logits
        for trick in self.tricks:
            trick.after_backward(closure, st)
        st.micro_step += 1
        st.window += 1

    def window_ends(self, boundary: bool | None = None) -> bool:
        """Whether the coming micro-batch ends its accumulation window: the
        ``accumulate``-th since the last optimizer step, or as forced by ``boundary``."""
        if boundary is None:
            return self.state.window + 1 >= self.accumulate
        return bool(boundary)

    def close_window(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the window's gradient the mean over its micro-batches and start a new
        window. Each micro-batch was weighted ``1/accumulate``; a window of ``m !=
        accumulate`` micro-batches (forced by ``boundary``) is rescaled by ``accumulate/m``.
        Integrations that own the optimizer step call it before stepping."""
        m, self.state.window = self.state.window, 0
        if self._weighted or m in (0, self.accumulate):
            return
        grads = optimizer_grads(optimizer)
        if grads:
            torch._foreach_mul_(grads, self.accumulate / m)

    def _micro_weight(self, num_items: int | float | None) -> float:
        if num_items is None:
            if self._weighted and self._window_items > 0:
                raise ValueError(
                    "num_items was given for earlier micro-batches of this window but not "
                    "for this one: pass it on every micro-batch or on none"
                )
            return 1.0 / self.accumulate
        if not num_items > 0:
            raise ValueError(f"num_items must be > 0, got {num_items!r}")
        self._weighted = True
        self._window_items += float(num_items)
        return float(num_items)

    def _optimizer_step(self, model, optimizer, scaler) -> None:
        st = self.state
        if scaler is not None:
            scaler.unscale_(optimizer)
        if self._weighted:
            self._normalise_by_items(model, optimizer)
        self.close_window(optimizer)
        for trick in self.tricks:
            trick.before_step(optimizer, st)
        if self.max_grad_norm is not None:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if params:
                st.grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm).detach()
        if scaler is not None:
            scale_before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            st.stepped = scaler.get_scale() >= scale_before
        else:
            optimizer.step()
            st.stepped = True
        if st.stepped:
            st.step += 1
            for trick in self.tricks:
                trick.after_step(optimizer, st)
        optimizer.zero_grad(set_to_none=True)

    def _normalise_by_items(self, model, optimizer) -> None:
        total = torch.tensor(self._window_items, dtype=torch.float64)
        factor = 1.0
        if isinstance(model, nn.parallel.DistributedDataParallel):
            # DDP averaged sum_i n_i g_i over ranks; divide by the global count instead.
            world = torch.distributed.get_world_size()
            total = total.to(next(model.parameters()).device)
            torch.distributed.all_reduce(total)
            factor = float(world)
        grads = optimizer_grads(optimizer)
        if grads:
            torch._foreach_mul_(grads, factor / float(total))
        self._window_items, self._weighted = 0.0, False
        self.state.window = 0

    # ------------------------------------------------------------------ epochs, state
    def epoch_end(self) -> None:
        """Call once at the end of each epoch: runs every ``on_epoch_end`` hook."""
        self.state.epoch += 1
        for trick in self.tricks:
            trick.on_epoch_end(self.state)

    def state_dict(self) -> dict[str, Any]:
        """Counters, the GradScaler and every trick's state, in one dict."""
        st = self.state
        return {
            "step": st.step,
            "micro_step": st.micro_step,
            "window": st.window,
            "epoch": st.epoch,
            "scaler": self._scaler.state_dict() if self._scaler is not None else None,
            "tricks": [(type(t).__name__, t.state_dict()) for t in self.tricks],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        names = [name for name, _ in state_dict["tricks"]]
        mine = [type(t).__name__ for t in self.tricks]
        if names != mine:
            raise ValueError(
                f"state_dict was saved with tricks {names}, but these Tricks hold {mine}"
            )
        st = self.state
        st.step, st.micro_step, st.epoch = (
            state_dict["step"],
            state_dict["micro_step"],
            state_dict["epoch"],
        )
        st.window = state_dict.get("window", st.micro_step % self.accumulate)
        if state_dict["scaler"] is not None:
            if self._scaler is not None:
                self._scaler.load_state_dict(state_dict["scaler"])
            else:
                self._pending_scaler_state = state_dict["scaler"]
        for trick, (_, sd) in zip(self.tricks, state_dict["tricks"]):
            trick.load_state_dict(sd)

    def __iter__(self) -> Iterator[Trick]:
        return iter(self.tricks)

    def __repr__(self) -> str:
        return (
            f"Tricks({self.tricks!r}, accumulate={self.accumulate}, amp={self.amp!r}, "
            f"max_grad_norm={self.max_grad_norm})"
        )


def optimizer_grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The existing ``.grad`` tensors of the parameters an optimizer updates."""
    return [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
