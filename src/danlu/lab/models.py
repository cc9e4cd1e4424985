"""Small text classifiers and encoders for the lab's built-in tasks (and for quick
experiments): a Kim (2014) TextCNN over character or word ids, and the encoders that turn
texts into its ``input_ids``.

Example:
    >>> enc = TokenEncoder.fit(["好看", "难看"], unit="char", max_len=8, min_freq=1)
    >>> model = TextCNN(enc.vocab_size, dim=16, filters=8)
    >>> model(**enc(["好看"])).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextCNN", "TokenEncoder", "word_tokens"]

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def word_tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: ``"It's fine."`` → ``["it", "'", "s", ...]``."""
    return _WORD.findall(text.lower())


def _units(text: str, unit: Literal["char", "word"]) -> list[str]:
    return list(text) if unit == "char" else word_tokens(text)


@dataclass(frozen=True)
class TokenEncoder:
    """Texts → ``{"input_ids": (N, max_len)}``: 0 = padding, 1 = unknown, then the training
    texts' characters or words by frequency; head-truncated, right-padded."""

    vocab: dict[str, int]
    unit: Literal["char", "word"]
    max_len: int

    @classmethod
    def fit(
        cls,
        texts: list[str],
        unit: Literal["char", "word"] = "char",
        max_len: int = 128,
        min_freq: int = 2,
    ) -> TokenEncoder:
        """Build the vocabulary from ``texts`` (the training texts only)."""
        if unit not in ("char", "word"):
            raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
        counts = Counter(u for t in texts for u in _units(t, unit))
        vocab = {"<pad>": 0, "<unk>": 1}
        for u, n in counts.most_common():
            if n >= min_freq:
                vocab[u] = len(vocab)
        return cls(vocab, unit, max_len)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [self.vocab.get(u, 1) for u in _units(text, self.unit)[: self.max_len]]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {"input_ids": ids}


class TextCNN(nn.Module):
    """Kim (2014) TextCNN: embeddings → 1-D convolutions of widths ``kernels`` → max-pool
    → dropout → linear. ``get_input_embeddings()`` makes it a target for FGM, PGD and
    embedding mixup."""

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        filters: int = 64,
        n_classes: int = 2,
        kernels: tuple[int, ...] = (2, 3, 4),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, k) for k in kernels)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(len(kernels) * filters, n_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids).transpose(1, 2)
        pooled = [F.relu(conv(h)).amax(dim=2) for conv in self.convs]
        return self.head(self.drop(torch.cat(pooled, dim=1)))

    @staticmethod
    def depth(name: str) -> int:
        """Layer depth for layer-wise lr decay: embeddings 0, convolutions 1, head 2."""
        return 0 if name.startswith("embed") else 1 if name.startswith("convs") else 2
