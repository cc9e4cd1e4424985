"""FGM: the fast gradient method on the input embedding (Miyato et al., 2017,
https://arxiv.org/abs/1605.07725), touching only the embedding rows the batch used.

The textbook version clones, perturbs and copies back the whole embedding table (30k × 384
for BERT) on every step. Only the rows with a non-zero gradient can move, so danlu finds
them in one read of the gradient (which also gives ‖g‖) and backs up, perturbs and
restores just those rows.

The direction is this micro-batch's own gradient: a tensor hook records the gradient each
backward brings to the embedding before it is added to ``.grad``, which under accumulation
also holds the window's earlier micro-batches.

``mode="hook"`` perturbs the embedding's *output* instead (``r = eps · g/‖g‖`` with ``g``
the gradient of the output), through a forward hook: it works when the weight is frozen
(LoRA/PEFT) or sharded (FSDP2), never writes the weight, and does not touch an output layer
tied to the embedding (GPT-2's ``lm_head``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from danlu._embeddings import Target, check_positive, find_embedding, find_embedding_module
from danlu.core import Order, State, Trick, unwrap_model

if TYPE_CHECKING:
    from danlu.adversarial._output import OutputAttack

Mode = Literal["weight", "hook"]

__all__ = ["accumulate_dtype", "grad_rows", "fgm_delta", "trainable_embedding", "FGM"]


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


def trainable_embedding(model: nn.Module, target: Target, trick: str) -> nn.Parameter:
    """:func:`find_embedding`'s weight, refused when it is frozen (it gets no gradient, so
    a weight-space attack would silently do nothing) or an FSDP2 shard (``DTensor``: its
    rows are spread over the ranks)."""
    weight = find_embedding(model, target)
    if not weight.requires_grad:
        raise ValueError(
            f"{trick} perturbs the input embedding's weight {tuple(weight.shape)}, which is "
            "frozen (requires_grad=False: frozen embeddings, LoRA/PEFT adapters), so it gets "
            "no gradient and the attack would do nothing. Unfreeze it "
            "(weight.requires_grad_(True)), or perturb the embedding's output through a "
            f"forward hook: {trick}(model, ..., mode='hook') (FreeLB always does)"
        )
    tied = [m for m in unwrap_model(model).modules() if getattr(m, "weight", None) is weight]
    if len(tied) > 1:
        warnings.warn(
            f"{trick}: the input embedding's weight is tied to "
            f"{', '.join(type(m).__name__ for m in tied[1:])} (an output layer, as in GPT-2 / "
            "BERT-MLM heads): weight mode perturbs that layer too, over every row its dense "
            f"gradient reaches. {trick}(model, ..., mode='hook') perturbs the input only",
            stacklevel=3,
        )
    if hasattr(weight, "device_mesh"):
        raise ValueError(
            f"{trick} in weight mode perturbs rows of the input embedding's weight, which is "
            "sharded by FSDP2 (a DTensor: each rank holds a slice of the rows). Attack the "
            f"embedding's output instead: {trick}(model, ..., mode='hook') (FreeLB always "
            "does)"
        )
    return weight


def check_mode(mode: str) -> str:
    if mode not in ("weight", "hook"):
        raise ValueError(
            f"mode must be 'weight' (perturb the embedding weight's rows) or 'hook' (perturb "
            f"the embedding's output: frozen, LoRA or sharded embeddings), got {mode!r}"
        )
    return mode


def output_attack(model: nn.Module, target: Target) -> OutputAttack:
    """The hook-mode attack on the output of :func:`find_embedding_module` (imported on
    first use)."""
    from danlu.adversarial._output import OutputAttack

    return OutputAttack(find_embedding_module(model, target))


def record_incoming_grad(weight: torch.Tensor, owner: object) -> torch.utils.hooks.RemovableHandle:
    """Keep the gradient a backward brings to ``weight`` in ``owner._incoming`` when it is
    added onto an existing ``.grad`` (a later micro-batch of an accumulation window); None
    when ``.grad`` was empty, so ``.grad`` is then that backward's gradient alone. Holding
    only those avoids a copy: autograd takes the incoming tensor as ``.grad`` when nothing
    else refers to it. The hook holds ``owner`` only weakly."""
    ref = weakref.ref(owner)

    def hook(grad: torch.Tensor) -> None:
        obj = ref()
        if obj is not None:
            obj._incoming = None if weight.grad is None else grad

    return weight.register_hook(hook)


class FGM(Trick):
    """Fast gradient method on the input embedding: ``attack()`` adds ``eps · g/‖g‖`` to the
    embedding rows the last backward reached, ``restore()`` puts them back bit-exactly.

    Drop-in object and :class:`~danlu.Trick` in one: inside ``Tricks`` it runs the
    adversarial forward+backward (``closure()``) after every micro-batch's backward, so
    the final gradient is clean + adversarial. The direction ``g`` is the gradient of the
    last backward alone (under accumulation, not the window's running sum), and when there
    is nothing to attack with (no gradient, ‖g‖ 0 or not finite) no adversarial pass runs.

    ``mode="hook"`` adds ``eps · g/‖g‖`` to the embedding's output (``g`` its gradient in
    the last backward, recorded by a forward hook that stays on the module until
    :meth:`remove`), the way to attack a frozen (LoRA/PEFT), FSDP2-sharded or output-tied
    (GPT-2 LM) embedding; the weight is never written. Call :meth:`attack` right after the
    backward: the next grad-enabled forward starts a new recording.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through).
        eps: the perturbation norm (> 0); 1.0 is the usual choice for BERT, 0.1–0.5 for
            small randomly initialised embeddings.
        target: which embedding to perturb (see :func:`find_embedding`); default the
            model's input embedding. In weight mode a frozen or sharded embedding is
            refused with a ValueError that points to the hook mode.
        mode: ``"weight"`` (default: the rows the batch used) or ``"hook"`` (the output).

    Example:
        >>> fgm = FGM(model, eps=1.0)
        >>> loss_fn(model, batch).backward()
        >>> with fgm.perturbed():                 # or fgm.attack(); ...; fgm.restore()
        ...     loss_fn(model, batch).backward()
        >>> optimizer.step(); optimizer.zero_grad()
        >>> tricks = danlu.Tricks([FGM(model, eps=1.0)])   # the same, composed
        >>> lora_fgm = FGM(peft_model, eps=1.0, mode="hook")  # frozen base embedding
    """

    order = Order.ADVERSARIAL

    def __init__(
        self, model: nn.Module, eps: float = 1.0, target: Target = None, mode: Mode = "weight"
    ) -> None:
        self.eps = check_positive("eps", eps)
        self.mode = check_mode(mode)
        self._rows: torch.Tensor | None = None
        self._backup: torch.Tensor | None = None
        self._incoming: torch.Tensor | None = None
        self._output: OutputAttack | None = None
        if mode == "hook":
            self.weight = find_embedding(model, target)
            self._output = output_attack(model, target)
            return
        self.weight = trainable_embedding(model, target, "FGM")
        self._hook = record_incoming_grad(self.weight, self)

    def own_grad(self) -> torch.Tensor | None:
        """The embedding gradient of the last backward alone (falls back to ``.grad`` when
        no backward has run since the last attack)."""
        return self.weight.grad if self._incoming is None else self._incoming

    @property
    def attacked(self) -> bool:
        """Whether the embedding is currently perturbed."""
        if self._output is not None:
            return self._output.delta is not None
        return self._rows is not None

    def attack(self) -> bool:
        """Perturb the rows with a gradient (or, in hook mode, the output); returns False
        (and changes nothing) when there is no gradient or its norm is 0 or not finite."""
        if self.attacked:
            raise RuntimeError("FGM.attack() called twice: call restore() first")
        if self._output is not None:
            self._output.delta = self._output.take_step(self.eps)
            return self._output.delta is not None
        grad, self._incoming = self.own_grad(), None
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
        """Copy the original rows back (bit-exact), or stop perturbing the output; a no-op
        when not attacked."""
        self._incoming = None  # the adversarial backward's gradient steers nothing
        if self._output is not None and self._output.delta is not None:
            self._output.delta = self._output.grad = None  # the adversarial gradient too
        if self._rows is None:
            return
        with torch.no_grad():
            self.weight.index_copy_(0, self._rows, self._backup)
        self._rows = self._backup = None

    def remove(self) -> None:
        """Take this FGM's hook off the model (the gradient hook on the weight, or the
        forward hook of the hook mode); the object is unusable afterwards."""
        self.restore()
        if self._output is not None:
            self._output.remove()
        else:
            self._hook.remove()

    @contextlib.contextmanager
    def perturbed(self) -> Iterator[FGM]:
        """``attack()`` on entry, ``restore()`` on exit (also on an exception)."""
        self.attack()
        try:
            yield self
        finally:
            self.restore()

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        if not self.attack():
            return  # nothing moved: a second clean pass would double the gradient
        try:
            closure()
        finally:
            self.restore()

    def __repr__(self) -> str:
        return f"FGM(eps={self.eps}, mode={self.mode!r})"
