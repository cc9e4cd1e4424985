"""Token cutmix: replace a span of each sequence's token ids by the same positions of a
partner sequence; the label weight lambda_i is the fraction of the sequence's real tokens
that were kept (Yun et al. 2019 https://arxiv.org/abs/1905.04899, for text as in e.g.
SSMix / TokenMix).

The span is taken at the same positions in both sequences and only where both have real,
non-special tokens, so attention masks, [CLS]/[SEP] and padding never change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from danlu.core import State
from danlu.data.mixup import (
    Generator,
    MixupTrick,
    _check_index,
    _check_lam,
    _fresh,
)

__all__ = ["CutMixResult", "token_cutmix", "TokenCutMix"]


class CutMixResult(NamedTuple):
    """Result of :func:`token_cutmix`: new ids, per-example lambda (N,), swapped positions."""

    input_ids: torch.Tensor
    lam: torch.Tensor
    swapped: torch.Tensor


def _randint(g: torch.Generator | np.random.Generator, high: int) -> int:
    if isinstance(g, np.random.Generator):
        return int(g.integers(high))
    return int(torch.randint(high, (1,), generator=g))


def token_cutmix(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    lam: float,
    index: torch.Tensor,
    generator: Generator = None,
    special_ids: Sequence[int] = (),
) -> CutMixResult:
    """Swap a span of ``k_i = round((1 - lam) * n_i)`` tokens of each sequence ``i`` for the
    tokens at the same positions of sequence ``index[i]``.

    ``n_i`` counts sequence i's real (mask 1), non-special tokens. The span covers ``k_i``
    consecutive positions that are real and non-special in *both* sequences (fewer when
    the partner is shorter); its start is uniform. The returned ``lam[i] = 1 - k_i / n_i``
    is exactly the kept fraction (1 for a sequence paired with itself or without content).

    Args:
        input_ids: (N, T) integer token ids (not modified; a new tensor is returned).
        attention_mask: (N, T) mask, 1 = real token; None: every position is real.
        lam: target kept fraction in [0, 1] (e.g. from ``sample_lambda``).
        index: partner permutation, int64 (N,).
        generator: torch or numpy generator for the span starts.
        special_ids: token ids never swapped (e.g. ``tokenizer.all_special_ids``).

    Example:
        >>> ids = torch.tensor([[101, 5, 6, 7, 8, 102], [101, 9, 9, 9, 102, 0]])
        >>> mask = (ids != 0).long()
        >>> out = token_cutmix(ids, mask, 0.5, torch.tensor([1, 0]),
        ...                    torch.Generator().manual_seed(0), special_ids=[101, 102])
        >>> out.lam
        tensor([0.5000, 0.3333])
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be a (N, T) tensor, got "
            f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids!r}"
        )
    if input_ids.is_floating_point():
        raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
            f"{tuple(input_ids.shape)}"
        )
    lam = _check_lam(lam)
    n = len(input_ids)
    index = _check_index(index, n).cpu()
    g = _fresh(generator)
    ids = input_ids.cpu()
    real = (
        torch.ones_like(ids, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.cpu() != 0
    )
    content = real & ~torch.isin(ids, torch.as_tensor(list(special_ids), dtype=ids.dtype))
    out, swapped = ids.clone(), torch.zeros_like(content)
    lams = torch.ones(n, dtype=torch.float32)
    for i in range(n):
        j, n_i = int(index[i]), int(content[i].sum())
        if j == i or n_i == 0:
            continue
        eligible = (content[i] & content[j]).nonzero().flatten()
        k = min(round((1.0 - lam) * n_i), len(eligible))
        start = _randint(g, len(eligible) - k + 1)
        pos = eligible[start : start + k]
        out[i, pos] = ids[j, pos]
        swapped[i, pos] = True
        lams[i] = 1.0 - k / n_i
    device = input_ids.device
    return CutMixResult(out.to(device), lams.to(device), swapped.to(device))


class TokenCutMix(MixupTrick):
    """Token cutmix as a :class:`~danlu.Trick`: ``on_batch`` swaps spans in a copy of the
    dict batch's ``input_ids``; the loss is ``mean_i(lam_i * L_i(y) + (1 - lam_i) *
    L_i(y[index]))`` with per-example ``lam_i`` = kept fraction of real tokens.

    Args:
        alpha: Beta(alpha, alpha) for the target kept fraction, > 0.
        special_ids: token ids never swapped (``tokenizer.all_special_ids``).
        input_key, mask_key: keys of the ids and of the attention mask in the batch.
        loss_from_logits: ``L(logits, y)`` returning per-example losses (N,)
            (``reduction="none"``); default cross-entropy.
        **kwargs: ``max_lambda``, ``seed``, ``target_key``, ``target_fn``.

    Example:
        >>> tricks = Tricks([TokenCutMix(alpha=0.4, special_ids=tok.all_special_ids)])
    """

    def __init__(
        self,
        alpha: float = 0.4,
        special_ids: Sequence[int] = (),
        input_key: str = "input_ids",
        mask_key: str = "attention_mask",
        loss_from_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, loss_from_logits=loss_from_logits, **kwargs)
        self.special_ids = [int(t) for t in special_ids]
        self.input_key, self.mask_key = input_key, mask_key
        self.swapped: torch.Tensor | None = None

    def on_batch(self, batch: Any, state: State) -> Any:
        if not isinstance(batch, dict) or self.input_key not in batch:
            raise ValueError(
                f"TokenCutMix needs a dict batch with token ids under {self.input_key!r}, got "
                f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}"
            )
        batch = super().on_batch(batch, state)
        res = token_cutmix(
            batch[self.input_key],
            batch.get(self.mask_key),
            self.lam,
            self.index,
            self.generator,
            self.special_ids,
        )
        self.lam, self.swapped = res.lam, res.swapped
        return {**batch, self.input_key: res.input_ids}

    def _target(self, model: nn.Module) -> tuple[nn.Module, Literal["output", "input"]] | None:
        return None
