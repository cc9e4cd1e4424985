"""Gradient clipping and gradient-norm monitoring as tricks (run at the boundary, after the
AMP unscale, so they always see true gradients).

Built on ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` and ``torch._foreach_norm``.
"""

from __future__ import annotations

import math

import torch

from danlu._checks import check_int, check_number
from danlu.core import Order, State, Trick, optimizer_grads

__all__ = ["grad_norm", "ClipGradNorm", "ClipGradValue", "GradNormMonitor"]


def grad_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Total ``norm_type`` norm of a list of gradients, as one tensor (no clipping).

    Example:
        >>> grad_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        tensor(5.)
    """
    # Not torch.nn.utils.get_total_norm (torch >= 2.6): it combines the per-tensor norms in
    # the gradients' own dtype, so bf16 gradients gave a bf16 total (measured: 137. where the
    # fp32 total is 136.96); here each norm is taken in its dtype and the total in fp32.
    norm_type = _check_norm_type(norm_type)
    if isinstance(grads, torch.Tensor) or not all(isinstance(g, torch.Tensor) for g in grads):
        raise TypeError(
            f"grads must be a list of tensors, got {type(grads).__name__}; e.g. "
            "[p.grad for p in model.parameters() if p.grad is not None]"
        )
    if not grads:
        return torch.tensor(0.0)
    by_device: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault((g.device, g.dtype), []).append(g)
    norms = []
    for group in by_device.values():
        norms.extend(n.float() for n in torch._foreach_norm(group, norm_type))
    device = grads[0].device
    stacked = torch.stack([n.to(device) for n in norms])
    return torch.linalg.vector_norm(stacked, norm_type)


def _check_positive(name: str, value: float) -> None:
    check_number(name, value, 0.0, math.inf, open_low=True, open_high=True)


def _check_norm_type(norm_type: float) -> float:
    return check_number(
        "norm_type", norm_type, 1.0, fix="use 2.0 (Euclidean) or float('inf') (largest element)"
    )


class ClipGradNorm(Trick):
    """Clip the total gradient norm to ``max_norm`` (``torch.nn.utils.clip_grad_norm_``) at
    each optimizer step; records the pre-clip norm in ``state.grad_norm``.

    Args:
        max_norm: largest allowed total norm (> 0); common values 0.5–10, 1.0 for BERT.
        norm_type: the p of the p-norm, >= 1 (default 2; ``float('inf')`` for max-norm).

    Example:
        >>> from danlu import Tricks
        >>> tricks = Tricks([ClipGradNorm(1.0)])      # or Tricks(..., max_grad_norm=1.0)
    """

    order = Order.CLIP

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        _check_positive("max_norm", max_norm)
        self.max_norm, self.norm_type = float(max_norm), _check_norm_type(norm_type)

    def before_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if params:
            state.grad_norm = torch.nn.utils.clip_grad_norm_(
                params, self.max_norm, norm_type=self.norm_type
            ).detach()

    def __repr__(self) -> str:
        return f"ClipGradNorm(max_norm={self.max_norm})"


class ClipGradValue(Trick):
    """Clamp every gradient element to ``[-clip_value, clip_value]``
    (``torch.nn.utils.clip_grad_value_``).

    Example:
        >>> from danlu import Tricks
        >>> tricks = Tricks([ClipGradValue(0.5)])
    """

    order = Order.CLIP

    def __init__(self, clip_value: float) -> None:
        _check_positive("clip_value", clip_value)
        self.clip_value = float(clip_value)

    def before_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(params, self.clip_value)

    def __repr__(self) -> str:
        return f"ClipGradValue(clip_value={self.clip_value})"


class GradNormMonitor(Trick):
    """Record the total gradient norm before any clipping: ``state.grad_norm`` each step
    and ``history`` (a list of floats, one per optimizer step, bounded by ``keep``).

    Example:
        >>> from danlu import Tricks
        >>> monitor = GradNormMonitor()
        >>> tricks = Tricks([monitor, ClipGradNorm(1.0)])   # the monitor runs first
    """

    order = Order.MONITOR

    def __init__(self, norm_type: float = 2.0, keep: int = 10_000) -> None:
        self.norm_type = _check_norm_type(norm_type)
        self.keep = check_int("keep", keep, 1, fix="the number of norms kept in history")
        self.history: list[float] = []

    def before_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        state.grad_norm = grad_norm(optimizer_grads(optimizer), self.norm_type).detach()
        self.history.append(float(state.grad_norm))
        del self.history[: -self.keep]

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])
