"""nlpaug behind the augmenter interface: reproducible per rng, global random state untouched."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from danlu.data.augment import augment
from danlu.data.nlpaug_adapter import NlpaugAugmenter


class GlobalRandomAug:
    """Behaves like nlpaug: draws from the global random and numpy.random states."""

    def augment(self, text, n=1):
        return [f"{text} {random.random():.6f} {np.random.rand():.6f}" for _ in range(n)]


def test_adapter_seeds_from_rng_and_restores_global_state():
    aug = NlpaugAugmenter(GlobalRandomAug(), n_aug=2)
    random.seed(123)
    np.random.seed(123)
    py, npy = random.getstate(), np.random.get_state()
    a = aug.augment("text", random.Random(5))
    assert random.getstate() == py and all(
        np.array_equal(x, y) for x, y in zip(np.random.get_state(), npy)
    )
    assert a == aug.augment("text", random.Random(5)) != aug.augment("text", random.Random(6))
    assert len(a) == 2 and aug.augment("  ", random.Random(0)) == []
    assert NlpaugAugmenter(GlobalRandomAug(), seed=1)("x")[0] == "x"


def test_adapter_errors():
    with pytest.raises(TypeError, match="nlpaug augmenter"):
        NlpaugAugmenter(object())
    with pytest.raises(ValueError, match="n_aug"):
        NlpaugAugmenter(GlobalRandomAug(), n_aug=0)
    with pytest.raises(TypeError, match="str"):
        NlpaugAugmenter(GlobalRandomAug()).augment(None, random.Random(0))
    with pytest.raises(ValueError, match="kind"):
        NlpaugAugmenter.create("token", "RandomWordAug")


def test_random_word_swap_with_real_nlpaug():
    pytest.importorskip("nlpaug.augmenter.word")
    swap = NlpaugAugmenter.create("word", "RandomWordAug", action="swap", n_aug=3)
    text = "the quiet film slowly builds into a real triumph"
    outs = swap.augment(text, random.Random(0))
    assert outs and all(Counter(o.split()) == Counter(text.split()) for o in outs)
    assert outs == swap.augment(text, random.Random(0))
    res = augment([text, "another short line here"], [1, 0], swap, seed=0, progress=False)
    assert res.texts[0] == text and set(res.labels) == {0, 1}
    with pytest.raises(ValueError, match="no augmenter"):
        NlpaugAugmenter.create("word", "NoSuchAug")
