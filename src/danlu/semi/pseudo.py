"""Pseudo-labelling: label the unlabelled examples a trained model (or a K-fold ensemble) is
sure about and train again on them.

- :func:`select_pseudo_labels` — per-class confidence thresholds and class-balance caps on
  ``(n, C)`` probabilities; the most confident examples of a class are kept first.
- :class:`PseudoLabel` — the :class:`danlu.Trick`: from ``start_epoch`` on, at every epoch
  end it re-labels a fixed list of unlabelled batches with the current model, and each
  micro-batch adds ``alpha · CE`` on the next batch's selected rows (online pseudo-labels,
  Lee 2013, started late as the course material advises).
- :func:`pseudo_dataset` — the selected texts with their hard pseudo-labels as a
  :class:`~danlu.datasets.TextDataset` (after the labelled examples, if given).
- :func:`pseudo_label_round` — train → label → retrain, for as many rounds as asked, with
  your own ``fit_predict``; ``danlu.kfold.run_kfold``'s ensembled test probabilities fit it
  directly (see the example).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from danlu.core import Order, State, Trick
from danlu.datasets import TextDataset
from danlu.loss._swap import as_float
from danlu.loss.rdrop import _check_alpha
from danlu.semi.unlabelled import check_probability, default_logits

__all__ = [
    "PseudoLabels",
    "select_pseudo_labels",
    "pseudo_dataset",
    "PseudoLabel",
    "pseudo_label_round",
    "PseudoRound",
]


class PseudoLabels(NamedTuple):
    """``index`` of the selected unlabelled examples (sorted), their ``labels`` (``(m,)``
    ints, or ``(m, C)`` probabilities with ``soft=True``) and ``confidence`` (``(m,)``)."""

    index: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray


def _per_class(name: str, value: Any, n_classes: int, check: Callable[[str, Any], Any]):
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
        if len(value) != n_classes:
            raise ValueError(
                f"{name} has {len(value)} entries but the probabilities have {n_classes} "
                f"classes: give one value per class or a single value"
            )
        return [check(f"{name}[{c}]", v) for c, v in enumerate(value)]
    return [check(name, value)] * n_classes


def _check_cap(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 or None (no cap), got {value!r}")
    return int(value)


def select_pseudo_labels(
    probs: Any,
    threshold: float | Sequence[float] = 0.9,
    max_per_class: int | Sequence[int | None] | None = None,
    balance: bool = False,
    soft: bool = False,
) -> PseudoLabels:
    """Pick confident unlabelled examples and their pseudo-labels.

    An example is a candidate for its argmax class ``c`` when its probability reaches
    ``threshold[c]``. Each class then keeps its most confident candidates, at most
    ``max_per_class[c]``; with ``balance=True`` every class is further capped at the
    smallest class's count, so the pseudo-labelled set has equal classes (a class without
    a single confident example then empties the selection: lower its threshold).

    Args:
        probs: ``(n, C)`` probabilities (numpy or torch), e.g. a K-fold ensemble's test
            probabilities.
        threshold: one probability in (0, 1] or one per class.
        max_per_class: ``None`` (no cap), one count, or one count (or ``None``) per class.
        balance: cap every class at the smallest class's count.
        soft: return the ``(m, C)`` probabilities as labels instead of the argmax.

    Example:
        >>> p = np.array([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.97, 0.03]])
        >>> sel = select_pseudo_labels(p, threshold=0.9)
        >>> sel.index.tolist(), sel.labels.tolist()
        ([0, 2, 3], [0, 1, 0])
        >>> select_pseudo_labels(p, threshold=0.9, balance=True).index.tolist()
        [2, 3]
    """
    p = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (n, n_classes >= 2), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError(
            "probs must be probabilities (finite, >= 0, rows summing to 1); apply a softmax "
            "to logits first (danlu.kfold.softmax)"
        )
    n_classes = p.shape[1]
    thresholds = _per_class("threshold", threshold, n_classes, check_probability)
    caps = _per_class("max_per_class", max_per_class, n_classes, _check_cap)
    pred, conf = p.argmax(1), p.max(1)
    chosen = []
    for c in range(n_classes):
        cand = np.flatnonzero((pred == c) & (conf >= thresholds[c]))
        order = cand[np.argsort(-conf[cand], kind="stable")]
        chosen.append(order if caps[c] is None else order[: caps[c]])
    if balance:
        smallest = min(len(idx) for idx in chosen)
        chosen = [idx[:smallest] for idx in chosen]
    index = np.sort(np.concatenate(chosen)).astype(np.int64)
    labels = p[index] if soft else pred[index]
    return PseudoLabels(index, labels, conf[index])


def pseudo_dataset(
    texts: Sequence[str],
    selected: PseudoLabels,
    label_names: Sequence[str],
    labelled: TextDataset | None = None,
) -> TextDataset:
    """The selected unlabelled texts with their hard pseudo-labels, as a ``TextDataset``
    (the labelled examples first when ``labelled`` is given): the training set of the next
    round. Neither input is modified.

    Args:
        texts: the unlabelled texts ``selected`` indexes into.
        selected: a hard selection from :func:`select_pseudo_labels` (``soft=False``).
        label_names: the class names (``labelled.label_names`` must equal them).
        labelled: the labelled training set to put first, or ``None``.

    Example:
        >>> p = np.array([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98]])
        >>> ds = pseudo_dataset(["good", "meh", "bad"], select_pseudo_labels(p), ("pos", "neg"))
        >>> ds.texts, ds.labels
        (['good', 'bad'], [0, 1])
    """
    if selected.labels.ndim != 1:
        raise ValueError(
            "pseudo_dataset needs hard labels (select_pseudo_labels(..., soft=False)); a "
            "TextDataset holds one class index per text. For soft labels train on "
            "selected.labels beside [texts[i] for i in selected.index]"
        )
    if len(selected.index) and int(selected.index.max()) >= len(texts):
        raise ValueError(
            f"selected indexes text {int(selected.index.max())} but only {len(texts)} texts "
            "were given: pass the texts the probabilities were computed on"
        )
    names = tuple(label_names)
    if labelled is not None and tuple(labelled.label_names) != names:
        raise ValueError(
            f"labelled.label_names {labelled.label_names!r} differ from label_names {names!r}"
        )
    head_texts, head_labels = ([], []) if labelled is None else (labelled.texts, labelled.labels)
    return TextDataset(
        [*head_texts, *(texts[i] for i in selected.index.tolist())],
        [*head_labels, *(int(c) for c in selected.labels.tolist())],
        names,
    )


class PseudoLabel(Trick):
    """Online pseudo-labelling on a fixed list of unlabelled batches.

    At the end of epoch ``start_epoch - 1`` and of every later epoch, the model (in eval
    mode, without gradients) predicts every batch and :func:`select_pseudo_labels` picks the
    rows to trust. Then each micro-batch adds ``alpha · CE(logits[rows], pseudo-labels)`` of
    the next batch that has selected rows (cycled); before the first labelling it adds
    nothing, so the loop equals the plain loop.

    Args:
        unlabelled: a list (or other re-iterable with a stable order) of unlabelled batches.
        alpha: weight of the pseudo-label loss (>= 0).
        start_epoch: the first epoch trained with pseudo-labels (>= 1).
        threshold, max_per_class, balance: as in :func:`select_pseudo_labels`.
        logits_fn: ``logits_fn(model, batch) -> (B, C) logits`` (default
            :func:`~danlu.semi.default_logits`).

    ``state.extra["pseudo_selected"]`` is the number of selected examples.

    Example:
        >>> tricks = danlu.Tricks([PseudoLabel(unlabelled_batches, start_epoch=2)])
        >>> ...; tricks.epoch_end()          # the labelling happens in epoch_end
    """

    order = Order.LOSS_WRAP

    def __init__(
        self,
        unlabelled: Sequence[Any],
        alpha: float = 1.0,
        start_epoch: int = 1,
        threshold: float | Sequence[float] = 0.9,
        max_per_class: int | Sequence[int | None] | None = None,
        balance: bool = False,
        *,
        logits_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        self.batches = list(unlabelled)
        if not self.batches:
            raise ValueError("the unlabelled batches are empty: pass at least one batch")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 1:
            raise ValueError(f"start_epoch must be an integer >= 1, got {start_epoch!r}")
        self.alpha = _check_alpha(alpha)
        self.start_epoch = start_epoch
        self.select = {"threshold": threshold, "max_per_class": max_per_class,
                       "balance": balance}  # fmt: skip
        for t in threshold if isinstance(threshold, Sequence) else [threshold]:
            check_probability("threshold", t)
        for cap in max_per_class if isinstance(max_per_class, Sequence) else [max_per_class]:
            _check_cap("max_per_class", cap)
        self.logits_fn = logits_fn or default_logits
        self.labels: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (batch, rows, labels)
        self.cursor = 0
        self._current: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def relabel(self, model: nn.Module) -> PseudoLabels:
        """Predict every unlabelled batch and select the pseudo-labels."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = [self.logits_fn(model, b).float() for b in self.batches]
        finally:
            model.train(was_training)
        sel = select_pseudo_labels(torch.cat(logits).softmax(-1), **self.select)
        starts = np.cumsum([0] + [len(x) for x in logits])
        self.labels = []
        for i in range(len(logits)):
            keep = (sel.index >= starts[i]) & (sel.index < starts[i + 1])
            if keep.any():
                rows = torch.as_tensor(sel.index[keep] - starts[i])
                self.labels.append((i, rows, torch.as_tensor(sel.labels[keep])))
        self.cursor = 0
        return sel

    def on_epoch_end(self, state: State) -> None:
        if state.epoch >= self.start_epoch and state.model is not None:
            state.extra["pseudo_selected"] = len(self.relabel(state.model).index)

    def on_batch(self, batch: Any, state: State) -> Any:
        self._current = None
        if self.labels:
            self._current = self.labels[self.cursor % len(self.labels)]
            self.cursor += 1
        return batch

    def compute_loss(self, forward, batch: Any, state: State):
        loss, logits = forward(batch)
        if self._current is None:
            return loss, logits
        i, rows, labels = self._current
        out = self.logits_fn(state.model, self.batches[i])
        ce = F.cross_entropy(as_float(out[rows.to(out.device)]), labels.to(out.device))
        return loss + self.alpha * ce, logits

    def state_dict(self) -> dict:
        return {"labels": self.labels, "cursor": self.cursor}

    def load_state_dict(self, state_dict: dict) -> None:
        self.labels, self.cursor = list(state_dict["labels"]), state_dict["cursor"]

    def __repr__(self) -> str:
        return f"PseudoLabel(alpha={self.alpha}, start_epoch={self.start_epoch})"


class PseudoRound(NamedTuple):
    """One round of :func:`pseudo_label_round`: the unlabelled probabilities the round's
    model gave and the selection made from them."""

    probs: np.ndarray
    selected: PseudoLabels


def pseudo_label_round(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    labels: Any,
    n_unlabelled: int,
    rounds: int = 1,
    **select: Any,
) -> list[PseudoRound]:
    """Train → pseudo-label → retrain, ``rounds`` times, then train once more.

    Examples are indices: ``0 .. n-1`` the labelled ones, ``n .. n + n_unlabelled - 1`` the
    unlabelled ones. ``fit_predict(train_idx, train_labels)`` trains a fresh model on those
    examples with those labels (hard ``(m,)`` or soft ``(m, C)``, as ``select`` asks) and
    returns its ``(n_unlabelled, C)`` probabilities on the unlabelled examples. Each round
    re-selects from the *current* model's probabilities (earlier pseudo-labels can be
    dropped or changed); the last call trains on the last selection.

    Args:
        fit_predict: see above; with ``danlu.kfold``, run ``run_kfold`` on ``train_idx``
            inside it and return ``softmax(result.test_scores("mean_logits"))``.
        labels: ``(n,)`` labels of the labelled examples.
        n_unlabelled: how many unlabelled examples there are (>= 1).
        rounds: pseudo-labelling rounds (>= 1).
        select: keyword arguments of :func:`select_pseudo_labels`.

    Returns:
        one :class:`PseudoRound` per round, then the final model's probabilities with the
        selection they would give (``rounds + 1`` entries).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(60, 2)); y = (X[:, 0] > 0).astype(int)
        >>> def fit_predict(idx, lab):       # a centroid "model" over labelled + unlabelled
        ...     w = X[idx][lab == 1].mean(0) - X[idx][lab == 0].mean(0)
        ...     s = X[20:] @ w
        ...     return np.stack([1 / (1 + np.exp(s)), 1 / (1 + np.exp(-s))], 1)
        >>> out = pseudo_label_round(fit_predict, y[:20], 40, rounds=1, threshold=0.6)
        >>> len(out), bool((out[0].selected.labels == y[20:][out[0].selected.index]).mean() > 0.9)
        (2, True)
    """
    y = np.asarray(labels)
    n = len(y)
    if isinstance(n_unlabelled, bool) or not isinstance(n_unlabelled, int) or n_unlabelled < 1:
        raise ValueError(f"n_unlabelled must be an integer >= 1, got {n_unlabelled!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    soft = bool(select.get("soft", False))
    train_idx, train_y = np.arange(n), y
    if soft:
        train_y = np.eye(int(y.max()) + 1)[y]
    out = []
    for _ in range(rounds + 1):
        probs = np.asarray(fit_predict(train_idx, train_y), dtype=float)
        if probs.shape[0] != n_unlabelled:
            raise ValueError(
                f"fit_predict returned {probs.shape[0]} rows, expected one per unlabelled "
                f"example ({n_unlabelled})"
            )
        sel = select_pseudo_labels(probs, **select)
        out.append(PseudoRound(probs, sel))
        base_y = y if not soft else np.eye(probs.shape[1])[y]
        train_idx = np.concatenate([np.arange(n), n + sel.index])
        train_y = np.concatenate([base_y, sel.labels])
    return out
