"""Inference with length-sorted dynamic batching and bf16/fp16 autocast.

Padding is wasted compute: a batch costs its longest example times its size. Sorting the
examples by length before batching puts similar lengths together, and a token budget
(``max_tokens``) lets short batches hold more examples. The probabilities come back in the
caller's original order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

__all__ = ["sorted_batches", "pad_collate", "predict"]

Activation = Literal["softmax", "sigmoid", "none"]


def _positive_int(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")


def sorted_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int | None = 32,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Index batches over examples sorted by length, longest first.

    A batch closes when it holds ``batch_size`` examples or when one more example would make
    ``n_examples * longest_length`` exceed ``max_tokens`` (a padded-token budget; one
    example longer than the budget gets a batch of its own). Longest first, so the first
    batch shows at once whether the memory suffices.

    Args:
        lengths: length (tokens) of each example.
        batch_size: at most this many examples per batch (>= 1), or None for no cap
            (then ``max_tokens`` is required).
        max_tokens: padded-token budget per batch (>= 1), or None.

    Example:
        >>> [b.tolist() for b in sorted_batches([3, 9, 5, 8], batch_size=2)]
        [[1, 3], [2, 0]]
        >>> [b.tolist() for b in sorted_batches([3, 9, 5, 8], batch_size=None, max_tokens=18)]
        [[1, 3], [2, 0]]
    """
    _positive_int("batch_size", batch_size)
    _positive_int("max_tokens", max_tokens)
    if batch_size is None and max_tokens is None:
        raise ValueError("give batch_size, max_tokens or both; got neither (no batch limit)")
    n = np.asarray(lengths, dtype=np.int64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError(f"lengths must be a 1-D sequence of integers >= 0, got shape {n.shape}")
    order = np.argsort(-n, kind="stable")  # stable: equal lengths keep their input order
    batches, start = [], 0
    while start < len(order):
        longest = max(int(n[order[start]]), 1)  # sorted: the first is the longest
        size = len(order) - start
        if batch_size is not None:
            size = min(size, batch_size)
        if max_tokens is not None:
            size = max(1, min(size, max_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


def _length(example: Any) -> int:
    if isinstance(example, Mapping):
        example = example["input_ids"]
    return len(example)


def pad_collate(examples: Sequence[Any], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad token-id sequences into ``{"input_ids", "attention_mask"}`` tensors.

    Each example is a sequence of token ids (list or 1-D tensor) or a mapping of such
    sequences (a tokenizer's output without padding: ``input_ids``, ``token_type_ids``, ...);
    every key is padded (``input_ids`` with ``pad_id``, the rest with 0) and an
    ``attention_mask`` is added when absent.

    Example:
        >>> pad_collate([[5, 6, 7], [8]])["attention_mask"].tolist()
        [[1, 1, 1], [1, 0, 0]]
    """
    rows = [ex if isinstance(ex, Mapping) else {"input_ids": ex} for ex in examples]
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else 0
        t = torch.full((len(rows), width), fill, dtype=torch.long)
        for i, r in enumerate(rows):
            seq = torch.as_tensor(r[key], dtype=torch.long)
            t[i, : len(seq)] = seq
        out[key] = t
    if "attention_mask" not in out:
        out["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            out["attention_mask"][i, : len(r["input_ids"])] = 1
    return out


def _default_forward(model: nn.Module, batch: Any) -> torch.Tensor:
    out = model(**batch) if isinstance(batch, Mapping) else model(batch)
    return out.logits if hasattr(out, "logits") else out


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def predict(
    model: nn.Module,
    examples: Sequence[Any],
    *,
    batch_size: int | None = 32,
    max_tokens: int | None = None,
    amp: Literal["bf16", "fp16"] | None = None,
    activation: Activation = "softmax",
    collate: Callable[[Sequence[Any]], Any] = pad_collate,
    forward: Callable[[nn.Module, Any], torch.Tensor] = _default_forward,
    lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """Predict ``examples`` in length-sorted batches and return fp32 probabilities (on the
    CPU) in the original order.

    The model runs in eval mode under ``torch.no_grad`` (its train/eval mode is
    restored afterwards), optionally under ``torch.autocast`` in bf16 (Ampere+ GPUs, TPUs)
    or fp16 (older GPUs); the activation runs in fp32.

    Args:
        examples: token-id sequences or tokenizer mappings (see :func:`pad_collate`), or
            anything ``collate`` understands (then pass ``lengths``).
        batch_size: examples per batch (>= 1), or None with ``max_tokens``.
        max_tokens: padded-token budget per batch (dynamic batching: short examples come
            in larger batches), e.g. ``batch_size * 256``.
        amp: ``None`` (fp32), ``"bf16"`` or ``"fp16"`` autocast.
        activation: ``"softmax"`` (classes), ``"sigmoid"`` (multi-label / one binary
            logit) or ``"none"`` (raw logits).
        collate: ``collate(list_of_examples) -> batch``; default :func:`pad_collate`.
        forward: ``forward(model, batch) -> logits``; default ``model(**batch).logits``
            (or the output itself when it has no ``.logits``).
        lengths: the length of each example; default ``len(example["input_ids"])`` or
            ``len(example)``.

    Example:
        >>> bag = torch.nn.EmbeddingBag(10, 3)          # a bag-of-words "classifier"
        >>> probs = predict(bag, [[1, 2, 3], [4]], forward=lambda m, b: m(b["input_ids"]))
        >>> probs.shape, bool(torch.allclose(probs.sum(-1), torch.ones(2)))
        (torch.Size([2, 3]), True)
    """
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if activation not in ("softmax", "sigmoid", "none"):
        raise ValueError(f"activation must be 'softmax', 'sigmoid' or 'none', got {activation!r}")
    if len(examples) == 0:
        raise ValueError("examples is empty: nothing to predict")
    sizes = [_length(ex) for ex in examples] if lengths is None else list(lengths)
    if len(sizes) != len(examples):
        raise ValueError(f"got {len(sizes)} lengths for {len(examples)} examples")
    batches = sorted_batches(sizes, batch_size, max_tokens)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    out: torch.Tensor | None = None
    try:
        model.eval()
        with torch.no_grad(), autocast:
            for idx in batches:
                batch = _to_device(collate([examples[i] for i in idx]), device)
                logits = forward(model, batch).float()
                if activation == "softmax":
                    logits = logits.softmax(-1)
                elif activation == "sigmoid":
                    logits = logits.sigmoid()
                if out is None:
                    out = torch.empty((len(examples), *logits.shape[1:]), dtype=torch.float32)
                out[torch.from_numpy(idx)] = logits.cpu()
    finally:
        model.train(was_training)
    return out
