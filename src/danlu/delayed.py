"""``Delayed(trick, start_step=... | start_epoch=...)``: run any trick only from a point in
training on, as the course material advises for consistency, adversarial and noise terms
("adversarial training is not advised from the very start"; FreeLB from step 0 is a known
NaN source).

Before the start every hook is a pass-through, so the loop is exactly the loop without the
trick (no forward, no random draw, no unlabelled batch taken); from the start on every hook
is the wrapped trick's. The start is checked at each hook against ``state.step`` (optimizer
steps that happened) or ``state.epoch`` (``Tricks.epoch_end()`` calls), so all micro-batches
of one accumulation window agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from danlu.core import State, Trick

__all__ = ["Delayed"]


def _check_start(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (or None), got {value!r}")
    return value


class Delayed(Trick):
    """Wrap ``trick`` so that it starts at optimizer step ``start_step`` or epoch
    ``start_epoch`` (exactly one of them).

    Args:
        trick: any :class:`danlu.Trick`.
        start_step: the trick runs once ``state.step >= start_step``.
        start_epoch: the trick runs once ``state.epoch >= start_epoch``.

    ``order`` and ``replaces_loss`` are the wrapped trick's; ``state_dict()`` is the wrapped
    trick's, so checkpoints stay loadable when the wrapper is added or removed.

    Example:
        >>> import danlu
        >>> from danlu.loss import RDrop
        >>> late = danlu.Delayed(RDrop(alpha=1.0), start_epoch=1)
        >>> late.active(danlu.State(epoch=0)), late.active(danlu.State(epoch=1))
        (False, True)
    """

    def __new__(cls, trick: Trick, *args: Any, **kwargs: Any) -> Delayed:
        # Tricks decides from the *type* whether a trick is in the compute_loss chain, so a
        # wrapper of a trick without compute_loss must not define one either.
        if cls is Delayed and getattr(type(trick), "compute_loss", Trick.compute_loss) is not (
            Trick.compute_loss
        ):
            cls = _DelayedLoss
        return super().__new__(cls)

    def __init__(
        self, trick: Trick, start_step: int | None = None, start_epoch: int | None = None
    ) -> None:
        if not isinstance(trick, Trick):
            raise TypeError(f"Delayed wraps a danlu.Trick, got {type(trick).__name__}")
        if (start_step is None) == (start_epoch is None):
            raise ValueError(
                f"pass exactly one of start_step and start_epoch, got start_step={start_step!r}"
                f", start_epoch={start_epoch!r}"
            )
        self.trick = trick
        self.start_step = _check_start("start_step", start_step)
        self.start_epoch = _check_start("start_epoch", start_epoch)
        self.order = trick.order
        self.replaces_loss = trick.replaces_loss

    def active(self, state: State) -> bool:
        """Whether the wrapped trick runs at this point of training."""
        if self.start_step is not None:
            return state.step >= self.start_step
        return state.epoch >= self.start_epoch

    def on_batch(self, batch: Any, state: State) -> Any:
        return self.trick.on_batch(batch, state) if self.active(state) else batch

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        if self.active(state):
            self.trick.after_backward(closure, state)

    def before_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        if self.active(state):
            self.trick.before_step(optimizer, state)

    def after_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        if self.active(state):
            self.trick.after_step(optimizer, state)

    def on_epoch_end(self, state: State) -> None:
        if self.active(state):
            self.trick.on_epoch_end(state)

    def state_dict(self) -> dict[str, Any]:
        return self.trick.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.trick.load_state_dict(state_dict)

    def __repr__(self) -> str:
        start = (
            f"start_step={self.start_step}"
            if self.start_step is not None
            else f"start_epoch={self.start_epoch}"
        )
        return f"Delayed({self.trick!r}, {start})"


class _DelayedLoss(Delayed):
    """:class:`Delayed` of a trick that has a ``compute_loss``."""

    def compute_loss(self, forward, batch: Any, state: State):
        if self.active(state):
            return self.trick.compute_loss(forward, batch, state)
        return forward(batch)
