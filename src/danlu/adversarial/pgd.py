"""PGD on the input embedding (Madry et al., 2018, https://arxiv.org/abs/1706.06083): K
ascent steps of size ``alpha`` projected onto the ``eps``-ball around the original rows.

The standard recipe (as in the popular Kaggle / 知乎 PGD class): after the clean backward,
K-1 inner forward+backward passes only steer the perturbation and their gradients are
discarded; the clean gradient is restored before the last adversarial backward, so the
final gradient is clean + last adversarial. danlu gets the same result cheaper:

- only the embedding rows with a gradient are backed up, moved and restored;
- during the inner passes every other parameter is frozen (``requires_grad=False``), so
  backward skips their weight gradients (they would be thrown away) and the clean
  gradients stay in place: nothing has to be copied or restored except the embedding's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from danlu._embeddings import Target, check_positive, check_steps, find_embedding
from danlu.adversarial.fgm import (
    Mode,
    accumulate_dtype,
    check_mode,
    fgm_delta,
    output_attack,
    record_incoming_grad,
    trainable_embedding,
)
from danlu.core import Order, State, Trick

if TYPE_CHECKING:
    from danlu.adversarial._output import OutputAttack

__all__ = ["project_rows", "PGD"]


def project_rows(current: torch.Tensor, original: torch.Tensor, eps: float) -> torch.Tensor:
    """``original + r`` with ``r = current - original`` scaled back onto the L2 ball of
    radius ``eps`` when ``‖r‖ > eps`` (the norm is over all given rows together).

    Example:
        >>> project_rows(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2), eps=1.0).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    r = current - original
    norm = torch.linalg.vector_norm(r, dtype=accumulate_dtype(r))
    if float(norm) > eps:
        r = r * (eps / norm).to(r.dtype)
    return original + r


class PGD(Trick):
    """Projected gradient descent adversarial training on the input embedding.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through); with DDP
            pass the wrapper so the inner passes can skip the gradient all-reduce.
        eps: radius of the L2 ball around the original rows (> 0); 1.0 for BERT.
        alpha: size of each ascent step (> 0); commonly 0.3 with eps 1.0.
        steps: ascent steps K (>= 1); each costs one extra forward+backward.
        target: which embedding to perturb (see :func:`find_embedding`).
        mode: ``"weight"`` (default: the rows the batch used) or ``"hook"``: the steps move
            a perturbation of the embedding's *output* (projected onto the eps-ball of the
            whole output tensor) added by a forward hook, for frozen (LoRA/PEFT), sharded
            (FSDP2) or output-tied embeddings; see :class:`~danlu.adversarial.FGM`.

    Example:
        >>> pgd = PGD(model, eps=1.0, alpha=0.3, steps=3)
        >>> loss_fn(model, batch).backward()
        >>> pgd.run(lambda: loss_fn(model, batch).backward())   # K adversarial passes
        >>> optimizer.step(); optimizer.zero_grad()
        >>> tricks = danlu.Tricks([PGD(model, eps=1.0, alpha=0.3)])   # the same, composed
    """

    order = Order.ADVERSARIAL

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        alpha: float = 0.3,
        steps: int = 3,
        target: Target = None,
        mode: Mode = "weight",
    ) -> None:
        self.eps = check_positive("eps", eps)
        self.alpha = check_positive("alpha", alpha)
        self.steps = check_steps(steps)
        self.mode = check_mode(mode)
        self.model = model
        self._rows: torch.Tensor | None = None
        self._backup: torch.Tensor | None = None
        self._pos: torch.Tensor | None = None  # row id -> position in _rows (-1: absent)
        # the gradient of the last backward alone: under accumulation .grad also holds the
        # window's earlier micro-batches, which must not steer this micro-batch's attack
        self._incoming: torch.Tensor | None = None
        self._output: OutputAttack | None = None
        self._active = False  # hook mode: between attack(first=True) and restore()
        if mode == "hook":
            self.weight = find_embedding(model, target)
            self._output = output_attack(model, target)
            return
        self.weight = trainable_embedding(model, target, "PGD")
        self._hook = record_incoming_grad(self.weight, self)

    @property
    def attacked(self) -> bool:
        return self._active if self._output is not None else self._rows is not None

    def _attack_output(self, first: bool) -> bool:
        out = self._output
        self._active = True
        step = out.take_step(self.alpha)
        if step is None:
            return False
        current = step if first or out.delta is None else out.delta + step
        out.delta = project_rows(current, torch.zeros_like(current), self.eps)
        return True

    def attack(self, first: bool = False) -> bool:
        """One ascent step ``alpha · g/‖g‖`` from the current embedding gradient, projected
        onto the eps-ball; ``first=True`` starts a new attack (backs up the rows). Returns
        False when the step was skipped (no gradient, or its norm is 0 or not finite)."""
        if first and self.attacked:
            raise RuntimeError("PGD.attack(first=True) while attacked: call restore() first")
        if not first and not self.attacked:
            raise RuntimeError("PGD.attack() before attack(first=True)")
        if self._output is not None:
            return self._attack_output(first)
        w = self.weight
        if first:
            self._rows = torch.empty(0, dtype=torch.long, device=w.device)
            self._backup = w.new_empty((0, w.shape[1]))
            self._pos = torch.full((w.shape[0],), -1, dtype=torch.long, device=w.device)
        grad = w.grad if self._incoming is None else self._incoming
        self._incoming = None
        step = None if grad is None else fgm_delta(grad, self.alpha)
        if step is None:
            return False
        rows, r = step
        with torch.no_grad():
            new = rows[self._pos[rows] < 0]
            if new.numel():  # rows seen for the first time: back them up
                self._pos[new] = torch.arange(
                    len(self._rows), len(self._rows) + len(new), device=w.device
                )
                self._rows = torch.cat([self._rows, new])
                self._backup = torch.cat([self._backup, w.index_select(0, new)])
            current = w.index_select(0, self._rows)
            current.index_add_(0, self._pos[rows], r.to(current.dtype))
            w.index_copy_(0, self._rows, project_rows(current, self._backup, self.eps))
        return True

    def restore(self) -> None:
        """Copy the original rows back (bit-exact), or stop perturbing the output; a no-op
        when not attacked."""
        self._incoming = None
        if self._output is not None and self._active:
            self._output.delta = self._output.grad = None  # the adversarial gradient too
            self._active = False
        if self._rows is None:
            return
        with torch.no_grad():
            self.weight.index_copy_(0, self._rows, self._backup)
        self._rows = self._backup = self._pos = None

    def run(self, closure: Callable[[], object], model: nn.Module | None = None) -> None:
        """The K adversarial passes after a clean backward. ``closure()`` must run forward
        and backward on the same batch. Afterwards the gradients are clean + the last
        adversarial pass's, and the embedding is restored exactly. When the first step has
        nothing to attack with (no gradient, norm 0 or not finite) no pass runs."""
        model = self.model if model is None else model
        w = self.weight
        clean = w.grad
        frozen: list[nn.Parameter] = []
        no_sync = (
            model.no_sync
            if isinstance(model, nn.parallel.DistributedDataParallel)
            else contextlib.nullcontext
        )
        if self._output is not None:
            self._run_hook(closure, model, no_sync)
            return
        try:
            for t in range(self.steps):
                if not self.attack(first=t == 0) and t == 0:
                    return  # nothing moved: an adversarial pass would repeat the clean one
                if t == self.steps - 1:
                    w.grad = clean
                    closure()
                    break
                w.grad = None
                if not frozen:
                    frozen = [p for p in model.parameters() if p.requires_grad and p is not w]
                    for p in frozen:
                        p.requires_grad_(False)
                with no_sync():
                    closure()
                if t == self.steps - 2:
                    for p in frozen:
                        p.requires_grad_(True)
                    frozen = []
        except BaseException:
            w.grad = clean
            raise
        finally:
            for p in frozen:
                p.requires_grad_(True)
            self.restore()

    def _run_hook(self, closure: Callable[[], object], model: nn.Module, no_sync) -> None:
        # the inner passes need only the output's gradient: every parameter is frozen for
        # them, so the clean gradients stay untouched and nothing is saved or restored
        frozen: list[nn.Parameter] = []
        try:
            for t in range(self.steps):
                if not self.attack(first=t == 0) and t == 0:
                    return  # nothing moved: an adversarial pass would repeat the clean one
                if t == self.steps - 1:
                    for p in frozen:
                        p.requires_grad_(True)
                    frozen = []
                    closure()
                    break
                if not frozen:
                    frozen = [p for p in model.parameters() if p.requires_grad]
                    for p in frozen:
                        p.requires_grad_(False)
                with no_sync():
                    closure()
        finally:
            for p in frozen:
                p.requires_grad_(True)
            self.restore()

    def remove(self) -> None:
        """Take this PGD's hook off the model (see :meth:`FGM.remove`)."""
        self.restore()
        if self._output is not None:
            self._output.remove()
        else:
            self._hook.remove()

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        self.run(closure, state.model)

    def __repr__(self) -> str:
        return f"PGD(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, mode={self.mode!r})"
