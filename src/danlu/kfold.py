"""K-fold cross-validation for competition workflows: stratified (optionally group-aware)
splits, a resumable loop that trains one model per fold through your own function, and
fold ensembling (mean of logits, mean of probabilities, rank average).

The loop collects *out-of-fold* (OOF) predictions — every example predicted by the one
model that did not train on it — which is what :mod:`danlu.label_issues` needs to find
mislabelled examples, and the per-fold test-set logits, which :func:`ensemble` combines.

Splits use scikit-learn (extra ``lab``), imported only when :func:`stratified_folds` runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from danlu._checks import check_int
from danlu._optional import require

__all__ = [
    "stratified_folds",
    "softmax",
    "ensemble",
    "run_kfold",
    "KFoldResult",
    "TrainFold",
]

Method = Literal["mean_logits", "mean_probs", "rank"]
TrainFold = Callable[[int, np.ndarray, np.ndarray], "tuple[Any, Any]"]


def stratified_folds(
    labels: Sequence[int] | np.ndarray,
    n_splits: int = 5,
    groups: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled, stratified ``(train_idx, val_idx)`` pairs, one per fold.

    Uses ``sklearn.model_selection.StratifiedKFold``, or ``StratifiedGroupKFold`` when
    ``groups`` is given (all examples of a group land in the same fold: use it for
    near-duplicates, several texts of one author, chunks of one long document).

    Args:
        labels: class label per example (ints or any hashable).
        n_splits: number of folds, 2 <= n_splits <= number of examples (5 is common).
        groups: optional group id per example.
        seed: shuffling seed; the same seed gives the same folds.

    Example:
        >>> folds = stratified_folds([0, 1] * 10, n_splits=5, seed=0)
        >>> len(folds), len(folds[0][1])
        (5, 4)
    """
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {y.shape}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or not 2 <= n_splits <= len(y):
        raise ValueError(
            f"n_splits must be an integer in [2, {len(y)}] (the number of examples), "
            f"got {n_splits!r}"
        )
    check_int("seed", seed, 0, 2**32 - 1, fix="any fixed integer; keep it across reruns")
    ms = require("sklearn.model_selection", "lab", "stratified K-fold splits")
    if groups is None:
        splitter = ms.StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(
                f"groups must give one group id per example: got {g.shape[0] if g.ndim else 0} "
                f"group ids for {len(y)} labels"
            )
        splitter = ms.StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, g)
    return [(np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64)) for tr, va in splits]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of a numpy array (float64; ``scipy.special.softmax``).

    Example:
        >>> softmax(np.array([0.0, np.log(3.0)])).round(2)
        array([0.25, 0.75])
    """
    special = require("scipy.special", "lab", "kfold.softmax")
    return special.softmax(np.asarray(logits, dtype=np.float64), axis=axis)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along axis 0 with ties given their average rank."""
    stats = require("scipy.stats", "lab", "rank ensembling")
    return stats.rankdata(x, method="average", axis=0)


def ensemble(
    fold_outputs: Sequence[Any] | np.ndarray, method: Method = "mean_logits"
) -> np.ndarray:
    """Combine per-fold logits of the same examples into one ``(n, n_classes)`` score array.

    Args:
        fold_outputs: logits (or log-probabilities) of shape ``(n_folds, n, n_classes)``.
        method: ``"mean_logits"`` — the mean of the logits (returns logits; their softmax
            is the normalised geometric mean of the folds' probabilities); ``"mean_probs"``
            — the mean of the softmax probabilities (returns probabilities); ``"rank"`` — per class, each fold's
            probabilities are ranked over the ``n`` examples, ranks divided by ``n``
            (ties get their average rank) and averaged over folds (returns scores in
            (0, 1]; use it when a ranking metric such as AUC is scored and folds are
            calibrated differently). ``argmax(-1)`` predicts a class for all three;
            ``softmax`` of the mean logits and the mean probabilities are probabilities,
            rank scores are not.

    Example:
        >>> fold_logits = np.array([[[2.0, 0.0]], [[0.0, 1.0]]])   # 2 folds, 1 example
        >>> ensemble(fold_logits, "mean_logits")
        array([[1. , 0.5]])
    """
    z = np.asarray(fold_outputs, dtype=np.float64)
    if z.ndim != 3 or z.shape[0] < 1:
        raise ValueError(
            f"fold_outputs must have shape (n_folds, n_examples, n_classes), got {z.shape}"
        )
    if not np.isfinite(z).all():
        raise ValueError(
            f"fold_outputs must be finite, got {int((~np.isfinite(z)).sum())} NaN/inf entries; "
            "a diverged fold (NaN loss) must be retrained or left out"
        )
    if method == "mean_logits":
        return z.mean(axis=0)
    if method == "mean_probs":
        return softmax(z).mean(axis=0)
    if method == "rank":
        probs = softmax(z)
        return np.mean([_average_ranks(p) / p.shape[0] for p in probs], axis=0)
    raise ValueError(f"method must be 'mean_logits', 'mean_probs' or 'rank', got {method!r}")


@dataclass
class KFoldResult:
    """What :func:`run_kfold` collected.

    Attributes:
        folds: the ``(train_idx, val_idx)`` pair of each fold.
        oof_logits: ``(n, n_classes)`` out-of-fold logits: row ``i`` comes from the fold
            whose validation part held example ``i``.
        fold_of: ``(n,)`` the fold that predicted each example.
        test_logits: ``(n_folds, n_test, n_classes)`` per-fold test logits, or ``None``
            when ``train_fold`` returned no test predictions.
        computed: folds trained in this call (the others were loaded from ``out_dir``).
    """

    folds: list[tuple[np.ndarray, np.ndarray]]
    oof_logits: np.ndarray
    fold_of: np.ndarray
    test_logits: np.ndarray | None
    computed: list[int] = field(default_factory=list)

    @property
    def oof_probs(self) -> np.ndarray:
        """``(n, n_classes)`` out-of-fold probabilities (softmax of :attr:`oof_logits`)."""
        return softmax(self.oof_logits)

    def test_scores(self, method: Method = "mean_logits") -> np.ndarray:
        """The folds' test logits combined by :func:`ensemble`."""
        if self.test_logits is None:
            raise ValueError("train_fold returned no test predictions (None), nothing to ensemble")
        return ensemble(self.test_logits, method)


def _as_logits(out: Any, returns: str, what: str) -> np.ndarray:
    """Numpy float64 ``(n, C)`` logits from a tensor/array of logits or probabilities;
    1-D output is taken as the positive-class logit / probability of a binary task."""
    if hasattr(out, "detach"):  # torch tensor, without importing torch here
        out = out.detach().float().cpu().numpy()
    a = np.asarray(out, dtype=np.float64)
    if a.ndim == 1:
        a = np.stack([np.zeros_like(a), a], 1) if returns == "logits" else np.stack([1 - a, a], 1)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"{what} must have shape (n, n_classes) or (n,), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds non-finite values (nan/inf)")
    if returns == "probs":
        if a.min() < 0 or a.max() > 1 or not np.allclose(a.sum(1), 1.0, atol=1e-3):
            raise ValueError(
                f"{what} must be probabilities (rows in [0, 1] summing to 1) since "
                "returns='probs'; pass returns='logits' for raw scores"
            )
        a = np.log(np.clip(a, 1e-12, 1.0))  # log-probs are logits: softmax gives back a
    return a


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_fold(path: Path, val_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path) as f:
        if not np.array_equal(f["val_idx"], val_idx):
            raise ValueError(
                f"{path} was saved for a different split (other labels, n_splits, groups or "
                "seed); use a fresh out_dir or delete its fold_*.npz files"
            )
        test = f["test_logits"] if "test_logits" in f.files else None
        return f["val_logits"], test


def run_kfold(
    train_fold: TrainFold,
    labels: Sequence[Any] | np.ndarray,
    n_splits: int = 5,
    groups: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    returns: Literal["logits", "probs"] = "logits",
) -> KFoldResult:
    """Train one model per stratified fold with your own function and collect out-of-fold
    and test predictions.

    ``train_fold(fold, train_idx, val_idx)`` trains a fresh model on ``train_idx`` (it may
    use ``val_idx`` for early stopping) and returns ``(val_out, test_out)``: predictions for
    the ``val_idx`` examples in that order, and for your test set (or ``None``). Each is a
    numpy array or torch tensor of shape ``(n, n_classes)`` (``(n,)`` for one binary score).

    With ``out_dir``, each finished fold is written atomically to ``out_dir/fold_{k}.npz``;
    a rerun (after a crash) loads those folds instead of training them again. A file saved
    for a different split raises an error instead of being mixed in; the check covers the
    split only, so use a new ``out_dir`` after changing the model or the test set.

    Args:
        train_fold: the per-fold training function (see above).
        labels: class label per training example (stratification target).
        n_splits: number of folds (>= 2).
        groups: optional group id per example: groups never straddle folds.
        seed: split seed; keep it fixed across reruns so saved folds still match.
        out_dir: directory for the per-fold checkpoints (created if missing), or ``None``.
        returns: ``"logits"`` (default) or ``"probs"`` — what ``train_fold`` returns.
            Probabilities are stored as log-probabilities, which are valid logits.

    Returns:
        a :class:`KFoldResult` (``oof_probs`` feeds :func:`danlu.label_issues.find_label_issues`,
        ``test_scores(method)`` ensembles the folds).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X, X_test = rng.normal(size=(40, 3)), rng.normal(size=(5, 3))
        >>> y = (X[:, 0] > 0).astype(int)
        >>> def train_fold(fold, train_idx, val_idx):   # a nearest-centroid "model"
        ...     Xt, yt = X[train_idx], y[train_idx]
        ...     w = Xt[yt == 1].mean(0) - Xt[yt == 0].mean(0)
        ...     return X[val_idx] @ w, X_test @ w        # one binary logit per example
        >>> res = run_kfold(train_fold, y, n_splits=4, seed=0)
        >>> bool((res.oof_probs.argmax(1) == y).mean() > 0.8)
        True
        >>> res.test_scores("mean_probs").shape
        (5, 2)
    """
    if returns not in ("logits", "probs"):
        raise ValueError(f"returns must be 'logits' or 'probs', got {returns!r}")
    folds = stratified_folds(labels, n_splits=n_splits, groups=groups, seed=seed)
    n = len(np.asarray(labels))
    directory = None
    if out_dir is not None:
        directory = Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)

    oof: np.ndarray | None = None
    fold_of = np.full(n, -1, dtype=np.int64)
    tests: list[np.ndarray | None] = []
    computed: list[int] = []
    for k, (train_idx, val_idx) in enumerate(folds):
        path = directory / f"fold_{k}.npz" if directory is not None else None
        if path is not None and path.exists():
            val_logits, test_logits = _load_fold(path, val_idx)
        else:
            val_out, test_out = train_fold(k, train_idx.copy(), val_idx.copy())
            val_logits = _as_logits(val_out, returns, f"fold {k}'s validation output")
            test_logits = (
                None
                if test_out is None
                else _as_logits(test_out, returns, f"fold {k}'s test output")
            )
            if len(val_logits) != len(val_idx):
                raise ValueError(
                    f"fold {k}: train_fold returned {len(val_logits)} validation rows for "
                    f"{len(val_idx)} validation examples; predict exactly val_idx, in order"
                )
            if path is not None:
                extra = {} if test_logits is None else {"test_logits": test_logits}
                _save_atomic(path, val_idx=val_idx, val_logits=val_logits, **extra)
            computed.append(k)
        if oof is None:
            oof = np.zeros((n, val_logits.shape[1]), dtype=np.float64)
        elif val_logits.shape[1] != oof.shape[1]:
            raise ValueError(
                f"fold {k} predicts {val_logits.shape[1]} classes, earlier folds {oof.shape[1]}"
            )
        oof[val_idx] = val_logits
        fold_of[val_idx] = k
        tests.append(test_logits)

    if any(t is None for t in tests) and not all(t is None for t in tests):
        raise ValueError("train_fold returned test predictions for some folds and None for others")
    if tests[0] is not None and len({t.shape for t in tests}) != 1:
        raise ValueError(f"fold test outputs differ in shape: {[t.shape for t in tests]}")
    test_stack = None if tests[0] is None else np.stack(tests)
    return KFoldResult(folds, oof, fold_of, test_stack, computed)
