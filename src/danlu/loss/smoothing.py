"""Label smoothing (Szegedy et al. 2016, https://arxiv.org/abs/1512.00567) and
temperature-scaled cross-entropy as loss-swap tricks.

Label smoothing is ``F.cross_entropy(label_smoothing=eps)``: the target becomes
``(1 - eps) · onehot + eps / C``. Temperature-scaled CE divides the logits by ``T`` before
the softmax: ``T > 1`` softens the predicted distribution (smaller gradients on confident
examples), ``T < 1`` sharpens it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from danlu._checks import check_ignore_index, check_temperature
from danlu.loss._swap import LossSwap

__all__ = ["temperature_cross_entropy", "LabelSmoothing", "TemperatureCE"]


def _check_eps(eps: float, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (0.1 is the usual value), got {eps!r}")
    return float(eps)


def temperature_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0, **kwargs: Any
) -> torch.Tensor:
    """``F.cross_entropy(logits / temperature, target, **kwargs)``.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices (or class probabilities), as for ``F.cross_entropy``.
        temperature: > 0; 1 is plain cross-entropy.
        **kwargs: ``ignore_index``, ``reduction``, ``label_smoothing``, ``weight``.

    Example:
        >>> logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> temperature_cross_entropy(logits, target, temperature=2.0)   # CE of [1, 0]
        tensor(0.3133)
    """
    temperature = check_temperature(temperature, "1 = plain cross-entropy")
    if logits.dim() >= 2 and target.shape[:1] != logits.shape[:1]:
        raise ValueError(
            f"target must have one entry per row of logits ({logits.shape[0]} rows), got shape "
            f"{tuple(target.shape)}"
        )
    return F.cross_entropy(logits / temperature, target, **kwargs)


class LabelSmoothing(LossSwap):
    """Trick: train with label-smoothed cross-entropy on the model's logits.

    Args:
        eps: smoothing in [0, 1]; 0.1 is the common choice.
        ignore_index: labels equal to it are skipped (default -100).
        target_key / target_fn: where the labels are (see :class:`~danlu.loss.Focal`).

    Example:
        >>> import danlu
        >>> tricks = danlu.Tricks([LabelSmoothing(0.1)])   # loss_fn returns (loss, logits)
    """

    def __init__(
        self,
        eps: float = 0.1,
        *,
        ignore_index: int = -100,
        target_key: str = "labels",
        target_fn: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(target_key, target_fn)
        self.eps, self.ignore_index = _check_eps(eps), check_ignore_index(ignore_index)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits,
            target,
            ignore_index=self.ignore_index,
            label_smoothing=self.eps,
        )

    def __repr__(self) -> str:
        return f"LabelSmoothing(eps={self.eps})"


class TemperatureCE(LossSwap):
    """Trick: train with cross-entropy of ``logits / T``.

    Args:
        temperature: > 0 (``T > 1`` softens, ``T < 1`` sharpens).
        label_smoothing: optional smoothing in [0, 1] on top.
        ignore_index, target_key / target_fn: as for :class:`LabelSmoothing`.

    Example:
        >>> import danlu
        >>> tricks = danlu.Tricks([TemperatureCE(2.0)])
    """

    def __init__(
        self,
        temperature: float,
        *,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        target_key: str = "labels",
        target_fn: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(target_key, target_fn)
        self.temperature = check_temperature(temperature, "1 = plain cross-entropy")
        self.label_smoothing, self.ignore_index = (
            _check_eps(label_smoothing, "label_smoothing"),
            ignore_index,
        )

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return temperature_cross_entropy(
            logits,
            target,
            self.temperature,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )

    def __repr__(self) -> str:
        return f"TemperatureCE(temperature={self.temperature})"
