"""Blending and stacking heterogeneous models from their out-of-fold (OOF) predictions, and
F1 threshold tuning.

Every model is cross-validated on the same folds (:func:`danlu.kfold.run_kfold`), so each
training example has one OOF prediction per model. On those:

- :func:`fit_blend_weights` fits convex weights (on the simplex: >= 0, summing to 1) that
  minimise the blend's log loss with ``scipy.optimize.minimize`` (SLSQP);
- :func:`rank_average` averages per-class ranks (``scipy.stats.rankdata``) for ranking
  metrics (AUC) when the models are calibrated differently;
- :func:`stack` fits a scikit-learn meta-learner on the models' OOF probabilities, itself
  cross-validated over the same folds so its OOF predictions never saw their own labels;
- :func:`tune_thresholds` picks the decision threshold(s) that maximise F1.

scipy and scikit-learn come with the ``lab`` extra and are imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from danlu._optional import require
from danlu.kfold import stratified_folds

__all__ = [
    "fit_blend_weights",
    "blend",
    "rank_average",
    "stack",
    "StackResult",
    "tune_thresholds",
    "Thresholds",
]


def _as_stack(probs: Any, name: str) -> np.ndarray:
    """``(n_models, n, n_classes)`` float64 probabilities; ``(n_models, n)`` is a binary
    positive-class probability per model."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        p = np.stack([1.0 - p, p], axis=-1)
    if p.ndim != 3 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (n_models, n_examples, n_classes) or (n_models, "
            f"n_examples) for binary probabilities, got {np.asarray(probs).shape}"
        )
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError(f"{name} must be probabilities in [0, 1] (apply softmax to logits first)")
    return p


def _labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {n} integer class ids, got shape {y.shape} ({y.dtype})")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes - 1}], got {y.min()}..{y.max()}")
    return y


def fit_blend_weights(oof_probs: Any, labels: Any, eps: float = 1e-12) -> np.ndarray:
    """Convex blend weights minimising the log loss of ``sum_m w_m * oof_probs[m]``.

    The weights are constrained to the simplex (``w >= 0``, ``sum(w) == 1``) and fitted by
    ``scipy.optimize.minimize(method="SLSQP")`` from equal weights, with the analytic
    gradient. A model that adds nothing (pure noise) gets a weight of ~0.

    Args:
        oof_probs: ``(n_models, n, n_classes)`` OOF probabilities (``(n_models, n)`` for a
            binary positive-class probability).
        labels: ``(n,)`` integer class ids.
        eps: floor of the blended probability inside the log.

    Returns:
        ``(n_models,)`` weights.

    Example:
        >>> y = np.array([0, 1, 1, 0])
        >>> good = np.array([0.2, 0.8, 0.7, 0.3]); noise = np.array([0.9, 0.1, 0.5, 0.6])
        >>> fit_blend_weights([good, noise], y).round(2)
        array([1., 0.])
    """
    p = _as_stack(oof_probs, "oof_probs")
    y = _labels(labels, p.shape[1], p.shape[2])
    picked = p[:, np.arange(p.shape[1]), y]  # (M, n): each model's probability of the truth
    optimize = require("scipy.optimize", "lab", "fitting blend weights")
    m = p.shape[0]

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.maximum(w @ picked, eps)
        return float(-np.log(q).mean()), -(picked / q).mean(axis=1)

    res = optimize.minimize(
        loss_and_grad,
        np.full(m, 1.0 / m),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
    )
    w = np.clip(res.x, 0.0, None)  # SLSQP may overshoot a bound by ~1e-16
    return w / w.sum()


def blend(probs: Any, weights: Any) -> np.ndarray:
    """The weighted mean ``sum_m w_m * probs[m]`` (``(n, n_classes)``); apply the weights
    fitted on OOF predictions to the models' test predictions.

    Example:
        >>> blend([[0.2, 0.4], [0.6, 0.8]], [0.5, 0.5])[:, 1]
        array([0.4, 0.6])
    """
    p = _as_stack(probs, "probs")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (p.shape[0],) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
        raise ValueError(
            f"weights must be {p.shape[0]} non-negative numbers summing to 1, got {w.tolist()}"
        )
    return np.tensordot(w, p, axes=1)


def rank_average(scores: Any, weights: Any | None = None) -> np.ndarray:
    """Average of the models' per-class ranks over the examples (``scipy.stats.rankdata``,
    ties get their average rank), each divided by ``n``: scores in (0, 1] for ranking
    metrics such as AUC; they are not probabilities.

    Args:
        scores: ``(n_models, n, n_classes)`` or ``(n_models, n)`` scores (probabilities,
            logits: only their order matters).
        weights: optional ``(n_models,)`` non-negative weights (default equal).

    Example:
        >>> rank_average([[0.1, 0.9, 0.5], [10.0, 30.0, 20.0]])
        array([0.33333333, 1.        , 0.66666667])
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (2, 3) or s.shape[0] < 1:
        raise ValueError(f"scores must have shape (n_models, n[, n_classes]), got {s.shape}")
    stats = require("scipy.stats", "lab", "rank averaging")
    ranks = stats.rankdata(s, axis=1) / s.shape[1]
    w = np.full(s.shape[0], 1.0 / s.shape[0]) if weights is None else np.asarray(weights, float)
    if w.shape != (s.shape[0],) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {s.shape[0]} non-negative numbers, got {w.tolist()}")
    return np.tensordot(w / w.sum(), ranks, axes=1)


class StackResult(NamedTuple):
    """The stack: the meta-learner's out-of-fold probabilities ``(n, n_classes)`` (each
    predicted by a meta-learner that did not see that fold's labels), its test
    probabilities (meta-learner refitted on all OOF rows; ``None`` without test input) and
    that refitted meta-learner."""

    oof: np.ndarray
    test: np.ndarray | None
    meta: Any


def _features(p: np.ndarray) -> np.ndarray:
    return np.concatenate(list(p), axis=1)  # (n, n_models * n_classes)


def stack(
    oof_probs: Any,
    labels: Any,
    test_probs: Any | None = None,
    folds: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    meta: Any | None = None,
) -> StackResult:
    """Stacking: a scikit-learn meta-learner on the models' OOF probabilities.

    The meta-learner is cross-validated over ``folds``: the one that predicts fold ``k``
    is fitted on the other folds' rows only, so its OOF predictions (what you score the
    stack with) never saw their own labels. Use the folds the base models were trained on
    (``KFoldResult.folds``).

    Args:
        oof_probs: ``(n_models, n, n_classes)`` OOF probabilities (``(n_models, n)``
            binary).
        labels: ``(n,)`` integer class ids.
        test_probs: ``(n_models, n_test, n_classes)`` test probabilities of the same models
            (e.g. each model's fold-averaged test prediction), or ``None``.
        folds: ``(train_idx, val_idx)`` pairs; default 5 stratified folds (seed 0).
        meta: an unfitted sklearn classifier with ``predict_proba`` (cloned per fold);
            default ``LogisticRegression(C=1.0, max_iter=1000)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 60)
        >>> good = np.clip(y + rng.normal(0, 0.3, 60), 0, 1)
        >>> res = stack([good, rng.uniform(size=60)], y)
        >>> bool((res.oof.argmax(1) == y).mean() > 0.8)
        True
    """
    base = require("sklearn.base", "lab", "stacking")
    p = _as_stack(oof_probs, "oof_probs")
    y = _labels(labels, p.shape[1], p.shape[2])
    if meta is None:
        meta = require("sklearn.linear_model", "lab", "stacking").LogisticRegression(max_iter=1000)
    if not hasattr(meta, "predict_proba"):
        raise TypeError(f"meta must be an sklearn classifier with predict_proba, got {meta!r}")
    if folds is None:
        folds = stratified_folds(y, n_splits=5, seed=0)
    x = _features(p)
    oof = np.full(p.shape[1:], np.nan)
    for train_idx, val_idx in folds:
        model = base.clone(meta).fit(x[train_idx], y[train_idx])
        oof[np.ix_(val_idx, model.classes_)] = model.predict_proba(x[val_idx])
    if np.isnan(oof).all(axis=1).any():
        raise ValueError("folds leave some examples out of every validation part")
    oof = np.nan_to_num(oof)  # a class missing from a fold's training rows gets 0
    final = base.clone(meta).fit(x, y)
    test = None
    if test_probs is not None:
        t = _as_stack(test_probs, "test_probs")
        if t.shape[0] != p.shape[0] or t.shape[2] != p.shape[2]:
            raise ValueError(
                f"test_probs has shape {t.shape}, oof_probs {p.shape}: models/classes differ"
            )
        test = np.zeros(t.shape[1:])
        test[:, final.classes_] = final.predict_proba(_features(t))
    return StackResult(oof, test, final)


class Thresholds(NamedTuple):
    """Decision threshold(s) (predict positive when ``prob >= threshold``) and the F1
    each reaches on the data it was tuned on (optimistic: tune on OOF predictions)."""

    threshold: float | np.ndarray
    f1: float | np.ndarray


def _best_threshold(prob: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    if not truth.any():
        return float("inf"), 0.0  # no positive to find: never predict one
    metrics = require("sklearn.metrics", "lab", "threshold tuning")
    precision, recall, thresholds = metrics.precision_recall_curve(truth, prob)
    p, r = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def tune_thresholds(probs: Any, labels: Any) -> Thresholds:
    """The threshold(s) maximising F1 on (OOF) probabilities.

    Binary: ``probs`` and ``labels`` of shape ``(n,)`` (positive-class probability, 0/1
    labels) give one threshold. Multi-label: ``(n, n_labels)`` give one threshold per
    label, each maximising that label's F1 (so together the macro F1). Candidates are the
    distinct probabilities (``sklearn.metrics.precision_recall_curve``); a label with no
    positive gets ``inf`` (never predicted).

    Example:
        >>> tune_thresholds(np.array([0.1, 0.35, 0.4, 0.8]), np.array([0, 1, 0, 1]))
        Thresholds(threshold=0.35, f1=0.8)
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.shape != y.shape or p.ndim not in (1, 2) or p.shape[0] == 0:
        raise ValueError(
            f"probs and labels must have the same shape (n,) or (n, n_labels), got "
            f"{p.shape} and {y.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (binary or multi-label indicators)")
    y = y.astype(bool)
    if p.ndim == 1:
        return Thresholds(*_best_threshold(p, y))
    pairs = [_best_threshold(p[:, j], y[:, j]) for j in range(p.shape[1])]
    return Thresholds(np.array([t for t, _ in pairs]), np.array([f for _, f in pairs]))
