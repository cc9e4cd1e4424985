"""Test-time augmentation (TTA) for text: predict the original and N augmented views of
every example and average the predictions.

A view maker is either a danlu text augmenter (anything with ``augment(text, rng) ->
list[str]``: :class:`~danlu.data.eda.EDA`, the nlpaug wrapper, your own) applied to a list
of texts, or a batch function ``view(inputs, generator) -> inputs`` such as
:class:`TokenDropout` on token-id tensors. Predictions of the views are combined with
:func:`danlu.kfold.ensemble` (mean of probabilities, mean of logits or rank average).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from danlu.data.augment import Augmenter, example_rng
from danlu.kfold import Method, _as_logits, ensemble, softmax

__all__ = ["tta_predict", "text_views", "token_dropout", "TokenDropout", "TTA", "TTAReport"]

PredictFn = Callable[[Any], Any]
ViewFn = Callable[[Any, torch.Generator], Any]


def tta_predict(predict_fn: PredictFn, views: Sequence[Any], method: Method = "mean_probs"):
    """Predict every view with ``predict_fn`` and combine the predictions.

    Args:
        predict_fn: ``predict_fn(inputs) -> logits`` of shape ``(n, n_classes)`` (a tensor
            or array; ``(n,)`` is one binary logit), e.g. a closure over
            :func:`~danlu.predict.predict` with ``activation="none"``.
        views: the inputs of each view, all for the same ``n`` examples in the same order
            (usually the original first).
        method: ``"mean_probs"`` (mean of the softmax probabilities; returns
            probabilities), ``"mean_logits"`` (returns logits) or ``"rank"``; see
            :func:`danlu.kfold.ensemble`.

    Returns:
        a float64 numpy array ``(n, n_classes)``.

    Example:
        >>> predict_fn = lambda xs: np.array([[float(len(x)), 0.0] for x in xs])
        >>> tta_predict(predict_fn, [["ab", "c"], ["abc", "c"]], "mean_logits")
        array([[2.5, 0. ],
               [1. , 0. ]])
    """
    if len(views) == 0:
        raise ValueError("views is empty: give at least one view (the original inputs)")
    logits = [_as_logits(predict_fn(v), "logits", f"predict_fn's output on view {i}")
              for i, v in enumerate(views)]  # fmt: skip
    if len({z.shape for z in logits}) != 1:
        raise ValueError(f"views gave predictions of different shapes: {[z.shape for z in logits]}")
    return ensemble(np.stack(logits), method)


def text_views(
    texts: Sequence[str], augmenter: Augmenter, n_views: int, seed: Hashable = 0
) -> list[list[str]]:
    """``n_views`` augmented copies of ``texts``: view ``k`` holds the ``k``-th new version
    of every text. The augmenter runs once per text with :func:`~danlu.data.augment.example_rng`
    ``(seed, i)``, so a text's views do not depend on the other texts; a text for which it
    returns fewer than ``n_views`` versions (too short to change) keeps the original there.

    Example:
        >>> import random
        >>> class Upper:
        ...     def augment(self, text, rng): return [text.upper()]
        >>> text_views(["a b", "c"], Upper(), n_views=2)
        [['A B', 'C'], ['a b', 'c']]
    """
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be an integer >= 1, got {n_views!r}")
    if not isinstance(augmenter, Augmenter):
        raise TypeError(
            f"augmenter must have augment(text, rng) -> list[str] (e.g. danlu.data.EDA), got "
            f"{type(augmenter).__name__}"
        )
    views: list[list[str]] = [[] for _ in range(n_views)]
    for i, text in enumerate(texts):
        new = list(augmenter.augment(text, example_rng(seed, i)))
        for k in range(n_views):
            views[k].append(new[k] if k < len(new) else text)
    return views


def token_dropout(
    input_ids: torch.Tensor,
    p: float,
    mask_id: int,
    generator: torch.Generator | None = None,
    keep_ids: Sequence[int] = (),
) -> torch.Tensor:
    """A copy of ``input_ids`` with each token replaced by ``mask_id`` with probability
    ``p`` (token ids in ``keep_ids``, e.g. [CLS]/[SEP]/[PAD], are never replaced).

    Example:
        >>> ids = torch.tensor([[101, 7, 8, 9, 102]])
        >>> token_dropout(ids, 1.0, mask_id=103, keep_ids=[101, 102]).tolist()
        [[101, 103, 103, 103, 102]]
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1] (the share of tokens masked), got {p!r}")
    drop = torch.rand(input_ids.shape, generator=generator, device="cpu") < p
    drop = drop.to(input_ids.device)
    if len(keep_ids):
        drop &= ~torch.isin(input_ids, torch.as_tensor(list(keep_ids), device=input_ids.device))
    return input_ids.masked_fill(drop, mask_id)


class TokenDropout:
    """A TTA view on token ids: :func:`token_dropout` of a tensor, or of the
    ``"input_ids"`` entry of a dict batch (the other entries are kept).

    Args:
        p: share of tokens masked per view, in [0, 1] (0.1 is a common choice).
        mask_id: the replacement id (``tokenizer.mask_token_id`` or ``unk_token_id``).
        keep_ids: ids never replaced (``tokenizer.all_special_ids``).

    Example:
        >>> view = TokenDropout(0.1, mask_id=103, keep_ids=[0, 101, 102])
        >>> batch = {"input_ids": torch.tensor([[101, 7, 102]])}
        >>> view(batch, torch.Generator().manual_seed(0))["input_ids"].shape
        torch.Size([1, 3])
    """

    def __init__(self, p: float, mask_id: int, keep_ids: Sequence[int] = ()) -> None:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(
                f"p must be a number in [0, 1] (the share of tokens masked), got {p!r}"
            )
        if isinstance(mask_id, bool) or not isinstance(mask_id, int):
            raise TypeError(f"mask_id must be an integer token id, got {mask_id!r}")
        self.p, self.mask_id, self.keep_ids = float(p), mask_id, tuple(keep_ids)

    def __call__(self, inputs: Any, generator: torch.Generator) -> Any:
        if isinstance(inputs, dict):
            ids = token_dropout(inputs["input_ids"], self.p, self.mask_id, generator, self.keep_ids)
            return {**inputs, "input_ids": ids}
        return token_dropout(inputs, self.p, self.mask_id, generator, self.keep_ids)

    def __repr__(self) -> str:
        return f"TokenDropout(p={self.p}, mask_id={self.mask_id})"


class TTAReport(NamedTuple):
    """TTA against plain prediction on a labelled split: the two scores, their difference
    and the wall-clock seconds of each (TTA costs about ``n_views + 1`` predictions)."""

    plain: float
    tta: float
    delta: float
    plain_seconds: float
    tta_seconds: float


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(-1) == labels).mean())


class TTA:
    """Test-time augmentation: predict the original and ``n_views`` augmented views and
    average (the drop-in form of :func:`tta_predict`).

    Args:
        augmenter: a text augmenter (``augment(text, rng)``; inputs are then a list of
            texts) or a batch view ``view(inputs, generator) -> inputs`` such as
            :class:`TokenDropout`.
        n_views: augmented views per example (>= 1); 4–8 is typical, each costs one more
            prediction pass.
        method: ``"mean_probs"`` (default), ``"mean_logits"`` or ``"rank"``.
        keep_original: include the un-augmented inputs as a view (default True).
        seed: the views' seed (hashable); the same seed gives the same views.

    Example:
        >>> class Same:                                # the identity augmenter
        ...     def augment(self, text, rng): return [text]
        >>> predict_fn = lambda xs: np.array([[float(len(x)), 0.0] for x in xs])
        >>> bool(np.allclose(TTA(Same(), n_views=3)(predict_fn, ["ab"]),
        ...                  softmax(predict_fn(["ab"]))))
        True
    """

    def __init__(
        self,
        augmenter: Augmenter | ViewFn,
        n_views: int = 4,
        method: Method = "mean_probs",
        keep_original: bool = True,
        seed: Hashable = 0,
    ) -> None:
        if not isinstance(augmenter, Augmenter) and not callable(augmenter):
            raise TypeError(
                "augmenter must have augment(text, rng) (a text augmenter such as "
                f"danlu.data.EDA) or be a view(inputs, generator), got {type(augmenter).__name__}"
            )
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views must be an integer >= 1, got {n_views!r}")
        if method not in ("mean_probs", "mean_logits", "rank"):
            raise ValueError(
                f"method must be 'mean_probs', 'mean_logits' or 'rank', got {method!r}"
            )
        self.augmenter, self.n_views, self.method = augmenter, n_views, method
        self.keep_original, self.seed = keep_original, seed

    def views(self, inputs: Any) -> list[Any]:
        """The inputs of every view (the original first when ``keep_original``)."""
        if isinstance(self.augmenter, Augmenter):
            augmented = text_views(list(inputs), self.augmenter, self.n_views, self.seed)
        else:
            augmented = [
                self.augmenter(
                    inputs, torch.Generator().manual_seed(example_rng(self.seed, k).getrandbits(63))
                )
                for k in range(self.n_views)
            ]
        return [inputs, *augmented] if self.keep_original else augmented

    def __call__(self, predict_fn: PredictFn, inputs: Any) -> np.ndarray:
        """Combined predictions ``(n, n_classes)`` of all views."""
        return tta_predict(predict_fn, self.views(inputs), self.method)

    def evaluate(
        self,
        predict_fn: PredictFn,
        inputs: Any,
        labels: Sequence[int] | np.ndarray,
        metric: Callable[[np.ndarray, np.ndarray], float] = _accuracy,
    ) -> TTAReport:
        """Score plain prediction and TTA on a labelled split with ``metric(scores,
        labels)`` (default accuracy of the argmax; plain scores are softmax
        probabilities)."""
        y = np.asarray(labels)
        t0 = time.perf_counter()
        plain = softmax(_as_logits(predict_fn(inputs), "logits", "predict_fn's output"))
        t1 = time.perf_counter()
        combined = self(predict_fn, inputs)
        t2 = time.perf_counter()
        a, b = float(metric(plain, y)), float(metric(combined, y))
        return TTAReport(a, b, b - a, t1 - t0, t2 - t1)

    def __repr__(self) -> str:
        return (
            f"TTA({self.augmenter!r}, n_views={self.n_views}, method={self.method!r}, "
            f"keep_original={self.keep_original})"
        )
