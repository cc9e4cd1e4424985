"""The hook mode of FGM and PGD: perturb the input embedding's *output* instead of its
weight, so a frozen embedding (LoRA/PEFT, a frozen base, an FSDP2-sharded table) can be
attacked and its weight is never written.

One persistent forward hook on the embedding module does two things. In a grad-enabled
forward it makes the output a tensor that requires grad (a frozen embedding's output does
not) and records the gradient the backward brings to it: the sum over the forwards of one
backward (R-Drop's two passes), reset by the first forward after a backward. While a
perturbation is set, it adds it to the output.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from danlu.adversarial.fgm import accumulate_dtype


def _hook(ref: weakref.ref, module: nn.Module, args: tuple, output: torch.Tensor):
    owner = ref()
    return None if owner is None else owner.forward_hook(output)


class OutputAttack:
    """The recording / perturbing forward hook on one embedding module (see the module
    docstring). ``remove()`` takes the hook off."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.grad: torch.Tensor | None = None  # d loss / d output of the last backward
        self.delta: torch.Tensor | None = None  # added to the output while set
        self._fresh = False  # a backward delivered a gradient since the last forward
        ref = weakref.ref(self)  # the model must not keep the trick alive
        self._handle = module.register_forward_hook(lambda m, a, o: _hook(ref, m, a, o))

    def forward_hook(self, output: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"hook mode needs the embedding module to return a tensor, got "
                f"{type(output).__name__}; pass target= the token embedding"
            )
        if self.delta is not None:
            if self.delta.shape != output.shape:
                raise ValueError(
                    f"the perturbed forward's embedding output has shape {tuple(output.shape)} "
                    f"but the attacked batch had {tuple(self.delta.shape)}: run the same "
                    "batch between attack() and restore()"
                )
            output = output + self.delta.to(output.dtype)
        if not torch.is_grad_enabled():
            return output if self.delta is not None else None
        if self._fresh:  # a new forward after a backward: a new batch (or attack step)
            self.grad, self._fresh = None, False
        if not output.requires_grad:  # frozen embedding: make its output a leaf to record
            output = output.detach().requires_grad_()
        output.register_hook(self._record)
        return output

    def _record(self, grad: torch.Tensor) -> None:
        if self.grad is None or self.grad.shape != grad.shape:
            self.grad = grad.detach()
        else:  # another forward of the same backward (R-Drop's second pass)
            self.grad = self.grad + grad.detach()
        self._fresh = True

    def take_step(self, eps: float) -> torch.Tensor | None:
        """``eps · g/‖g‖₂`` of the recorded output gradient (norm over the whole tensor, in
        at least fp32), consuming it; ``None`` when there is none or ‖g‖ is 0 or not
        finite."""
        grad, self.grad = self.grad, None
        if grad is None:
            return None
        acc = accumulate_dtype(grad)
        norm = float(torch.linalg.vector_norm(grad, dtype=acc))
        if norm == 0.0 or not math.isfinite(norm):
            return None
        return grad.to(acc) * (eps / norm)

    def remove(self) -> None:
        self.delta = self.grad = None
        self._handle.remove()
