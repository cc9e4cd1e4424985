"""pseudo_dataset: the selected texts with hard pseudo-labels as a TextDataset, after the
labelled examples; inputs untouched; soft labels, out-of-range indices and mismatched class
names refused."""

from __future__ import annotations

import numpy as np
import pytest

from danlu.datasets import TextDataset
from danlu.semi import pseudo_dataset, select_pseudo_labels

P = np.array([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.97, 0.03], [0.3, 0.7]])
TEXTS = ["great film", "fine I guess", "awful", "a triumph", "dull-ish"]


def test_hard_labels_after_the_labelled_set():
    labelled = TextDataset(["liked it", "hated it"], [0, 1], ("pos", "neg"))
    sel = select_pseudo_labels(P, threshold=0.9)
    ds = pseudo_dataset(TEXTS, sel, ("pos", "neg"), labelled=labelled)
    # by hand: rows 0, 2, 3 are >= 0.9, argmax 0, 1, 0
    assert ds.texts == ["liked it", "hated it", "great film", "awful", "a triumph"]
    assert ds.labels == [0, 1, 0, 1, 0]
    assert ds.label_names == ("pos", "neg")
    assert labelled.texts == ["liked it", "hated it"] and labelled.labels == [0, 1]
    alone = pseudo_dataset(TEXTS, select_pseudo_labels(P, 0.9, max_per_class=1), ["pos", "neg"])
    assert alone.texts == ["awful", "a triumph"] and alone.labels == [1, 0]


def test_empty_selection_gives_the_labelled_set():
    labelled = TextDataset(["ok"], [0], ("pos", "neg"))
    ds = pseudo_dataset(TEXTS, select_pseudo_labels(P, 1.0), ("pos", "neg"), labelled)
    assert ds.texts == ["ok"] and ds.labels == [0]


@pytest.mark.parametrize(
    "texts, kwargs, names, match",
    [
        (TEXTS, {"soft": True}, ("pos", "neg"), "needs hard labels"),
        (TEXTS[:2], {}, ("pos", "neg"), "only 2 texts"),
        (TEXTS, {}, ("neg", "pos"), "differ from label_names"),
    ],
)
def test_errors(texts, kwargs, names, match):
    labelled = TextDataset(["ok"], [0], ("pos", "neg"))
    sel = select_pseudo_labels(P, threshold=0.9, **kwargs)
    with pytest.raises(ValueError, match=match):
        pseudo_dataset(texts, sel, names, labelled)
