"""Pool chunk outputs of a long document back to one vector or one prediction.

Every module takes either padded chunks ``x`` of shape (D, C, H) with a boolean ``mask``
(D, C) (True = real chunk), or flat chunks (N, H) with ``doc_index`` (N,) as returned by
:func:`danlu.data.longtext.chunk_documents` / ``encode_long``. ``H`` is a hidden size
(hidden-state level: pool, then classify) or the number of classes (logit level: pool the
chunk logits). Padding chunks never change the result.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from danlu._checks import check_int

__all__ = [
    "padded_chunks",
    "pool_chunks",
    "ChunkPooling",
    "AttentionPooling",
    "LSTMPooling",
]

Mode = Literal["mean", "max", "sqrt_mean"]


def padded_chunks(
    x: torch.Tensor, doc_index: torch.Tensor, num_docs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat chunks (N, ...) and their ``doc_index`` (N,) -> padded (D, C, ...) and a bool
    mask (D, C); chunks keep their order within a document, padding is zeros.

    Example:
        >>> x, mask = padded_chunks(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 1, 0]))
        >>> x[:, :, 0], mask
        (tensor([[1., 3.],
                [2., 0.]]), tensor([[ True,  True],
                [ True, False]]))
    """
    if not isinstance(doc_index, torch.Tensor) or doc_index.dim() != 1 or len(doc_index) != len(x):
        raise ValueError(
            f"doc_index must be a 1-D tensor with one entry per chunk ({len(x)}), got "
            f"{tuple(doc_index.shape) if isinstance(doc_index, torch.Tensor) else doc_index!r}"
        )
    if len(x) == 0:
        raise ValueError("there are no chunks to pool")
    doc_index = doc_index.to(x.device, torch.long)
    if int(doc_index.min()) < 0:
        raise ValueError(f"doc_index must be >= 0, got {int(doc_index.min())}")
    num_docs = int(doc_index.max()) + 1 if num_docs is None else num_docs
    counts = torch.bincount(doc_index, minlength=num_docs)
    if len(counts) > num_docs:
        raise ValueError(f"doc_index holds {len(counts) - 1} but num_docs is {num_docs}")
    order = torch.argsort(doc_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(doc_index)
    pos[order] = torch.arange(len(x), device=x.device) - starts[doc_index[order]]
    padded = x.new_zeros((num_docs, int(counts.max()), *x.shape[1:]))
    mask = torch.zeros(num_docs, padded.shape[1], dtype=torch.bool, device=x.device)
    padded[doc_index, pos] = x
    mask[doc_index, pos] = True
    return padded, mask


def _prepare(
    x: torch.Tensor, mask: torch.Tensor | None, doc_index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if doc_index is not None:
        if mask is not None:
            raise ValueError("pass either mask (padded input) or doc_index (flat input), not both")
        x, mask = padded_chunks(x, doc_index)
    if x.dim() < 2:
        raise ValueError(f"x must be padded chunks (D, C, ...), got shape {tuple(x.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask must have shape (D, C) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    mask = mask.bool()
    empty = (~mask.any(1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"documents {empty.tolist()} have no chunks (an all-False mask row)")
    return x, mask


def _expand(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.reshape(*mask.shape, *([1] * (x.dim() - 2)))


def pool_chunks(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: Mode = "mean",
    doc_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean, max or sum / sqrt(n) over each document's n real chunks.

    Args:
        x: padded (D, C, ...) chunk outputs, or flat (N, ...) with ``doc_index``.
        mask: (D, C) bool, True for real chunks; None: all real.
        mode: ``"mean"``, ``"max"`` or ``"sqrt_mean"`` (sum / sqrt(n), i.e. mean * sqrt(n),
            sentence-transformers' ``mean_sqrt_len``: between sum and mean, so longer
            documents get somewhat larger outputs).
        doc_index: (N,) document of each flat chunk.

    Returns:
        (D, ...) pooled outputs.

    Example:
        >>> pool_chunks(torch.tensor([[1.0], [3.0], [5.0]]), doc_index=torch.tensor([0, 0, 1]))
        tensor([[2.],
                [5.]])
    """
    x, mask = _prepare(x, mask, doc_index)
    m = _expand(mask, x)
    if mode == "max":
        return x.masked_fill(~m, float("-inf")).amax(1)
    total = x.masked_fill(~m, 0).sum(1)
    n = mask.sum(1).to(x.dtype).reshape(-1, *([1] * (total.dim() - 1)))
    if mode == "mean":
        return total / n
    if mode == "sqrt_mean":
        return total / n.sqrt()
    raise ValueError(f"mode must be 'mean', 'max' or 'sqrt_mean', got {mode!r}")


class ChunkPooling(nn.Module):
    """:func:`pool_chunks` as a module (no parameters).

    Example:
        >>> chunk_logits, doc_index = torch.randn(5, 2), torch.tensor([0, 0, 1, 1, 1])
        >>> ChunkPooling("max")(chunk_logits, doc_index=doc_index).shape  # (D, num_labels)
        torch.Size([2, 2])
    """

    def __init__(self, mode: Mode = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "max", "sqrt_mean"):
            raise ValueError(f"mode must be 'mean', 'max' or 'sqrt_mean', got {mode!r}")
        self.mode = mode

    def forward(self, x, mask=None, doc_index=None) -> torch.Tensor:
        return pool_chunks(x, mask, self.mode, doc_index)

    def extra_repr(self) -> str:
        return repr(self.mode)


class AttentionPooling(nn.Module):
    """Learned attention over chunks: ``w = softmax(score(x_c))`` over a document's real
    chunks, output ``sum_c w_c x_c``. ``score`` is ``Linear(dim, 1)``, or
    ``v^T tanh(W x)`` with ``hidden`` units (Yang et al. 2016 hierarchical attention).

    Args:
        dim: size of each chunk vector (hidden size or number of classes).
        hidden: width of the tanh layer; None for a linear score.

    Example:
        >>> chunk_vecs, doc_index = torch.randn(5, 384), torch.tensor([0, 0, 1, 1, 1])
        >>> AttentionPooling(384)(chunk_vecs, doc_index=doc_index).shape
        torch.Size([2, 384])
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        check_int("dim", dim, 1, fix="the size of each chunk vector")
        if hidden is None:
            self.score = nn.Linear(dim, 1)
        else:
            self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.weights: torch.Tensor | None = None

    def forward(self, x, mask=None, doc_index=None) -> torch.Tensor:
        x, mask = _prepare(x, mask, doc_index)
        if x.dim() != 3:
            raise ValueError(f"AttentionPooling takes (D, C, H) chunks, got {tuple(x.shape)}")
        s = self.score(x).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=1).to(x.dtype)
        self.weights = w.detach()
        return (w.unsqueeze(-1) * x.masked_fill(~mask.unsqueeze(-1), 0)).sum(1)


class LSTMPooling(nn.Module):
    """An LSTM reads each document's real chunk vectors in order; the output is its final
    hidden state (both directions concatenated when ``bidirectional``), shape
    (D, hidden_size * directions). Padding chunks are never read (packed sequences).

    Args:
        dim: size of each chunk vector.
        hidden_size: LSTM width; default ``dim``.
        bidirectional: read the chunks in both directions.

    Example:
        >>> chunk_vecs, doc_index = torch.randn(5, 384), torch.tensor([0, 0, 1, 1, 1])
        >>> LSTMPooling(384, 128)(chunk_vecs, doc_index=doc_index).shape
        torch.Size([2, 128])
    """

    def __init__(self, dim: int, hidden_size: int | None = None, bidirectional: bool = False):
        super().__init__()
        check_int("dim", dim, 1, fix="the size of each chunk vector")
        if hidden_size is not None:
            check_int("hidden_size", hidden_size, 1, fix="None uses dim")
        self.lstm = nn.LSTM(dim, hidden_size or dim, batch_first=True, bidirectional=bidirectional)

    def forward(self, x, mask=None, doc_index=None) -> torch.Tensor:
        x, mask = _prepare(x, mask, doc_index)
        if x.dim() != 3:
            raise ValueError(f"LSTMPooling takes (D, C, H) chunks, got {tuple(x.shape)}")
        lengths = mask.sum(1)
        if not bool(
            (mask == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all()
        ):
            raise ValueError("LSTMPooling needs real chunks first in each row (mask = 1...1 0...0)")
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        last = h[-2:] if self.lstm.bidirectional else h[-1:]
        return torch.cat(list(last), dim=-1)
