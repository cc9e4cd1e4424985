"""Long documents for fixed-length encoders: head / tail / head+tail truncation and sliding
windows with a chunk -> document index, on token ids or through a Hugging Face tokenizer.

Head+tail is the best single-pass strategy of Sun et al. 2019, "How to Fine-Tune BERT for
Text Classification?" (https://arxiv.org/abs/1905.05583): the first 128 and last 382 tokens
of a 512-token input. Windows feed every token to the encoder; pool the chunk outputs back
to one prediction per document with :mod:`danlu.data.pooling`.

Budgets count content tokens: ``max_len`` (or ``window``) minus ``num_special``, the
special tokens the tokenizer adds ([CLS] and [SEP] for BERT: 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import torch

__all__ = ["truncate", "sliding_windows", "chunk_documents", "encode_long"]

Ids = TypeVar("Ids", list, torch.Tensor)
Strategy = Literal["head", "tail", "head_tail"]


def _check_ids(ids: Any) -> None:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(
                f"ids must be a 1-D tensor or a list of token ids, got shape {tuple(ids.shape)}; "
                "pass one document at a time (or use chunk_documents for a batch)"
            )
    elif not isinstance(ids, list | tuple):
        raise TypeError(
            f"ids must be a list or a 1-D tensor of token ids, got {type(ids).__name__}"
        )


def _budget(length: int, num_special: int, name: str) -> int:
    if isinstance(num_special, bool) or not isinstance(num_special, int) or num_special < 0:
        raise ValueError(f"num_special must be an integer >= 0, got {num_special!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length <= num_special:
        raise ValueError(
            f"{name} must be an integer > num_special ({num_special}) so that at least one "
            f"content token fits, got {length!r}"
        )
    return length - num_special


def _cat(a: Ids, b: Ids) -> Ids:
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else [*a, *b]


def truncate(
    ids: Ids,
    max_len: int,
    strategy: Strategy = "head_tail",
    head: int | None = None,
    num_special: int = 0,
) -> Ids:
    """Cut one document's token ids to ``max_len - num_special`` content tokens.

    Args:
        ids: token ids without special tokens, a list or a 1-D tensor (not modified).
        max_len: the encoder's input length including special tokens (e.g. 512).
        strategy: ``"head"`` keeps the start, ``"tail"`` the end, ``"head_tail"`` the first
            ``head`` and the last ``budget - head`` tokens.
        head: head tokens for ``"head_tail"``, 0..budget; default ``ceil(budget / 4)``
            (128 + 382 for ``max_len=512, num_special=2``).
        num_special: special tokens added afterwards (2 for BERT's [CLS] ... [SEP]).

    Returns:
        the kept ids, of the input's type (a copy; short documents come back whole).

    Example:
        >>> truncate(list(range(10)), max_len=6, strategy="head_tail", head=1, num_special=2)
        [0, 7, 8, 9]
    """
    _check_ids(ids)
    budget = _budget(max_len, num_special, "max_len")
    if strategy not in ("head", "tail", "head_tail"):
        raise ValueError(f"strategy must be 'head', 'tail' or 'head_tail', got {strategy!r}")
    if head is None:
        head = math.ceil(budget / 4)
    elif isinstance(head, bool) or not isinstance(head, int) or not 0 <= head <= budget:
        raise ValueError(
            f"head must be an integer in [0, {budget}] (max_len - num_special), got {head!r}"
        )
    ids = ids.clone() if isinstance(ids, torch.Tensor) else list(ids)
    if len(ids) <= budget:
        return ids
    if strategy == "head":
        return ids[:budget]
    if strategy == "tail":
        return ids[len(ids) - budget :]
    return _cat(ids[:head], ids[len(ids) - (budget - head) :])


def sliding_windows(ids: Ids, window: int, stride: int, num_special: int = 0) -> list[Ids]:
    """Split one document into overlapping windows of ``window - num_special`` content
    tokens; consecutive windows share ``stride`` tokens (the Hugging Face tokenizers
    meaning of ``stride``), the last window ends at the document's end (it may be
    shorter). An empty document gives one empty window.

    Args:
        ids: token ids without special tokens, list or 1-D tensor.
        window: encoder input length including special tokens (e.g. 512).
        stride: overlap in tokens, 0 <= stride < window - num_special (e.g. 128).
        num_special: special tokens added to each window afterwards.

    Example:
        >>> sliding_windows(list(range(7)), window=4, stride=1)
        [[0, 1, 2, 3], [3, 4, 5, 6]]
    """
    _check_ids(ids)
    size = _budget(window, num_special, "window")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < size:
        raise ValueError(
            f"stride (the overlap of consecutive windows) must be an integer in [0, {size}) "
            f"(window - num_special), got {stride!r}"
        )
    ids = ids.clone() if isinstance(ids, torch.Tensor) else list(ids)
    chunks, start = [], 0
    while True:
        chunks.append(ids[start : start + size])
        if start + size >= len(ids):
            return chunks
        start += size - stride


def chunk_documents(
    docs: Sequence[Ids], window: int, stride: int, num_special: int = 0
) -> tuple[list[Ids], torch.Tensor]:
    """Sliding windows over a batch of documents: the flat list of chunks and ``doc_index``
    (int64, one entry per chunk: which document it came from).

    Example:
        >>> chunks, doc_index = chunk_documents([[1, 2, 3, 4, 5], [6]], window=3, stride=1)
        >>> chunks, doc_index.tolist()
        ([[1, 2, 3], [3, 4, 5], [6]], [0, 0, 1])
    """
    if isinstance(docs, torch.Tensor) or not len(docs):
        what = (
            f"a tensor {tuple(docs.shape)} (a padded batch would cut its padding into windows)"
            if isinstance(docs, torch.Tensor)
            else "empty"
        )
        raise ValueError(
            f"docs must be a non-empty sequence of documents (lists or 1-D tensors of ids), got "
            f"{what}; pass a list of documents, e.g. [ids] for one"
        )
    chunks, owner = [], []
    for d, doc in enumerate(docs):
        pieces = sliding_windows(doc, window, stride, num_special)
        chunks.extend(pieces)
        owner.extend([d] * len(pieces))
    return chunks, torch.tensor(owner, dtype=torch.long)


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single sequence (e.g. [CLS] / [SEP]),
    read off the encoding of a probe text."""
    probe = "long text probe"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            prefix, suffix = full[:k], full[k + len(plain) :]
            if len(prefix) + len(suffix) == tokenizer.num_special_tokens_to_add(pair=False):
                return prefix, suffix
    raise ValueError(
        f"cannot tell where {type(tokenizer).__name__} puts its special tokens (the encoding of "
        f"{probe!r} with them, {full}, does not contain the one without, {plain}); truncate "
        "the ids yourself with truncate()/sliding_windows()"
    )


def encode_long(
    tokenizer: Any,
    texts: Sequence[str],
    max_len: int = 512,
    strategy: Strategy | Literal["windows"] = "head_tail",
    head: int | None = None,
    stride: int = 128,
) -> dict[str, torch.Tensor]:
    """Tokenize long texts with a Hugging Face tokenizer: tokens without specials, then
    the strategy, then the tokenizer's own special tokens, then padding.

    Args:
        tokenizer: a ``transformers`` tokenizer (fast or slow) with a single-sequence
            template (BERT, RoBERTa, XLM-R, ...).
        texts: the documents.
        max_len: encoder input length including special tokens.
        strategy: ``"head"``, ``"tail"``, ``"head_tail"`` (one row per text) or
            ``"windows"`` (one row per chunk, plus ``doc_index``).
        head: head tokens for ``"head_tail"`` (default ``ceil(budget / 4)``).
        stride: window overlap in tokens for ``"windows"``.

    Returns:
        ``{"input_ids", "attention_mask"}`` padded int64 tensors, and ``"doc_index"`` for
        windows (feed ``doc_index`` to a :mod:`danlu.data.pooling` module).

    Example:
        >>> enc = encode_long(tokenizer, docs, max_len=512, strategy="windows", stride=128)
        >>> logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        >>> doc_logits = ChunkPooling("mean")(logits, doc_index=enc["doc_index"])
    """
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(
            f"texts must be a non-empty list of strings (wrap a single text in a list), got "
            f"{'one str' if isinstance(texts, str) else repr(texts)[:60]}"
        )
    prefix, suffix = _special_affixes(tokenizer)
    num_special = len(prefix) + len(suffix)
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if strategy == "windows":
        rows, doc_index = chunk_documents(ids, max_len, stride, num_special)
    elif strategy in ("head", "tail", "head_tail"):
        rows = [truncate(d, max_len, strategy, head, num_special) for d in ids]
        doc_index = None
    else:
        raise ValueError(
            f"strategy must be 'head', 'tail', 'head_tail' or 'windows', got {strategy!r}"
        )
    rows = [prefix + list(r) + suffix for r in rows]
    out = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    enc = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
    if doc_index is not None:
        enc["doc_index"] = doc_index
    return enc
