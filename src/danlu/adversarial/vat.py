"""VAT, virtual adversarial training (Miyato et al. 2018, https://arxiv.org/abs/1704.03976;
on text embeddings: Miyato et al. 2017, https://arxiv.org/abs/1605.07725).

No labels: the target is the model's own clean prediction p (no gradient). The direction is
found by power iteration on the embedding output: start from a random unit ``d`` (per
example), and repeat ``d <- normalise(grad_d KL(p ‖ p(x + xi·d)))``; the perturbation is
``r = eps · d`` and the term ``KL(p ‖ p(x + r))``. Vectors are normalised per example over
the whole ``(L, d)`` embedding output. So VAT is also a consistency term on unlabelled
batches.

Cost per batch: one forward without a graph (clean), ``power_iterations`` forward+backward
passes that touch no parameter gradient, one forward+backward (the term). The power
iteration runs with autocast off: ``xi·d`` would vanish in fp16/bf16 rounding of the
embedding output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from danlu._embeddings import (
    Target,
    check_positive,
    check_steps,
    find_embedding_module,
    output_hook,
)
from danlu.core import State, unwrap_model
from danlu.semi.uda import uda_loss
from danlu.semi.unlabelled import ConsistencyTrick

__all__ = ["normalize_per_example", "vat_direction", "VAT"]

LogitsOf = Callable[[torch.Tensor], torch.Tensor]


def normalize_per_example(d: torch.Tensor) -> torch.Tensor:
    """``d / ‖d‖₂`` with the norm over all dims but the first (zero rows stay zero).

    Example:
        >>> normalize_per_example(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    norm = torch.linalg.vector_norm(d.reshape(d.shape[0], -1), dim=1)
    return d / norm.clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))


def vat_direction(
    logits_of: LogitsOf,
    clean_logits: torch.Tensor,
    d: torch.Tensor,
    xi: float = 1e-3,
    power_iterations: int = 1,
) -> torch.Tensor:
    """The unit (per example) virtual-adversarial direction by power iteration.

    Args:
        logits_of: ``logits_of(delta)`` runs the model with ``delta`` added to the
            embedding output and returns the logits.
        clean_logits: the clean prediction's logits (used as a fixed target).
        d: the random start, shaped like the embedding output.
        xi: finite-difference step (> 0).
        power_iterations: iterations (>= 1; 1 is the paper's and enough).

    Example:
        >>> w = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
        >>> def logits_of(delta):            # a linear "model" on a (1, 1, 2) embedding
        ...     return (torch.ones(1, 1, 2) + delta).reshape(1, 2) @ w.T
        >>> d0 = torch.tensor([[[1.0, 0.0]]])
        >>> vat_direction(logits_of, logits_of(torch.zeros(1, 1, 2)), d0)
        tensor([[[ 0.7071, -0.7071]]])
    """
    target = clean_logits.detach()
    d = normalize_per_example(d.detach().float())
    for _ in range(check_steps(power_iterations)):
        d = (xi * d).requires_grad_()
        kl = uda_loss(target, logits_of(d), temperature=1.0, threshold=None)
        (grad,) = torch.autograd.grad(kl, d)
        d = normalize_per_example(grad.detach())
    return d


class VAT(ConsistencyTrick):
    """VAT on the input-embedding output, as a loss term.

    ``loss = supervised + alpha · KL(p(x) ‖ p(x + r_adv))`` on the labelled batch itself
    (``unlabelled=None``) or on a batch drawn from ``unlabelled`` each micro-batch.

    Args:
        model: the model (its input embedding is found by
            :func:`~danlu.adversarial.find_embedding`; frozen / LoRA embeddings work: only
            the output is perturbed, by a forward hook).
        unlabelled: re-iterable of unlabelled batches, or ``None``.
        alpha: weight of the term (>= 0; 1 in the papers).
        eps: per-example L2 norm of the perturbation (> 0); of the order of one token's
            embedding norm (BERT: about 1).
        xi: power-iteration step (> 0); 1e-3 rather than the paper's 1e-6 because
            ``x + xi·d`` is rounded in fp32.
        power_iterations: >= 1.
        target: which embedding.
        logits_fn: ``logits_fn(model, batch) -> logits`` (default
            :func:`~danlu.semi.default_logits`); on the labelled batch it must ignore the
            labels.
        generator: a ``torch.Generator`` for the random start (checkpointed).

    Example:
        >>> vat = VAT(model, eps=1.0, logits_fn=lambda m, b: m(b["input_ids"]))
        >>> loss = loss_fn(model, batch)[0] + vat.term(model, batch)   # a hand-written loop
        >>> tricks = danlu.Tricks([VAT(model, unlabelled=unlabelled_loader)])   # composed
    """

    name = "vat"

    def __init__(
        self,
        model: nn.Module,
        unlabelled: Iterable[Any] | None = None,
        alpha: float = 1.0,
        eps: float = 1.0,
        xi: float = 1e-3,
        power_iterations: int = 1,
        *,
        target: Target = None,
        logits_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(unlabelled, alpha, logits_fn)
        self.eps = check_positive("eps", eps)
        self.xi = check_positive("xi", xi)
        self.power_iterations = check_steps(power_iterations)
        self.module = find_embedding_module(model, target)
        self.generator = generator

    def _logits_of(self, model: nn.Module, batch: Any) -> LogitsOf:
        def logits_of(delta: torch.Tensor) -> torch.Tensor:
            with output_hook(self.module, lambda out, args: out + delta.to(out.dtype)):
                return self.logits_fn(model, batch)

        return logits_of

    def term(self, model: nn.Module, item: Any, state: State | None = None) -> torch.Tensor:
        """The VAT term on one batch (labels unused)."""
        seen: list[torch.Tensor] = []  # the clean embedding output: shape and device of d
        with output_hook(self.module, lambda out, args: seen.append(out)):
            clean = self.clean_logits(model, item)
        if not seen:
            raise ValueError("VAT: the forward never called the embedding module; pass target=")
        shape, device = seen[0].shape, seen[0].device
        gen_device = self.generator.device if self.generator is not None else device
        d = torch.randn(shape, generator=self.generator, device=gen_device).to(device)
        with torch.autocast(device.type, enabled=False):
            direction = vat_direction(
                self._logits_of(unwrap_model(model), item),
                clean,
                d,
                self.xi,
                self.power_iterations,
            )
        adv = self._logits_of(model, item)(self.eps * direction)
        return uda_loss(clean, adv, temperature=1.0, threshold=None)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        if self.generator is not None:
            sd["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        gen = state_dict.pop("generator", None)
        if gen is not None and self.generator is not None:
            self.generator.set_state(gen)
        super().load_state_dict(state_dict)

    def __repr__(self) -> str:
        return (
            f"VAT(alpha={self.alpha}, eps={self.eps}, xi={self.xi}, "
            f"power_iterations={self.power_iterations})"
        )
