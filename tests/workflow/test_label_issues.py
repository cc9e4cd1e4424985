"""danlu.label_issues: planted flips are found from K-fold out-of-fold probabilities (with
and without cleanlab), the self-confidence ranking against a hand-written one, the suspects
table, and clean_dataset (drop / relabel, inputs untouched)."""

from __future__ import annotations

import numpy as np
import pytest

from danlu.label_issues import (
    LabelIssues,
    clean_dataset,
    find_label_issues,
    issues_table,
    self_confidence,
)

N, N_CLASSES, N_FLIPS = 300, 3, 15
K = 2 * N_FLIPS  # recall is measured in the top K = 2 x (number of planted flips)


def planted_noise_oof_probs(seed: int = 0):
    """Three well-separated Gaussian blobs, 5% of labels flipped to another class, and
    5-fold out-of-fold probabilities of a nearest-centroid (Gaussian posterior) model."""
    pytest.importorskip("sklearn", reason="scikit-learn (extra 'lab') is not installed")
    from danlu.kfold import run_kfold

    rng = np.random.default_rng(seed)
    true = rng.integers(0, N_CLASSES, size=N)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [2.5, 4.5]])
    x = centres[true] + rng.normal(size=(N, 2))
    flipped = rng.choice(N, size=N_FLIPS, replace=False)
    noisy = true.copy()
    noisy[flipped] = (true[flipped] + rng.integers(1, N_CLASSES, size=N_FLIPS)) % N_CLASSES

    def train_fold(fold, tr, va):
        mu = np.stack([x[tr][noisy[tr] == c].mean(0) for c in range(N_CLASSES)])
        return -0.5 * ((x[va, None, :] - mu[None]) ** 2).sum(-1), None

    probs = run_kfold(train_fold, noisy, n_splits=5, seed=seed).oof_probs
    return noisy, probs, set(flipped.tolist())


@pytest.mark.parametrize("backend", ["self_confidence", "cleanlab"])
def test_planted_flips_ranked_at_the_top(backend):
    if backend == "cleanlab":
        pytest.importorskip("cleanlab", reason="cleanlab (extra 'lab') is not installed")
    noisy, probs, flipped = planted_noise_oof_probs()
    issues = find_label_issues(noisy, probs, backend=backend)
    assert issues.backend == backend
    found = set(issues.indices[:K].tolist()) & flipped
    assert len(found) / N_FLIPS >= 0.8, (backend, len(found), issues.indices[:K])


def test_auto_backend_picks_cleanlab_when_installed():
    noisy, probs, _ = planted_noise_oof_probs()
    try:
        import cleanlab  # noqa: F401

        expected = "cleanlab"
    except ImportError:
        expected = "self_confidence"
    assert find_label_issues(noisy, probs).backend == expected


def test_cleanlab_backend_is_cleanlabs_ranking():
    cl_filter = pytest.importorskip("cleanlab.filter", reason="cleanlab is not installed")
    noisy, probs, _ = planted_noise_oof_probs(seed=1)
    ref = cl_filter.find_label_issues(noisy, probs, return_indices_ranked_by="self_confidence")
    np.testing.assert_array_equal(find_label_issues(noisy, probs, "cleanlab").indices, ref)


def test_self_confidence_ranking_by_hand():
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]
    )
    labels = [0, 0, 1, 2, 1]
    np.testing.assert_allclose(self_confidence(labels, probs), [0.7, 0.1, 0.4, 0.6, 0.3])
    issues = find_label_issues(labels, probs, backend="self_confidence")
    # flagged (argmax != label): 1 (p=0.1), 2 (p=0.4), 4 (p=0.3); ranked by p ascending
    np.testing.assert_array_equal(issues.indices, [1, 4, 2])
    np.testing.assert_array_equal(issues.given, [0, 1, 1])
    np.testing.assert_array_equal(issues.predicted, [2, 2, 0])
    np.testing.assert_allclose(issues.confidence, [0.1, 0.3, 0.4])
    capped = find_label_issues(labels, probs, backend="self_confidence", max_issues=2)
    np.testing.assert_array_equal(capped.indices, [1, 4])
    assert len(issues.top(1)) == 1 and issues.top(1).predicted.tolist() == [2]


@pytest.mark.parametrize(
    "labels, probs, kwargs, match",
    [
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], {}, r"integers in \[0, 1\]"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], {}, "one label per row"),
        ([0, 1], [[0.5, 0.6], [0.5, 0.5]], {}, "must be probabilities"),
        ([0, 1], [0.5, 0.5], {}, r"shape \(n, n_classes >= 2\)"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"backend": "magic"}, "backend must be"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"max_issues": -1}, "max_issues must be"),
    ],
)
def test_find_errors(labels, probs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_label_issues(labels, np.array(probs), **kwargs)


def small_issues() -> LabelIssues:
    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.3, 0.7], [0.6, 0.4]])
    return find_label_issues([0, 1, 0, 1], probs, backend="self_confidence")


TEXTS = ["fine movie", "这部电影很好看", "dull\nand\tlong " + "x" * 80, "ok"]


def test_table_contents():
    table = issues_table(small_issues(), TEXTS, class_names=["neg", "pos"], width=20)
    lines = table.splitlines()
    assert lines[0].split() == ["rank", "index", "given", "predicted", "p(given)", "text"]
    # ranked by p(given): index 1 (0.05), index 2 (0.3), index 3 (0.4)
    assert lines[1].split() == ["1", "1", "pos", "neg", "0.050", "这部电影很好看"]
    assert lines[2].split()[:5] == ["2", "2", "neg", "pos", "0.300"]
    assert lines[2].endswith("dull and long xxxxx…")  # one line, cut to 20 characters
    assert lines[3].split() == ["3", "3", "pos", "neg", "0.400", "ok"]
    assert len(lines) == 4
    assert len(issues_table(small_issues(), TEXTS, k=1).splitlines()) == 2
    assert issues_table(small_issues(), TEXTS).splitlines()[1].split()[2:4] == ["1", "0"]


def test_clean_dataset_drop_and_relabel_without_mutating_inputs():
    issues = small_issues()
    texts, labels, arr = list(TEXTS), [0, 1, 0, 1], np.array([0, 1, 0, 1])
    t2, l2 = clean_dataset(texts, labels, issues.top(2), action="drop")
    assert t2 == [TEXTS[0], TEXTS[3]] and l2 == [0, 1]
    t3, l3 = clean_dataset(texts, arr, issues, action="relabel")
    assert t3 == TEXTS and t3 is not texts and l3 == [0, 0, 1, 0]
    assert all(type(v) is int for v in l3)
    t4, l4 = clean_dataset(texts, labels, [0, 3])
    assert t4 == TEXTS[1:3] and l4 == [1, 0]
    assert texts == TEXTS and labels == [0, 1, 0, 1] and arr.tolist() == [0, 1, 0, 1]


def test_clean_dataset_errors():
    with pytest.raises(TypeError, match="needs a LabelIssues"):
        clean_dataset(TEXTS, [0, 1, 0, 1], [1], action="relabel")
    with pytest.raises(ValueError, match="action must be"):
        clean_dataset(TEXTS, [0, 1, 0, 1], [1], action="fix")
    with pytest.raises(ValueError, match="differ in length"):
        clean_dataset(TEXTS, [0, 1], [1])
    with pytest.raises(ValueError, match=r"in \[0, 3\]"):
        clean_dataset(TEXTS, [0, 1, 0, 1], [4])


def test_without_cleanlab_auto_falls_back_and_explicit_request_names_the_extra(monkeypatch):
    import sys

    noisy, probs, flipped = planted_noise_oof_probs()
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # makes `import cleanlab` fail
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    issues = find_label_issues(noisy, probs)
    assert issues.backend == "self_confidence"
    assert len(set(issues.indices[:K].tolist()) & flipped) / N_FLIPS >= 0.8
    with pytest.raises(ImportError, match=r"pip install 'danlu\[lab\]'"):
        find_label_issues(noisy, probs, backend="cleanlab")
