"""Dataset-level augment(): originals kept, labels carried, duplicates dropped, workers-invariant."""

from __future__ import annotations

import random

import pytest

from danlu.data.augment import AugmentedSet, augment, example_rng
from danlu.data.eda import EDA
from danlu.data.synonyms import DictSource


class Echo:
    """Returns a duplicate of the input, an upper-cased copy twice, and another original."""

    def augment(self, text: str, rng: random.Random) -> list[str]:
        return [text, text.upper(), "b b", text.upper(), f"{text} {rng.randint(0, 9)}"]


def reference_expand(texts, labels, aug, seed):
    """The rule written plainly: originals in order, each followed by its new, unseen texts."""
    seen, out = set(texts), []
    for i, (t, y) in enumerate(zip(texts, labels)):
        out.append((t, y, i))
        for v in aug.augment(t, random.Random(f"{seed}:{i}")):
            if v not in seen:
                seen.add(v)
                out.append((v, y, i))
    return out


def test_originals_kept_labels_carried_duplicates_dropped():
    texts, labels = ["a a", "b b", "a a"], ["x", "y", "x"]
    res = augment(texts, labels, Echo(), seed=3, progress=False)
    assert isinstance(res, AugmentedSet)
    assert list(zip(*res)) == reference_expand(texts, labels, Echo(), 3)
    assert (
        res.texts.count("A A") == 1 and res.texts.count("b b") == 1 and res.texts.count("a a") == 2
    )
    assert all(res.labels[k] == labels[res.source[k]] for k in range(len(res.texts)))
    assert texts == ["a a", "b b", "a a"]  # input untouched


def test_labels_optional_and_rng_per_example():
    res = augment(["a a"], None, Echo(), progress=False)
    assert res.labels is None and res.source[0] == 0
    assert example_rng(0, 5).random() == example_rng(0, 5).random() != example_rng(0, 6).random()


def test_same_result_with_any_number_of_workers():
    words = [f"w{i}" for i in range(30)]
    src = DictSource({w: [w + "s"] for w in words})
    gen = random.Random(0)
    texts = [" ".join(gen.sample(words, 8)) + "." for _ in range(60)]
    labels = [i % 3 for i in range(60)]
    aug = EDA(n_aug=4, lang="en", source=src)
    one = augment(texts, labels, aug, seed=7, progress=False, chunk_size=7)
    two = augment(texts, labels, aug, seed=7, workers=2, progress=False, chunk_size=7)
    assert one == two
    assert list(zip(*one)) == reference_expand(texts, labels, aug, 7)
    assert one != augment(texts, labels, aug, seed=8, progress=False)
    assert 60 < len(one.texts) <= 60 * 5


def test_progress_bar_when_tqdm_present(capsys):
    pytest.importorskip("tqdm")
    augment(["a b", "c d"], [0, 1], Echo(), progress=True)
    assert "augment" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        (("a text", None, Echo()), {}, TypeError),
        ((["ok", 3], None, Echo()), {}, TypeError),
        ((["a", "b"], [1], Echo()), {}, ValueError),
        ((["a"], None, object()), {}, TypeError),
        ((["a"], None, Echo()), {"workers": 0}, ValueError),
        ((["a"], None, Echo()), {"chunk_size": 0}, ValueError),
    ],
)
def test_bad_input(args, kwargs, error):
    with pytest.raises(error):
        augment(*args, progress=False, **kwargs)
