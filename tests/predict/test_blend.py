"""danlu.predict.blend: a pure-noise model gets weight ~0 and the weights stay on the
simplex; stacking never sees its own fold's labels (poisoned-label test); rank averaging
and F1 thresholds against independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, log_loss

from danlu.kfold import ensemble, stratified_folds
from danlu.predict import blend, fit_blend_weights, rank_average, stack, tune_thresholds


def _oof(n=1500, c=3, seed=0):
    """Labels drawn from a 'true' distribution; a calibrated model, a weaker calibrated
    model (tempered), and a pure-noise model independent of the labels."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, c))
    truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=p) for p in truth])
    zw = z / 2 + rng.normal(0, 0.5, (n, c))
    weak = np.exp(zw) / np.exp(zw).sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(c), n)
    return np.stack([truth, weak, noise]), y


def test_a_noise_model_gets_weight_zero_and_weights_stay_on_the_simplex():
    p, y = _oof()
    w = fit_blend_weights(p, y)
    assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w[2] < 0.01, w
    # the fit is at least as good as any point of a fine grid over the simplex
    fitted = log_loss(y, blend(p, w))
    grid = [
        log_loss(y, blend(p, [a, b, max(0.0, 1 - a - b)]))
        for a, b in itertools.product(np.linspace(0, 1, 21), repeat=2)
        if a + b <= 1 + 1e-9
    ]
    assert fitted <= min(grid) + 1e-6


def test_binary_probabilities_and_errors():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.1, 400), 0.01, 0.99)
    w = fit_blend_weights([good, rng.uniform(0.01, 0.99, 400)], y)
    assert w[1] < 0.01
    with pytest.raises(ValueError, match="labels"):
        fit_blend_weights([good], y[:-1])
    with pytest.raises(ValueError, match="probabilities"):
        fit_blend_weights([good * 3], y)
    with pytest.raises(ValueError, match="weights"):
        blend([good, good], [0.7, 0.7])


def test_rank_average_matches_kfold_rank_ensemble():
    p, _ = _oof(n=50)
    np.testing.assert_allclose(rank_average(p), ensemble(np.log(p), "rank"), atol=1e-12)
    w = np.array([0.5, 0.3, 0.2])
    single = [rank_average(p[i : i + 1]) for i in range(3)]
    np.testing.assert_allclose(rank_average(p, w), np.tensordot(w, np.stack(single), 1))


def test_stacking_never_sees_its_own_folds_labels():
    p, y = _oof(n=300, seed=2)
    folds = stratified_folds(y, n_splits=4, seed=0)
    clean = stack(p, y, folds=folds)
    for _, val_idx in folds:
        poisoned = y.copy()
        poisoned[val_idx] = (y[val_idx] + 1) % 3  # every label of fold k is wrong
        res = stack(p, poisoned, folds=folds)
        np.testing.assert_array_equal(res.oof[val_idx], clean.oof[val_idx])
        others = np.setdiff1d(np.arange(len(y)), val_idx)
        assert not np.allclose(res.oof[others], clean.oof[others])  # the poison is used there
    # reference: fold 0's rows predicted by a meta-learner fitted by hand on the other folds
    tr, va = folds[0]
    x = np.concatenate(list(p), axis=1)
    ref = LogisticRegression(max_iter=1000).fit(x[tr], y[tr]).predict_proba(x[va])
    np.testing.assert_allclose(clean.oof[va], ref, atol=1e-10)


def test_stacking_beats_the_noise_and_predicts_test():
    p, y = _oof(n=600, seed=3)
    res = stack(p, y, test_probs=p[:, :10])
    assert log_loss(y, res.oof) < log_loss(y, p[2])
    x = np.concatenate(list(p[:, :10]), axis=1)
    np.testing.assert_allclose(res.test, res.meta.predict_proba(x))
    with pytest.raises(ValueError, match="test_probs"):
        stack(p, y, test_probs=p[:2])
    with pytest.raises(TypeError, match="predict_proba"):
        stack(p, y, meta=object())


def _brute_force_f1(prob, truth):
    return max(f1_score(truth, prob >= t, zero_division=0) for t in np.unique(prob))


def test_binary_threshold_maximises_f1():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    prob = np.clip(0.35 * y + rng.uniform(0, 0.65, 200), 0, 1)
    thr, f1 = tune_thresholds(prob, y)
    assert f1 == pytest.approx(_brute_force_f1(prob, y), abs=1e-12)
    assert f1_score(y, prob >= thr) == pytest.approx(f1, abs=1e-12)
    assert f1 > f1_score(y, prob >= 0.5)


def test_multi_label_thresholds_per_label():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (150, 3))
    y[:, 2] = 0  # a label without positives is never predicted
    prob = np.clip(0.3 * y + rng.uniform(0, 0.7, y.shape), 0, 1)
    res = tune_thresholds(prob, y)
    for j in range(2):
        assert res.f1[j] == pytest.approx(_brute_force_f1(prob[:, j], y[:, j]), abs=1e-12)
        assert f1_score(y[:, j], prob[:, j] >= res.threshold[j]) == pytest.approx(res.f1[j])
    assert res.threshold[2] == np.inf and res.f1[2] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        tune_thresholds(prob, y[:, :2])
    with pytest.raises(ValueError, match="0/1"):
        tune_thresholds(prob[:, 0], y[:, 0] + 1)


def test_composes_with_run_kfold():
    """Two heterogeneous 'models' cross-validated on the same folds by danlu.kfold: the
    noise model gets weight ~0 and the stack uses the same folds."""
    from danlu.kfold import run_kfold

    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)

    def centroid(fold, train_idx, val_idx):  # a nearest-centroid linear "model"
        w = x[train_idx][y[train_idx] == 1].mean(0) - x[train_idx][y[train_idx] == 0].mean(0)
        return x[val_idx] @ w, None

    def noise(fold, train_idx, val_idx):
        return np.random.default_rng(fold).normal(size=len(val_idx)), None

    runs = [run_kfold(f, y, n_splits=5, seed=0) for f in (centroid, noise)]
    oof = np.stack([r.oof_probs for r in runs])
    w = fit_blend_weights(oof, y)
    assert w[1] < 0.01
    res = stack(oof, y, folds=runs[0].folds)
    assert (res.oof.argmax(1) == y).mean() > 0.9
