"""FreeLB (Zhu et al., 2020, https://arxiv.org/abs/1909.11764): K ascent steps on a
perturbation ``delta`` of the input-embedding *output*, with the parameter gradients of all
K steps accumulated (each loss scaled by 1/K), as in the authors' Hugging Face code.

``delta`` is added by a forward hook on the input embedding, so any model works (no
``inputs_embeds`` plumbing); the hook exists only while a perturbed forward runs, and no
weight is ever modified.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from danlu._embeddings import (
    GeneratorTrick,
    Target,
    check_positive,
    check_steps,
    find_embedding_module,
)
from danlu.core import Order, State

__all__ = ["freelb_init", "freelb_ascent", "FreeLB"]


def freelb_init(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    init_mag: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The initial perturbation: uniform in [-1, 1] on unmasked positions, scaled by
    ``init_mag / sqrt(length · dim)`` per example (zeros when ``init_mag == 0``).

    Example:
        >>> d = freelb_init(torch.zeros(2, 3, 4), torch.ones(2, 3), 0.1, torch.Generator())
        >>> d.shape
        torch.Size([2, 3, 4])
    """
    if init_mag == 0:
        return torch.zeros_like(embeds)
    mask = mask.to(embeds.dtype).unsqueeze(-1)
    noise = torch.empty(embeds.shape, dtype=embeds.dtype).uniform_(-1, 1, generator=generator)
    dims = mask.sum(dim=(1, 2)).clamp_min(1) * embeds.shape[-1]
    return noise.to(embeds.device) * mask * (init_mag / dims.sqrt()).view(-1, 1, 1)


def freelb_ascent(
    delta: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float | None
) -> torch.Tensor:
    """One ascent step ``delta + alpha · g/‖g‖`` (per-example L2 norm), then each example's
    delta is scaled back to norm ``eps`` when larger (``eps=None``: unbounded). A loss
    scale on ``g`` cancels out; a non-finite ``g`` leaves ``delta`` unchanged.

    Example:
        >>> freelb_ascent(torch.zeros(1, 1, 2), torch.tensor([[[3.0, 4.0]]]), 1.0, None)
        tensor([[[0.6000, 0.8000]]])
    """
    n = delta.shape[0]
    g = grad.to(torch.promote_types(grad.dtype, torch.float32))
    g_norm = torch.linalg.vector_norm(g.reshape(n, -1), dim=1)
    if not bool(torch.isfinite(g_norm).all()):
        return delta
    out = delta.to(g.dtype) + alpha * g / g_norm.clamp_min(1e-8).view(-1, *[1] * (g.dim() - 1))
    if eps is not None:
        d_norm = torch.linalg.vector_norm(out.reshape(n, -1), dim=1)
        scale = torch.where(d_norm > eps, eps / d_norm, torch.ones_like(d_norm))
        out = out * scale.view(-1, *[1] * (g.dim() - 1))
    return out.to(delta.dtype)


class FreeLB(GeneratorTrick):
    """FreeLB adversarial training on the input-embedding output.

    Inside ``Tricks`` the main forward is ascent step 1 (with the random init) and
    ``steps - 1`` closures follow, every loss scaled by ``1/steps``: K forward+backward
    passes in all, the cost of PGD-(K-1). ``state.loss`` is then the first step's loss
    divided by ``steps``.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through).
        steps: ascent steps K (>= 1); 2–3 in the paper.
        alpha: ascent step size (adv-lr, > 0); 0.03–0.1.
        eps: per-example L2 bound on delta (adv-max-norm); ``None`` for unbounded (the
            paper's usual setting).
        init_mag: magnitude of the uniform random init (adv-init-mag, >= 0); padding
            positions (``padding_idx`` of the embedding) get no init noise.
        target: which embedding's output to perturb (see :func:`find_embedding`).
        generator: a ``torch.Generator`` for the init (its state is checkpointed).

    Example:
        >>> freelb = FreeLB(model, steps=3, alpha=0.1)
        >>> loss = freelb.run(lambda: loss_fn(model, batch))   # K forward+backward passes
        >>> optimizer.step(); optimizer.zero_grad()
        >>> tricks = danlu.Tricks([FreeLB(model, steps=3, alpha=0.1)])   # composed
    """

    order = Order.ADVERSARIAL

    def __init__(
        self,
        model: nn.Module,
        steps: int = 3,
        alpha: float = 0.1,
        eps: float | None = None,
        init_mag: float = 0.1,
        target: Target = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.steps = check_steps(steps)
        self.alpha = check_positive("alpha", alpha)
        self.eps = None if eps is None else check_positive("eps", eps)
        if not (isinstance(init_mag, int | float) and init_mag >= 0 and math.isfinite(init_mag)):
            raise ValueError(f"init_mag must be a finite number >= 0, got {init_mag!r}")
        self.init_mag = float(init_mag)
        self.module = find_embedding_module(model, target)
        self.generator = generator
        self.delta: torch.Tensor | None = None
        self._in_attack = False

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.delta is None:
            ids = args[0]
            pad = getattr(module, "padding_idx", None)
            mask = ids != pad if pad is not None else torch.ones_like(ids, dtype=torch.bool)
            self.delta = freelb_init(output.detach(), mask, self.init_mag, self.generator)
            self.delta.requires_grad_()
        elif self.delta.shape != output.shape:
            raise ValueError(
                f"FreeLB: the embedding output changed shape from {tuple(self.delta.shape)} "
                f"to {tuple(output.shape)} within one batch; call reset() between batches"
            )
        return output + self.delta.to(output.dtype)

    @contextlib.contextmanager
    def perturbed(self) -> Iterator[FreeLB]:
        """Forwards inside add ``delta`` to the embedding output (created on first use)."""
        handle = self.module.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def reset(self) -> None:
        """Forget delta: the next perturbed forward starts a new batch."""
        self.delta = None

    def ascend(self) -> None:
        """One ascent step on delta from its gradient (after a backward)."""
        if self.delta is None or self.delta.grad is None:
            raise RuntimeError("FreeLB.ascend() needs a perturbed forward and backward first")
        new = freelb_ascent(self.delta.detach(), self.delta.grad, self.alpha, self.eps)
        self.delta = new.requires_grad_()

    def run(
        self,
        closure: Callable[[], torch.Tensor],
        scaler: torch.amp.GradScaler | None = None,
    ) -> torch.Tensor:
        """All K steps on one batch: ``closure()`` returns the loss (forward only); each
        loss / K is back-propagated (through ``scaler`` when given). Returns the mean loss.
        Gradients accumulate onto whatever ``.grad`` already holds."""
        self.reset()
        total = torch.zeros(())
        try:
            for k in range(self.steps):
                if k:
                    self.ascend()
                with self.perturbed():
                    loss = closure() / self.steps
                (scaler.scale(loss) if scaler is not None else loss).backward()
                total = total + loss.detach().float().cpu()
        finally:
            self.reset()
        return total

    # ----------------------------------------------------------------- Trick hooks
    def on_batch(self, batch, state: State):
        self.reset()
        return batch

    def compute_loss(self, forward, batch, state: State):
        with self.perturbed():
            loss, logits = forward(batch)
        return loss / self.steps, logits

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        try:
            for _ in range(self.steps - 1):
                self.ascend()
                closure()
        finally:
            self.reset()

    def __repr__(self) -> str:
        return f"FreeLB(steps={self.steps}, alpha={self.alpha}, eps={self.eps})"
