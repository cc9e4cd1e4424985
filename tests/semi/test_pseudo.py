"""Pseudo-label selection (thresholds, caps, class balance, soft labels) on constructed
probabilities, and the train -> label -> retrain round composed with danlu.kfold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from danlu.kfold import run_kfold, softmax
from danlu.semi import pseudo_label_round, select_pseudo_labels

P = np.array(
    [
        [0.95, 0.03, 0.02],  # 0: class 0, very sure
        [0.91, 0.05, 0.04],  # 1: class 0
        [0.85, 0.10, 0.05],  # 2: class 0, below 0.9
        [0.10, 0.88, 0.02],  # 3: class 1
        [0.05, 0.93, 0.02],  # 4: class 1
        [0.01, 0.01, 0.98],  # 5: class 2
        [0.40, 0.30, 0.30],  # 6: unsure
        [0.99, 0.005, 0.005],  # 7: class 0, surest
    ]
)


def test_threshold_per_class_caps_and_balance():
    sel = select_pseudo_labels(P, threshold=0.9)
    assert sel.index.tolist() == [0, 1, 4, 5, 7]
    assert sel.labels.tolist() == [0, 0, 1, 2, 0]
    np.testing.assert_allclose(sel.confidence, P[[0, 1, 4, 5, 7]].max(1))
    # per-class thresholds: class 1 accepted from 0.85 on
    assert select_pseudo_labels(P, threshold=[0.9, 0.85, 0.9]).index.tolist() == [0, 1, 3, 4, 5, 7]
    # a cap keeps the most confident of each class (7 then 0 for class 0)
    assert select_pseudo_labels(P, threshold=0.9, max_per_class=2).index.tolist() == [0, 4, 5, 7]
    assert select_pseudo_labels(P, 0.9, max_per_class=[1, None, 0]).index.tolist() == [4, 7]
    # balance: every class capped at the smallest (1 each)
    bal = select_pseudo_labels(P, threshold=0.9, balance=True)
    assert bal.index.tolist() == [4, 5, 7]
    assert np.bincount(bal.labels, minlength=3).tolist() == [1, 1, 1]
    # a class with no confident example empties a balanced selection
    assert len(select_pseudo_labels(P, threshold=0.99, balance=True).index) == 0


def test_soft_labels_and_torch_input():
    sel = select_pseudo_labels(torch.tensor(P), threshold=0.9, soft=True)
    np.testing.assert_allclose(sel.labels, P[sel.index])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 0.0}, r"threshold must be a probability in \(0, 1\]"),
        ({"threshold": 1.2}, r"threshold must be a probability in \(0, 1\]"),
        ({"threshold": [0.9, 0.9]}, "3 classes"),
        ({"max_per_class": -1}, "max_per_class must be an integer >= 0"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_pseudo_labels(P, **kwargs)
    with pytest.raises(ValueError, match="softmax"):
        select_pseudo_labels(np.log(P))


def test_round_composes_with_kfold():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int)
    lab, unl = np.arange(20), np.arange(20, 120)
    feats = np.concatenate([x[lab], x[unl]])  # index space: labelled, then unlabelled
    calls = []

    def fit_predict(idx, labels):
        calls.append(len(idx))

        def train_fold(fold, tr, va):  # nearest-centroid "model" per fold
            w = feats[idx][tr][labels[tr] == 1].mean(0) - feats[idx][tr][labels[tr] == 0].mean(0)
            return feats[idx][va] @ w * 4, x[unl] @ w * 4

        res = run_kfold(train_fold, labels, n_splits=4, seed=0)
        return softmax(res.test_scores("mean_logits"))

    out = pseudo_label_round(fit_predict, y[lab], len(unl), rounds=2, threshold=0.9)
    assert len(out) == 3 and calls[0] == 20
    for r, n_train in zip(out[:-1], calls[1:]):  # each retrain sees labelled + selected
        assert n_train == 20 + len(r.selected.index)
    acc = (out[-1].selected.labels == y[unl][out[-1].selected.index]).mean()
    assert acc > 0.9 and len(out[-1].selected.index) > 20
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        pseudo_label_round(fit_predict, y[lab], len(unl), rounds=0)


def test_pseudo_label_trick_relabels_at_epoch_end_and_adds_ce():
    import copy

    import torch.nn.functional as F
    from helpers import TinyTextClassifier, loss_fn, make_batch

    import danlu
    from danlu.semi import PseudoLabel

    torch.manual_seed(0)
    model = TinyTextClassifier()
    unl = [{"input_ids": make_batch(seed=30 + i)["input_ids"]} for i in range(2)]
    trick = PseudoLabel(unl, alpha=0.5, start_epoch=1, threshold=0.35,
                        logits_fn=lambda m, b: m(b["input_ids"]))  # fmt: skip
    tricks = danlu.Tricks([trick])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # frozen weights: losses comparable
    b = make_batch()
    plain = loss_fn(copy.deepcopy(model), b)[0]
    assert torch.equal(tricks.step(model, opt, b, loss_fn).loss, plain.detach())  # not yet
    tricks.epoch_end()
    probs = torch.cat([model(u["input_ids"]) for u in unl]).softmax(-1).detach()
    ref = select_pseudo_labels(probs, threshold=0.35)
    assert tricks.state.extra["pseudo_selected"] == len(ref.index) > 0
    first = ref.index[ref.index < 8]  # rows of the first batch
    st = tricks.step(model, opt, b, loss_fn)
    ce = F.cross_entropy(model(unl[0]["input_ids"])[first], torch.as_tensor(ref.labels[: len(first)]))
    torch.testing.assert_close(st.loss, (plain + 0.5 * ce).detach())
    with pytest.raises(ValueError, match="start_epoch must be an integer >= 1"):
        PseudoLabel(unl, start_epoch=0)
    with pytest.raises(ValueError, match="threshold must be a probability"):
        PseudoLabel(unl, threshold=2.0)
    with pytest.raises(ValueError, match="empty"):
        PseudoLabel([])
