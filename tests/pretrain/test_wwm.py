"""Chinese whole-word masking through transformers' collator: every character of a jieba
word is masked with the others or not at all (word boundaries taken from jieba.lcut here,
independently of the library), and the share of masked words and tokens over a corpus
matches mlm_probability."""

from __future__ import annotations

import types

import pytest
import torch
from _zh import SENTENCES, char_tokenizer

from danlu.pretrain import mlm_collator, mlm_features, segment_words

pytest.importorskip("transformers")
jieba = pytest.importorskip("jieba")


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Token positions of each jieba word in the char-tokenised text ([CLS] at 0)."""
    spans, pos = [], 1
    for w in jieba.lcut(text):
        spans.append((pos, pos + len(w)))
        pos += len(w)
    return spans


def test_segment_words_joins_jieba_words_with_spaces():
    assert segment_words(["我喜欢自然语言处理"], cut=jieba.lcut) == ["我 喜欢 自然语言 处理"]
    assert segment_words(["a b"], cut=lambda t: ["a", " ", "b"]) == ["a b"]


def test_every_word_masked_all_or_nothing(tmp_path):
    tok = char_tokenizer(tmp_path)
    text = "我喜欢自然语言处理"
    spans = _word_spans(text)
    word = spans[[text[a - 1 : b - 1] for a, b in spans].index("自然语言")]
    features = mlm_features(tok, [text] * 400, whole_word=True)
    # the space-joined text tokenises to the same tokens as the raw text
    assert features[0]["input_ids"] == tok(text)["input_ids"]
    batch = mlm_collator(tok, 0.3, whole_word=True, seed=0)(features)
    masked = batch["labels"] != -100
    for a, b in spans:
        block = masked[:, a:b]
        assert torch.all(block.all(dim=1) | ~block.any(dim=1)), (a, b)
    chosen = masked[:, word[0] : word[1]].all(dim=1)
    assert 0.2 < chosen.float().mean() < 0.4  # the word itself is masked about 30% of the time
    assert not masked[:, 0].any() and not masked[:, -1].any()  # [CLS], [SEP] never


def test_masking_rate_over_a_corpus(tmp_path):
    tok = char_tokenizer(tmp_path)
    corpus = SENTENCES * 40
    batch = mlm_collator(tok, 0.15, whole_word=True, seed=1)(
        mlm_features(tok, corpus, whole_word=True)
    )
    masked = batch["labels"] != -100
    words = [(i, a, b) for i, t in enumerate(corpus) for a, b in _word_spans(t)]
    word_rate = sum(bool(masked[i, a].item()) for i, a, _ in words) / len(words)
    n_tokens = sum(len(t) for t in corpus)
    token_rate = masked.sum().item() / n_tokens
    # ~1,900 words: the binomial standard deviation is ~0.008
    assert abs(word_rate - 0.15) < 0.03
    assert abs(token_rate - 0.15) < 0.04
    # whole words are always replaced by [MASK] (transformers has no random replacement there)
    assert torch.all(batch["input_ids"][masked] == tok.mask_token_id)


def test_errors(tmp_path):
    slow = types.SimpleNamespace(is_fast=False)  # a Python (slow) tokenizer has no offsets
    with pytest.raises(TypeError, match="fast tokenizer"):
        mlm_collator(slow, whole_word=True)
    tok = char_tokenizer(tmp_path)
    for p in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="mlm_probability must be in"):
            mlm_collator(tok, p)
    with pytest.raises(TypeError, match="one str"):
        segment_words("我喜欢")
    with pytest.raises(ValueError, match="non-empty sequence"):
        mlm_features(tok, [])
