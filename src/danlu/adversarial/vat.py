"""VAT, virtual adversarial training (Miyato et al. 2018, https://arxiv.org/abs/1704.03976;
for text: Miyato et al. 2017, https://arxiv.org/abs/1605.07725) on the input-embedding
output.

The perturbation is the direction in which the prediction changes fastest, found by power
iteration from a random start, without labels::

    d = xi · unit(d0)                      d0 ~ N(0, I), zero on padding
    repeat steps times:  d = xi · unit(∇_d KL(p_clean ‖ p(x + d)))
    r_adv = eps · unit(d)
    vat   = KL(p_clean ‖ p(x + r_adv))       p_clean detached: a fixed target

``unit`` normalises each example (over its positions and embedding dims) to L2 norm 1.
The term needs no label, so it also serves as a consistency loss on unlabelled batches.
Cost per step: ``steps + 1`` extra forwards, ``steps`` extra (input-only) backwards and the
backward of the term.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu._embeddings import Target, check_positive, check_steps, find_embedding_module
from danlu._embeddings import output_hook
from danlu.adversarial.noise import _draw
from danlu.core import Order, State, Trick
from danlu.loss._swap import as_float
from danlu.loss.rdrop import _check_alpha

__all__ = ["kl_to_clean", "vat_perturbation", "vat_loss", "VAT"]

Logits = Callable[[torch.Tensor], torch.Tensor]


def kl_to_clean(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_clean ‖ p)`` of the softmaxes over the last dim, summed over classes and
    averaged over the other dims, in fp32; ``clean_logits`` is detached.

    Example:
        >>> a = torch.tensor([[2.0, 0.0]])
        >>> float(kl_to_clean(a, a))
        0.0
    """
    target = F.log_softmax(as_float(clean_logits.detach()), dim=-1)
    lp = F.log_softmax(as_float(logits), dim=-1)
    return F.kl_div(lp, target, log_target=True, reduction="none").sum(-1).mean()


def _unit(d: torch.Tensor) -> torch.Tensor:
    """Each example (dim 0) scaled to L2 norm 1 in fp32; an all-zero example stays zero."""
    d = d.float()
    norm = torch.linalg.vector_norm(d.reshape(d.shape[0], -1), dim=1)
    return d / norm.clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))


def vat_perturbation(
    forward: Logits,
    clean_logits: torch.Tensor,
    d0: torch.Tensor,
    xi: float = 0.1,
    eps: float = 1.0,
    steps: int = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The virtual adversarial perturbation ``r_adv`` (detached, fp32) by power iteration.

    Args:
        forward: ``forward(delta) -> logits`` of the model with ``delta`` added to its input
            embeddings (e.g. ``lambda d: model(inputs_embeds=x + d).logits``).
        clean_logits: logits without perturbation (detached here).
        d0: the random start, shaped like the embeddings (``randn``; any scale).
        xi: finite-difference step (> 0); 1e-6 for images in the paper, 0.1 for text
            embeddings (Miyato et al. 2017) and for fp16/bf16.
        eps: L2 norm of ``r_adv`` per example (> 0).
        steps: power iterations (>= 1; the paper finds one enough).
        mask: optional ``(B, L)`` mask, nonzero on real tokens; padding gets no perturbation.

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> x = torch.randn(2, 4)
        >>> r = vat_perturbation(lambda d: lin(x + d), lin(x), torch.randn(2, 4), eps=2.0)
        >>> torch.linalg.vector_norm(r, dim=1)
        tensor([2.0000, 2.0000])
    """
    xi, eps, steps = check_positive("xi", xi), check_positive("eps", eps), check_steps(steps)
    m = None if mask is None else mask.to(torch.float32).unsqueeze(-1)
    d = _unit(d0 if m is None else d0 * m)
    with torch.enable_grad():
        for _ in range(steps):
            d = (xi * d).requires_grad_()
            (g,) = torch.autograd.grad(kl_to_clean(clean_logits, forward(d)), d)
            d = _unit(g if m is None else g * m)
    return eps * d.detach()


def vat_loss(
    forward: Logits,
    clean_logits: torch.Tensor,
    d0: torch.Tensor,
    xi: float = 0.1,
    eps: float = 1.0,
    steps: int = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(p_clean ‖ p(x + r_adv))`` with ``r_adv`` from :func:`vat_perturbation` (same
    arguments); the gradient flows through the perturbed forward only.

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> x = torch.randn(2, 4)
        >>> float(vat_loss(lambda d: lin(x + d), lin(x), torch.randn(2, 4))) > 0
        True
    """
    r_adv = vat_perturbation(forward, clean_logits, d0, xi, eps, steps, mask)
    return kl_to_clean(clean_logits, forward(r_adv))


def _logits_of(out: Any) -> torch.Tensor:
    """Logits from ``logits``, ``(loss, logits)`` or a model output with ``.logits``."""
    if isinstance(out, tuple | list):
        out = out[1]
    out = getattr(out, "logits", out)
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"VAT needs logits: the forward must return logits, (loss, logits) or an output "
            f"with .logits, got {type(out).__name__}; make loss_fn return (loss, logits)"
        )
    return out


def _model_logits(model: nn.Module, batch: Any) -> torch.Tensor:
    return _logits_of(model(**batch) if isinstance(batch, Mapping) else model(batch))


class VAT(Trick):
    """Virtual adversarial training on the input-embedding output (a forward hook, so frozen
    and LoRA-wrapped embeddings work and no weight is written).

    As a :class:`danlu.Trick` it adds ``alpha · vat`` to the loss of each micro-batch: by
    default on the labelled batch, its extra forwards run through the inner loss chain and
    the chain's own forward is the clean side; with ``batch_fn`` (e.g. ``lambda b:
    b["unlabelled"]`` beside :class:`danlu.semi.Unlabelled`) on another batch, through
    ``logits_fn(model, batch)``.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through).
        alpha: weight of the term (>= 0); 1.0 in the paper.
        eps: per-example L2 norm of the perturbation (> 0); Miyato et al. use 5.0 on
            normalised word embeddings, start at 1.0 for BERT-sized ones.
        xi: finite-difference step of the power iteration (> 0).
        steps: power iterations (>= 1).
        target: which embedding (see :func:`danlu.adversarial.find_embedding`).
        batch_fn: ``batch_fn(batch) -> batch`` the term is computed on (default: the batch).
        logits_fn: ``logits_fn(model, batch) -> logits`` for ``batch_fn``'s batch (default:
            ``model(**batch)`` or ``model(batch)``, taking ``.logits`` when present).
        generator: a ``torch.Generator`` for the random start (checkpointed).

    Padding positions (``padding_idx`` of the embedding) are never perturbed.

    Example:
        >>> vat = VAT(model, eps=1.0)
        >>> term, logits = vat.loss(lambda: model(batch["input_ids"]))   # hand-written loop
        >>> loss = F.cross_entropy(logits, batch["labels"]) + term
        >>> tricks = danlu.Tricks([VAT(model, alpha=1.0, eps=1.0)])     # composed
    """

    order = Order.LOSS_WRAP

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 1.0,
        eps: float = 1.0,
        xi: float = 0.1,
        steps: int = 1,
        target: Target = None,
        batch_fn: Callable[[Any], Any] | None = None,
        logits_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        self.eps = check_positive("eps", eps)
        self.xi = check_positive("xi", xi)
        self.steps = check_steps(steps)
        self.module = find_embedding_module(model, target)
        self.batch_fn = batch_fn
        self.logits_fn = logits_fn
        self.generator = generator

    @contextlib.contextmanager
    def _added(self, delta: torch.Tensor) -> Iterator[None]:
        with output_hook(self.module, lambda out, args: out + delta.to(out.dtype)):
            yield

    def loss(self, run: Callable[[], Any]) -> tuple[torch.Tensor, Any]:
        """``(vat_term, run's clean output)``: ``run()`` is the clean forward (its output is
        returned as is, for the supervised loss), then ``steps + 1`` perturbed ones.
        ``run()`` returns logits, ``(loss, logits)`` or an output with ``.logits``."""
        seen: dict[str, torch.Tensor] = {}

        def record(out: torch.Tensor, args: tuple) -> None:
            seen["shape"], seen["ids"] = out, args[0] if args else None

        with output_hook(self.module, record):
            clean = run()
        if "shape" not in seen:
            raise ValueError("VAT: run() never called the embedding module; pass target=")
        embeds, ids = seen["shape"], seen["ids"]
        pad = getattr(self.module, "padding_idx", None)
        mask = ids != pad if pad is not None and isinstance(ids, torch.Tensor) else None
        d0 = _draw(embeds, "normal", self.generator)

        def forward(delta: torch.Tensor) -> torch.Tensor:
            with self._added(delta):
                return _logits_of(run())

        term = vat_loss(forward, _logits_of(clean), d0, self.xi, self.eps, self.steps, mask)
        return term, clean

    def compute_loss(self, forward, batch: Any, state: State):
        if self.batch_fn is None and self.logits_fn is None:
            term, (loss, logits) = self.loss(lambda: forward(batch))
        else:
            other = batch if self.batch_fn is None else self.batch_fn(batch)
            logits_fn = self.logits_fn or _model_logits
            term, _ = self.loss(lambda: logits_fn(state.model, other))
            loss, logits = forward(batch)
        state.extra["vat"] = term.detach()
        return loss + self.alpha * term, logits

    def state_dict(self) -> dict:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.generator is not None and "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])
        elif state_dict:
            super().load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"VAT(alpha={self.alpha}, eps={self.eps}, xi={self.xi}, steps={self.steps})"
