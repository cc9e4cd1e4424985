"""The cycling unlabelled stream (passes, empty input, resume), the Unlabelled trick and
the text_views collate."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch

import danlu
from danlu.data.eda import EDA
from danlu.semi import Unlabelled, UnlabelledStream, text_views


def test_stream_cycles_and_resumes():
    s = UnlabelledStream(["a", "b", "c"])
    assert [s.next() for _ in range(7)] == list("abcabca") and s.passes == 2
    t = UnlabelledStream(["a", "b", "c"])
    t.load_state_dict(s.state_dict())
    assert [t.next() for _ in range(3)] == [s.next() for _ in range(3)] == list("bca")


def test_empty_unlabelled_is_a_clear_error():
    with pytest.raises(ValueError, match="unlabelled iterable is empty"):
        UnlabelledStream([])
    s = UnlabelledStream(iter([]))  # no len: found at the first draw
    with pytest.raises(ValueError, match="yielded no batch"):
        s.next()
    with pytest.raises(TypeError, match="iterable of batches"):
        UnlabelledStream(3)


def test_unlabelled_trick_hands_the_batch_without_mutating():
    model = TinyTextClassifier()
    unl = [{"input_ids": torch.full((2, 6), i + 1)} for i in range(2)]
    seen = []

    def my_loss(m, batch):
        seen.append(int(batch["unlabelled"]["input_ids"][0, 0]))
        return loss_fn(m, batch)

    tricks = danlu.Tricks([Unlabelled(unl)])
    b = make_batch()
    keys = set(b)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        st = tricks.step(model, opt, b, my_loss)
    assert seen == [1, 2, 1] and set(b) == keys and st.extra["unlabelled"] is unl[0]
    # a non-dict batch becomes (batch, unlabelled)
    trick = Unlabelled(unl)
    assert trick.on_batch("x", danlu.State()) == ("x", unl[0])


def test_text_views_pairs_clean_and_eda():
    collate = text_views(lambda texts: list(texts), seed=3)
    clean, aug = collate(["the film is fine and moving", "!!"])
    assert clean == ["the film is fine and moving", "!!"]
    swap_delete = EDA(alpha_sr=0.0, alpha_ri=0.0, alpha_rs=0.1, p_rd=0.1, n_aug=1)
    assert aug[0] == swap_delete.augment(clean[0], random.Random(3))[0]
    assert aug[1] == "!!"  # no words: its own view
    with pytest.raises(TypeError, match="augment"):
        text_views(list, augmenter=len)

