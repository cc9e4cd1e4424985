"""FGM: the fast gradient method on the input embedding (Miyato et al., 2017,
https://arxiv.org/abs/1605.07725), touching only the embedding rows the batch used.

The textbook version clones, perturbs and copies back the whole embedding table (30k × 384
for BERT) on every step. Only the rows with a non-zero gradient can move, so danlu finds
them in one read of the gradient (which also gives ‖g‖) and backs up, perturbs and
restores just those rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from danlu._embeddings import Target, check_positive, find_embedding
from danlu.core import Order, State, Trick

__all__ = ["accumulate_dtype", "grad_rows", "fgm_delta", "FGM"]


def accumulate_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision tensors, else the tensor's own dtype (fp32 / fp64)."""
    return torch.promote_types(t.dtype, torch.float32)


def grad_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, grad[rows], ‖grad‖₂)`` for the rows of a 2-D gradient that are non-zero
    (dense) or stored (sparse, as from ``nn.Embedding(sparse=True)``). The norm is computed
    in at least fp32.

    Example:
        >>> rows, g, norm = grad_rows(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        >>> rows.tolist(), norm.item()
        ([1], 5.0)
    """
    acc = accumulate_dtype(grad)
    if grad.is_sparse:
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        return rows, values, torch.linalg.vector_norm(values, dtype=acc)
    row_norms = torch.linalg.vector_norm(grad, dim=1, dtype=acc)
    rows = row_norms.nonzero().squeeze(1)
    return rows, grad.index_select(0, rows), torch.linalg.vector_norm(row_norms)


def fgm_delta(grad: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The FGM step ``r = eps · g / ‖g‖₂`` as ``(rows, r[rows])`` over the rows with a
    gradient, or ``None`` when ``‖g‖`` is 0 or not finite (e.g. an fp16 overflow). A loss
    scale on ``g`` cancels out.

    Example:
        >>> rows, r = fgm_delta(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), eps=1.0)
        >>> rows.tolist(), r.tolist()
        ([1], [[0.6000000238418579, 0.800000011920929]])
    """
    rows, g, norm = grad_rows(grad)
    norm_value = float(norm)
    if norm_value == 0.0 or not math.isfinite(norm_value):
        return None
    return rows, g.to(norm.dtype).mul(eps / norm_value)


class FGM(Trick):
    """Fast gradient method on the input embedding: ``attack()`` adds ``eps · g/‖g‖`` to the
    embedding rows the last backward reached, ``restore()`` puts them back bit-exactly.

    Drop-in object and :class:`~danlu.Trick` in one: inside ``Tricks`` it runs the
    adversarial forward+backward (``closure()``) after every micro-batch's backward, so
    the final gradient is clean + adversarial.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through).
        eps: the perturbation norm (> 0); 1.0 is the usual choice for BERT, 0.1–0.5 for
            small randomly initialised embeddings.
        target: which embedding to perturb (see :func:`find_embedding`); default the
            model's input embedding.

    Example:
        >>> fgm = FGM(model, eps=1.0)
        >>> loss_fn(model, batch).backward()
        >>> with fgm.perturbed():                 # or fgm.attack(); ...; fgm.restore()
        ...     loss_fn(model, batch).backward()
        >>> optimizer.step(); optimizer.zero_grad()
        >>> tricks = danlu.Tricks([FGM(model, eps=1.0)])   # the same, composed
    """

    order = Order.ADVERSARIAL

    def __init__(self, model: nn.Module, eps: float = 1.0, target: Target = None) -> None:
        self.eps = check_positive("eps", eps)
        self.weight = find_embedding(model, target)
        self._rows: torch.Tensor | None = None
        self._backup: torch.Tensor | None = None

    @property
    def attacked(self) -> bool:
        """Whether the embedding is currently perturbed."""
        return self._rows is not None

    def attack(self) -> bool:
        """Perturb the rows with a gradient; returns False (and changes nothing) when there
        is no gradient or its norm is 0 or not finite."""
        if self._rows is not None:
            raise RuntimeError("FGM.attack() called twice: call restore() first")
        grad = self.weight.grad
        step = None if grad is None else fgm_delta(grad, self.eps)
        if step is None:
            return False
        rows, r = step
        with torch.no_grad():
            backup = self.weight.index_select(0, rows)
            self.weight.index_copy_(0, rows, (backup + r).to(backup.dtype))
        self._rows, self._backup = rows, backup
        return True

    def restore(self) -> None:
        """Copy the original rows back (bit-exact); a no-op when not attacked."""
        if self._rows is None:
            return
        with torch.no_grad():
            self.weight.index_copy_(0, self._rows, self._backup)
        self._rows = self._backup = None

    @contextlib.contextmanager
    def perturbed(self) -> Iterator[FGM]:
        """``attack()`` on entry, ``restore()`` on exit (also on an exception)."""
        self.attack()
        try:
            yield self
        finally:
            self.restore()

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        with self.perturbed():
            closure()

    def __repr__(self) -> str:
        return f"FGM(eps={self.eps})"
