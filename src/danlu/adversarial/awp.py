"""AWP: adversarial weight perturbation (Wu et al., 2020, https://arxiv.org/abs/2004.05884)
in the form popular in Kaggle NLP (Feedback Prize, CommonLit): each selected weight moves
by ``adv_lr · g/‖g‖ · ‖w‖``, clipped element-wise to ``w ± adv_eps·|w|``, the loss is
back-propagated at the perturbed weights, and the weights are restored exactly.

As in that recipe the update uses the gradient at the perturbed weights only: the clean
gradient of the batch steers the perturbation and is then dropped. Inside ``Tricks``, the
gradients of earlier micro-batches of the window are kept (the Kaggle class's
``optimizer.zero_grad()`` would erase them under accumulation).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from danlu._embeddings import check_positive, check_steps
from danlu.core import Order, State, Trick, unwrap_model

__all__ = ["awp_select", "AWP"]

Selector = str | Callable[[str, nn.Parameter], bool]


def awp_select(model: nn.Module, adv_param: Selector = "weight") -> list[nn.Parameter]:
    """The trainable parameters AWP perturbs: names containing ``adv_param`` (the Kaggle
    default ``"weight"``: every weight matrix, embeddings and LayerNorm weights included,
    no biases), or those for which ``adv_param(name, param)`` is true.

    Example:
        >>> len(awp_select(nn.Linear(3, 2)))      # the weight, not the bias
        1
    """
    keep = adv_param if callable(adv_param) else (lambda name, p: adv_param in name)
    params = [p for n, p in unwrap_model(model).named_parameters() if p.requires_grad and keep(n, p)]
    if not params:
        raise ValueError(f"adv_param={adv_param!r} selects no trainable parameter of the model")
    return params


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    """L2 norms of many tensors with one host sync (fp64 when any tensor is fp64)."""
    norms = torch._foreach_norm(tensors)
    wide = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    return torch.stack([n.to(wide) for n in norms]).tolist()


class AWP(Trick):
    """Adversarial weight perturbation.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through).
        adv_lr: step relative to each weight's norm (> 0); Kaggle solutions use 1e-4–1.
        adv_eps: element-wise bound relative to ``|w|`` (> 0); 1e-3–1e-2 are common.
        start_step: first optimizer step (``state.step``) at which the trick attacks;
            AWP usually starts after the first epoch or once the loss has dropped.
        adv_param: the parameters to perturb (see :func:`awp_select`).
        steps: attack steps (>= 1); each costs one forward+backward.

    Example:
        >>> awp = AWP(model, adv_lr=1.0, adv_eps=0.01)
        >>> loss_fn(model, batch).backward()
        >>> awp.run(lambda: loss_fn(model, batch).backward())   # grads: the adversarial ones
        >>> optimizer.step(); optimizer.zero_grad()
        >>> tricks = danlu.Tricks([AWP(model, adv_lr=1.0, adv_eps=0.01, start_step=100)])
    """

    order = Order.ADVERSARIAL

    def __init__(
        self,
        model: nn.Module,
        adv_lr: float = 1.0,
        adv_eps: float = 0.01,
        start_step: int = 0,
        adv_param: Selector = "weight",
        steps: int = 1,
    ) -> None:
        self.adv_lr = check_positive("adv_lr", adv_lr)
        self.adv_eps = check_positive("adv_eps", adv_eps)
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")
        self.start_step = start_step
        self.steps = check_steps(steps)
        self.model = model
        self.params = awp_select(model, adv_param)
        self._buffers: list[torch.Tensor] | None = None
        self._backup: list[torch.Tensor] | None = None
        self._stash: list[torch.Tensor | None] | None = None

    @property
    def attacked(self) -> bool:
        return self._backup is not None

    def attack(self) -> int:
        """One attack step from the current gradients; backs the weights up on the first.
        Returns how many parameters moved (those with a finite, non-zero gradient)."""
        with torch.no_grad():
            if self._backup is None:  # back up into buffers allocated once
                if self._buffers is None:
                    self._buffers = [p.detach().clone() for p in self.params]
                else:
                    torch._foreach_copy_(self._buffers, [p.detach() for p in self.params])
                self._backup = self._buffers
            pairs = [(p, b) for p, b in zip(self.params, self._backup) if p.grad is not None]
            if not pairs:
                return 0
            ws, gs = [p for p, _ in pairs], [p.grad for p, _ in pairs]
            g_norms, w_norms = _norms(gs), _norms(ws)
            moved = [
                (i, self.adv_lr * (wn + 1e-6) / (gn + 1e-6))
                for i, (gn, wn) in enumerate(zip(g_norms, w_norms))
                if gn != 0 and math.isfinite(gn)
            ]
            if not moved:
                return 0
            ws = [ws[i] for i, _ in moved]
            backup = [pairs[i][1] for i, _ in moved]
            torch._foreach_add_(ws, torch._foreach_mul([gs[i] for i, _ in moved],
                                                       [s for _, s in moved]))
            bound = torch._foreach_abs(backup)
            torch._foreach_mul_(bound, self.adv_eps)
            torch._foreach_maximum_(ws, torch._foreach_sub(backup, bound))
            torch._foreach_minimum_(ws, torch._foreach_add(backup, bound))
        return len(moved)

    def restore(self) -> None:
        """Copy the original weights back (bit-exact); a no-op when not attacked."""
        if self._backup is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(self.params, self._backup)
        self._backup = None

    @contextlib.contextmanager
    def perturbed(self) -> Iterator[AWP]:
        """``attack()`` on entry, ``restore()`` on exit (also on an exception)."""
        self.attack()
        try:
            yield self
        finally:
            self.restore()

    def run(
        self,
        closure: Callable[[], object],
        keep: list[torch.Tensor | None] | None = None,
    ) -> None:
        """``steps`` attack steps, each followed by ``closure()`` (forward+backward on the
        same batch) at the perturbed weights; then restore. The gradients present before
        are replaced by the last adversarial pass's (plus ``keep``, one gradient or None per
        parameter of the model, which the Trick uses for earlier micro-batches)."""
        params = list(self.model.parameters())
        try:
            for t in range(self.steps):
                self.attack()
                last = t == self.steps - 1
                for i, p in enumerate(params):
                    p.grad = keep[i] if (last and keep is not None) else None
                closure()
        finally:
            self.restore()

    # ----------------------------------------------------------------- Trick hooks
    def compute_loss(self, forward, batch, state: State):
        if self._stash is None and self._backup is None and state.step >= self.start_step:
            # before the clean backward: set the window's earlier gradients aside
            self._stash = [p.grad for p in self.model.parameters()]
            for p in self.model.parameters():
                p.grad = None
        return forward(batch)

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        if self._stash is None:
            return
        stash, self._stash = self._stash, None
        self.run(closure, keep=stash)

    def __repr__(self) -> str:
        return f"AWP(adv_lr={self.adv_lr}, adv_eps={self.adv_eps}, start_step={self.start_step})"
