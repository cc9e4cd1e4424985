"""Find likely mislabelled training examples from out-of-fold probabilities, show them,
and clean the data set ("clean, then learn again").

Where it fits: split with K-fold (:func:`danlu.kfold.run_kfold`), so that every example is
predicted by a model that never trained on it; feed those out-of-fold probabilities here;
drop or relabel the top suspects; train again on the cleaned data. Probabilities of a model
that saw the example during training are over-confident in its (possibly wrong) label and
hide the issues.

Backends: `cleanlab <https://github.com/cleanlab/cleanlab>`_'s confident learning (extra
``lab``; Northcutt et al., 2021, https://arxiv.org/abs/1911.00068) and, with no dependency, a
plain self-confidence rule: flag examples whose predicted class differs from the given one,
most suspect (lowest probability of the given label) first.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from danlu._checks import check_int
from danlu._optional import require

__all__ = ["LabelIssues", "self_confidence", "find_label_issues", "issues_table", "clean_dataset"]

Backend = Literal["auto", "cleanlab", "self_confidence"]


@dataclass(frozen=True)
class LabelIssues:
    """Suspected label issues, most suspect first.

    Attributes:
        indices: positions of the suspects in the data set.
        given: their given labels.
        predicted: the class the out-of-fold model predicts for them (``argmax``).
        confidence: the out-of-fold probability of their given label (self-confidence).
        backend: ``"cleanlab"`` or ``"self_confidence"``: which rule flagged them.
    """

    indices: np.ndarray
    given: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    backend: str

    def __len__(self) -> int:
        return len(self.indices)

    def top(self, k: int) -> LabelIssues:
        """The ``k`` most suspect issues (all of them when fewer)."""
        check_int("k", k, 0, fix="the number of suspects to keep")
        return LabelIssues(
            self.indices[:k], self.given[:k], self.predicted[:k], self.confidence[:k], self.backend
        )


def _check(labels: Any, pred_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"pred_probs must have shape (n, n_classes >= 2), got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError(
            "pred_probs and labels are empty (0 examples); pass the out-of-fold predictions "
            "of the whole training set (KFoldResult.oof_probs)"
        )
    if y.shape != (p.shape[0],):
        raise ValueError(
            f"labels must hold one label per row of pred_probs: got shape {y.shape} for "
            f"{p.shape[0]} rows"
        )
    n_classes = p.shape[1]
    integer = np.issubdtype(y.dtype, np.integer)
    if not integer or y.min(initial=0) < 0 or y.max(initial=0) >= n_classes:
        raise ValueError(
            f"labels must be integers in [0, {n_classes - 1}] (class indices of pred_probs' "
            f"columns), got values {np.unique(y)[:10]}"
        )
    if not np.isfinite(p).all() or p.min() < 0 or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError(
            "pred_probs must be probabilities: finite, >= 0, rows summing to 1; pass "
            "danlu.kfold.softmax(logits) (or KFoldResult.oof_probs) for logits"
        )
    return y.astype(np.int64), p


def self_confidence(labels: Sequence[int] | np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """The predicted probability of each example's given label, ``pred_probs[i, labels[i]]``
    (low = likely mislabelled).

    Example:
        >>> self_confidence([0, 1], np.array([[0.9, 0.1], [0.8, 0.2]]))
        array([0.9, 0.2])
    """
    y, p = _check(labels, pred_probs)
    return p[np.arange(len(y)), y]


def find_label_issues(
    labels: Sequence[int] | np.ndarray,
    pred_probs: np.ndarray,
    backend: Backend = "auto",
    max_issues: int | None = None,
) -> LabelIssues:
    """Rank likely label errors from out-of-fold predicted probabilities.

    Args:
        labels: given class index per example, in ``[0, n_classes)``.
        pred_probs: ``(n, n_classes)`` out-of-fold probabilities (e.g.
            ``run_kfold(...).oof_probs``).
        backend: ``"cleanlab"`` — ``cleanlab.filter.find_label_issues(labels, pred_probs,
            return_indices_ranked_by="self_confidence")`` (confident learning: per-class
            thresholds, robust to classes the model is less sure about);
            ``"self_confidence"`` — flag ``argmax != label``, rank by the probability of the
            given label, ascending; ``"auto"`` (default) — cleanlab when installed, else
            self-confidence.
        max_issues: keep at most this many (the most suspect); ``None`` keeps all flagged.

    Returns:
        :class:`LabelIssues`, most suspect first.

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
        >>> issues = find_label_issues([0, 1, 1, 0], probs, backend="self_confidence")
        >>> issues.indices, issues.predicted
        (array([3, 2]), array([1, 0]))
    """
    y, p = _check(labels, pred_probs)
    if max_issues is not None and (isinstance(max_issues, bool) or max_issues < 0):
        raise ValueError(f"max_issues must be None or an integer >= 0, got {max_issues!r}")
    if backend == "auto":
        backend = "cleanlab" if importlib.util.find_spec("cleanlab") else "self_confidence"
    if backend == "cleanlab":
        cl_filter = require("cleanlab.filter", "lab", "finding label issues with cleanlab")
        idx = cl_filter.find_label_issues(
            y, p, return_indices_ranked_by="self_confidence", n_jobs=1
        )
        idx = np.asarray(idx, dtype=np.int64)
    elif backend == "self_confidence":
        conf = p[np.arange(len(y)), y]
        flagged = np.flatnonzero(p.argmax(1) != y)
        idx = flagged[np.argsort(conf[flagged], kind="stable")]
    else:
        raise ValueError(
            f"backend must be 'auto', 'cleanlab' or 'self_confidence', got {backend!r}"
        )
    if max_issues is not None:
        idx = idx[:max_issues]
    return LabelIssues(idx, y[idx], p[idx].argmax(1), p[idx, y[idx]], backend)


def _cell(text: Any, width: int) -> str:
    s = " ".join(str(text).split())  # one line: newlines and tabs become spaces
    return s if len(s) <= width else s[: width - 1] + "…"


def issues_table(
    issues: LabelIssues,
    texts: Sequence[Any],
    k: int = 20,
    class_names: Sequence[str] | None = None,
    width: int = 60,
) -> str:
    """A plain-text table of the ``k`` top suspects: rank, index, given and predicted
    label, probability of the given label, and the text (shortened to ``width`` chars).

    Example:
        >>> issues = find_label_issues([0, 1], np.array([[0.9, 0.1], [0.95, 0.05]]),
        ...                            backend="self_confidence")
        >>> print(issues_table(issues, ["good film", "great fun"], class_names=["neg", "pos"]))
        rank  index  given  predicted  p(given)  text
           1      1  pos    neg           0.050  great fun
    """
    if width < 2:
        raise ValueError(f"width must be >= 2 characters, got {width}")

    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None else str(c)

    top = issues.top(k)
    if len(top.indices) and int(top.indices.max()) >= len(texts):
        raise ValueError(
            f"texts has {len(texts)} entries but an issue points at index "
            f"{int(top.indices.max())}; pass the texts of the whole set the labels came from"
        )
    rows = [
        (str(r + 1), str(i), name(g), name(pr), f"{c:.3f}", _cell(texts[i], width))
        for r, (i, g, pr, c) in enumerate(
            zip(top.indices, top.given, top.predicted, top.confidence)
        )
    ]
    header = ("rank", "index", "given", "predicted", "p(given)", "text")
    widths = [max([len(h), *(len(r[j]) for r in rows)]) for j, h in enumerate(header[:-1])]
    right = (True, True, False, False, True)  # numbers right-aligned, labels left-aligned

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join([*parts, cells[-1]]).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def clean_dataset(
    texts: Sequence[Any],
    labels: Sequence[int] | np.ndarray,
    issues: LabelIssues | Sequence[int] | np.ndarray,
    action: Literal["drop", "relabel"] = "drop",
) -> tuple[list[Any], list[int]]:
    """New ``(texts, labels)`` lists with the suspects dropped or relabelled; the inputs are
    not changed.

    Args:
        texts: the examples (any objects: strings, dicts of features …).
        labels: their given labels.
        issues: a :class:`LabelIssues` (e.g. ``.top(k)`` of it), or plain indices for
            ``"drop"``.
        action: ``"drop"`` removes the suspects (keeps the order of the rest);
            ``"relabel"`` gives them the predicted label (needs a :class:`LabelIssues`).
            Dropping is the safer default: a relabelled false positive is a new error.

    Example:
        >>> issues = find_label_issues([0, 1], np.array([[0.9, 0.1], [0.95, 0.05]]),
        ...                            backend="self_confidence")
        >>> clean_dataset(["a", "b"], [0, 1], issues, action="relabel")
        (['a', 'b'], [0, 0])
    """
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
    if action not in ("drop", "relabel"):
        raise ValueError(f"action must be 'drop' or 'relabel', got {action!r}")
    idx = np.asarray(issues.indices if isinstance(issues, LabelIssues) else issues, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(labels)):
        raise ValueError(
            f"issue indices must be in [0, {len(labels) - 1}], got {idx.min()}..{idx.max()}"
        )
    new_texts, new_labels = list(texts), [int(v) for v in labels]
    if action == "drop":
        gone = set(idx.tolist())
        keep = [i for i in range(len(new_labels)) if i not in gone]
        return [new_texts[i] for i in keep], [new_labels[i] for i in keep]
    if not isinstance(issues, LabelIssues):
        raise TypeError(
            "action='relabel' needs a LabelIssues (it carries the predicted labels), got "
            f"{type(issues).__name__}; pass find_label_issues(...) or use action='drop'"
        )
    for i, pred in zip(issues.indices.tolist(), issues.predicted.tolist()):
        new_labels[i] = int(pred)
    return new_texts, new_labels
