"""Random noise on the input-embedding output: Gaussian (the ERNIE-kit strategy, "when
augmentation is impossible, add noise after the embedding") and NEFTune (Jain et al. 2023,
https://arxiv.org/abs/2310.05914): uniform noise in ``[-1, 1]`` scaled by ``alpha/sqrt(L·d)``
(L the padded sequence length, d the embedding size, as in Hugging Face's
``neftune_noise_alpha``).

The noise is added by a forward hook on the embedding module (:func:`output_hook`), only
while the module is in training mode, so frozen, LoRA-wrapped or tied embeddings work and the
weight is never written. Cost: one extra ``randn``/``rand`` of the embedding output per
forward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from danlu._embeddings import (
    GeneratorTrick,
    Target,
    check_positive,
    find_embedding_module,
    output_hook,
)
from danlu.core import Order, State

__all__ = ["gaussian_noise", "neftune_noise", "GaussianNoise", "NEFTune"]


def _draw(embeds: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    # drawn in fp32 on the CPU when a CPU generator is given (reproducible on any device)
    dev = generator.device if generator is not None else embeds.device
    noise = torch.empty(embeds.shape, dtype=torch.float32, device=dev)
    if kind == "normal":
        noise.normal_(generator=generator)
    else:
        noise.uniform_(-1.0, 1.0, generator=generator)
    return noise.to(embeds.device)


def gaussian_noise(
    embeds: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``embeds + std · N(0, I)`` (noise drawn in fp32, the sum in ``embeds``' dtype).

    Example:
        >>> x = torch.zeros(2, 3, 4)
        >>> y = gaussian_noise(x, 0.1, torch.Generator().manual_seed(0))
        >>> y.shape, bool(y.std() < 0.2)
        (torch.Size([2, 3, 4]), True)
    """
    check_positive("std", std)
    return embeds + (_draw(embeds, "normal", generator) * std).to(embeds.dtype)


def neftune_noise(
    embeds: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """NEFTune: ``embeds + U(-1, 1) · alpha / sqrt(L · d)`` for ``(B, L, d)`` embeddings.

    Example:
        >>> x = torch.zeros(1, 4, 25)
        >>> float(neftune_noise(x, 5.0, torch.Generator()).abs().max()) <= 5.0 / 10
        True
    """
    check_positive("alpha", alpha)
    if embeds.dim() != 3:
        raise ValueError(
            f"NEFTune needs (batch, length, dim) embeddings, got shape {tuple(embeds.shape)}"
        )
    scale = alpha / math.sqrt(embeds.shape[1] * embeds.shape[2])
    return embeds + (_draw(embeds, "uniform", generator) * scale).to(embeds.dtype)


class _EmbeddingNoise(GeneratorTrick):
    """Shared drop-in / Trick shape of the two noises."""

    order = Order.DATA  # outermost in the loss chain: every forward of the step is noisy

    def __init__(self, model: nn.Module, target: Target, generator: torch.Generator | None):
        self.module = find_embedding_module(model, target)
        self.generator = generator

    def add(self, embeds: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _hook(self, output: torch.Tensor, args: tuple) -> torch.Tensor | None:
        return self.add(output) if self.module.training else None

    @contextlib.contextmanager
    def noisy(self) -> Iterator[None]:
        """Forwards inside the block (in training mode) get noisy embeddings."""
        with output_hook(self.module, self._hook):
            yield

    def compute_loss(self, forward, batch, state: State):
        with self.noisy():
            return forward(batch)


class GaussianNoise(_EmbeddingNoise):
    """Gaussian noise ``std · N(0, I)`` on the input-embedding output during training.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through).
        std: noise standard deviation (> 0), in the embedding's units; start near 0.1 x the
            embedding output's own std (BERT's word embeddings: std about 0.05, so
            ``std=0.005``-``0.01``).
        target: which embedding (see :func:`danlu.adversarial.find_embedding`).
        generator: a ``torch.Generator`` for the noise (checkpointed in ``state_dict``).

    Example:
        >>> noise = GaussianNoise(model, std=0.01)
        >>> with noise.noisy():                       # a hand-written loop
        ...     loss = loss_fn(model, batch)[0]
        >>> tricks = danlu.Tricks([GaussianNoise(model, std=0.01)])   # composed
    """

    def __init__(
        self,
        model: nn.Module,
        std: float = 0.01,
        target: Target = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.std = check_positive("std", std)
        super().__init__(model, target, generator)

    def add(self, embeds: torch.Tensor) -> torch.Tensor:
        return gaussian_noise(embeds, self.std, self.generator)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class NEFTune(_EmbeddingNoise):
    """NEFTune noise (uniform, ``alpha/sqrt(L·d)``) on the input-embedding output during
    training. Hugging Face ``Trainer(neftune_noise_alpha=...)`` does the same for its own
    loop; this is the trick for any loop and composes with the other tricks.

    Args:
        model: the model.
        alpha: noise scale (> 0); the paper uses 5, 10 or 15 for instruction tuning.
        target: which embedding (see :func:`danlu.adversarial.find_embedding`).
        generator: a ``torch.Generator`` for the noise.

    Example:
        >>> tricks = danlu.Tricks([NEFTune(model, alpha=5.0)])
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 5.0,
        target: Target = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.alpha = check_positive("alpha", alpha)
        super().__init__(model, target, generator)

    def add(self, embeds: torch.Tensor) -> torch.Tensor:
        return neftune_noise(embeds, self.alpha, self.generator)

    def __repr__(self) -> str:
        return f"NEFTune(alpha={self.alpha})"
