"""danlu.kfold: splits (coverage, stratification, groups), fold ensembling against numpy /
scipy written here, the K-fold loop and its per-fold resume."""

from __future__ import annotations

import numpy as np
import pytest

from danlu.kfold import KFoldResult, ensemble, run_kfold, softmax, stratified_folds


def need_sklearn() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (extra 'lab') is not installed")


def labels_3class(n: int = 103, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(3, size=n, p=[0.6, 0.3, 0.1])


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- splits
@pytest.mark.parametrize("n_splits", [2, 5])
def test_every_example_is_out_of_fold_exactly_once(n_splits):
    need_sklearn()
    y = labels_3class()
    folds = stratified_folds(y, n_splits=n_splits, seed=1)
    assert len(folds) == n_splits
    all_val = np.concatenate([va for _, va in folds])
    np.testing.assert_array_equal(np.sort(all_val), np.arange(len(y)))
    for tr, va in folds:
        assert not set(tr) & set(va)
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(y)))


def test_stratification_within_one_of_expected_counts():
    need_sklearn()
    y, k = labels_3class(), 5
    for _, va in stratified_folds(y, n_splits=k, seed=3):
        for c in range(3):
            expected = (y == c).sum() / k
            assert abs((y[va] == c).sum() - expected) <= 1, (c, (y[va] == c).sum(), expected)


def test_same_seed_same_folds_other_seed_other_folds():
    need_sklearn()
    y = labels_3class()
    a, b, c = (stratified_folds(y, 5, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b))
    assert not all(np.array_equal(x[1], z[1]) for x, z in zip(a, c))


def test_groups_stay_together():
    need_sklearn()
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(1, 5, size=40))
    y = rng.integers(0, 2, size=len(groups))
    folds = stratified_folds(y, n_splits=4, groups=groups, seed=0)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([va for _, va in folds])), np.arange(len(y))
    )
    for g in np.unique(groups):
        members = set(np.flatnonzero(groups == g))
        holding = [k for k, (_, va) in enumerate(folds) if members & set(va)]
        assert len(holding) == 1 and members <= set(folds[holding[0]][1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_splits": 1}, "n_splits must be an integer in"),
        ({"n_splits": 200}, "n_splits must be an integer in"),
        ({"groups": [0, 1]}, "one group id per example"),
    ],
)
def test_split_errors(kwargs, match):
    need_sklearn()
    with pytest.raises(ValueError, match=match):
        stratified_folds(labels_3class(), **kwargs)


# ---------------------------------------------------------------- ensembling
def fold_logits(seed: int = 0, k: int = 4, n: int = 30, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k, n, c)) * 3


def test_softmax_matches_textbook():
    z = fold_logits()[0]
    np.testing.assert_allclose(softmax(z), np_softmax(z), rtol=1e-12)
    np.testing.assert_allclose(softmax(np.array([[1000.0, 0.0]])), [[1.0, 0.0]])


def test_mean_logits_and_mean_probs():
    z = fold_logits()
    np.testing.assert_allclose(ensemble(z, "mean_logits"), z.sum(0) / z.shape[0], rtol=1e-12)
    manual = sum(np_softmax(z[f]) for f in range(z.shape[0])) / z.shape[0]
    np.testing.assert_allclose(ensemble(z, "mean_probs"), manual, rtol=1e-12)
    # softmax of the mean logits = the normalised geometric mean of the folds' probabilities
    geo = np.prod([np_softmax(z[f]) for f in range(z.shape[0])], axis=0) ** (1 / z.shape[0])
    np.testing.assert_allclose(
        np_softmax(ensemble(z, "mean_logits")), geo / geo.sum(-1, keepdims=True), rtol=1e-10
    )


def test_rank_average_without_ties_is_argsort_argsort():
    z = fold_logits()
    n = z.shape[1]
    manual = np.zeros(z.shape[1:])
    for f in range(z.shape[0]):
        p = np_softmax(z[f])
        manual += (np.argsort(np.argsort(p, axis=0), axis=0) + 1) / n
    np.testing.assert_allclose(ensemble(z, "rank"), manual / z.shape[0], rtol=1e-12)


def test_rank_average_with_ties_matches_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy (extra 'lab') is not installed")
    z = np.round(fold_logits(seed=1, n=40), 0)  # rounding creates many ties
    probs = [np_softmax(z[f]) for f in range(z.shape[0])]
    manual = np.mean([stats.rankdata(p, method="average", axis=0) / p.shape[0] for p in probs], 0)
    np.testing.assert_allclose(ensemble(z, "rank"), manual, rtol=1e-12)


def test_ensemble_errors():
    with pytest.raises(ValueError, match="method must be"):
        ensemble(fold_logits(), "median")
    with pytest.raises(ValueError, match="n_folds, n_examples, n_classes"):
        ensemble(np.zeros((3, 4)), "mean_logits")


# ---------------------------------------------------------------- the loop
def fake_logits(idx: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Deterministic per-example logits, so the loop's bookkeeping can be checked exactly."""
    idx = np.asarray(idx, dtype=np.float64)
    return np.stack([np.sin(idx), np.cos(idx), idx / 100.0 + offset], 1)


class Recorder:
    """A train_fold that records its calls; optionally crashes on one fold."""

    def __init__(self, crash_on: int | None = None, n_test: int = 7):
        self.calls: list[int] = []
        self.crash_on, self.n_test = crash_on, n_test

    def __call__(self, fold, train_idx, val_idx):
        if fold == self.crash_on:
            raise RuntimeError(f"simulated crash in fold {fold}")
        self.calls.append(fold)
        assert not set(train_idx) & set(val_idx)
        return fake_logits(val_idx), fake_logits(np.arange(self.n_test), offset=fold)


def test_run_kfold_collects_oof_and_test_logits():
    need_sklearn()
    y = labels_3class(60)
    rec = Recorder()
    res = run_kfold(rec, y, n_splits=3, seed=0)
    assert isinstance(res, KFoldResult) and rec.calls == [0, 1, 2] and res.computed == [0, 1, 2]
    np.testing.assert_array_equal(res.oof_logits, fake_logits(np.arange(60)))
    np.testing.assert_allclose(res.oof_probs, np_softmax(fake_logits(np.arange(60))))
    for k, (_, va) in enumerate(res.folds):
        assert (res.fold_of[va] == k).all()
    assert res.test_logits.shape == (3, 7, 3)
    np.testing.assert_allclose(res.test_logits[2], fake_logits(np.arange(7), offset=2))
    np.testing.assert_allclose(res.test_scores("mean_logits"), res.test_logits.mean(0))


def test_run_kfold_accepts_torch_probs_and_binary_scores():
    torch = pytest.importorskip("torch")
    need_sklearn()
    y = labels_3class(30)
    probs = np_softmax(fake_logits(np.arange(30)))

    def probs_fold(fold, tr, va):
        return torch.tensor(probs[va], dtype=torch.float32), None

    res = run_kfold(probs_fold, y, n_splits=3, returns="probs")
    assert res.test_logits is None
    np.testing.assert_allclose(res.oof_probs, probs, atol=1e-6)
    with pytest.raises(ValueError, match="no test predictions"):
        res.test_scores()

    yb = (np.arange(30) % 2).astype(int)
    res = run_kfold(lambda f, tr, va: (va / 10.0, None), yb, n_splits=3)
    sig = 1 / (1 + np.exp(-np.arange(30) / 10.0))
    np.testing.assert_allclose(res.oof_probs[:, 1], sig, rtol=1e-12)


def test_resume_skips_finished_folds(tmp_path):
    need_sklearn()
    y = labels_3class(50)
    crashing = Recorder(crash_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_kfold(crashing, y, n_splits=5, seed=4, out_dir=tmp_path)
    assert crashing.calls == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_0.npz", "fold_1.npz"]

    rerun = Recorder()
    res = run_kfold(rerun, y, n_splits=5, seed=4, out_dir=tmp_path)
    assert rerun.calls == [2, 3, 4] and res.computed == [2, 3, 4]

    fresh = run_kfold(Recorder(), y, n_splits=5, seed=4)
    np.testing.assert_array_equal(res.oof_logits, fresh.oof_logits)
    np.testing.assert_array_equal(res.test_logits, fresh.test_logits)

    third = Recorder()
    again = run_kfold(third, y, n_splits=5, seed=4, out_dir=tmp_path)
    assert third.calls == [] and again.computed == []
    np.testing.assert_array_equal(again.oof_logits, fresh.oof_logits)
    assert not list(tmp_path.glob("*.tmp"))

    with pytest.raises(ValueError, match="different split"):
        run_kfold(Recorder(), y, n_splits=5, seed=5, out_dir=tmp_path)


def test_run_kfold_errors():
    need_sklearn()
    y = labels_3class(30)
    with pytest.raises(ValueError, match="validation rows"):
        run_kfold(lambda f, tr, va: (np.zeros((len(va) + 1, 3)), None), y, n_splits=3)
    with pytest.raises(ValueError, match="some folds and None"):
        run_kfold(lambda f, tr, va: (np.zeros((len(va), 3)), None if f else np.zeros((2, 3))), y, 3)
    with pytest.raises(ValueError, match="must be probabilities"):
        run_kfold(lambda f, tr, va: (np.ones((len(va), 3)), None), y, 3, returns="probs")
    with pytest.raises(ValueError, match="returns must be"):
        run_kfold(Recorder(), y, 3, returns="scores")
    with pytest.raises(ValueError, match="non-finite"):
        run_kfold(lambda f, tr, va: (np.full((len(va), 3), np.nan), None), y, 3)


def test_importing_the_workflow_modules_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, danlu.kfold, danlu.label_issues, danlu.full_data\n"
        "heavy = ['sklearn', 'cleanlab', 'scipy', 'pandas', 'matplotlib', 'transformers']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
