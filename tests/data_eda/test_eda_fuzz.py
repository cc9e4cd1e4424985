"""Arbitrary Unicode never crashes EDA (property-based, hypothesis)."""

from __future__ import annotations

import re

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from danlu.data.eda import EDA  # noqa: E402


def any_synonym(word: str) -> list[str]:  # every word has a synonym: SR and RI always act
    return [word[::-1] + "x"]


AUGMENTERS = {
    lang: EDA(n_aug=4, lang=lang, source=any_synonym, seed=0) for lang in (None, "en", "zh")
}

mixed = st.text(
    alphabet=st.one_of(
        st.characters(),  # any code point except surrogates
        st.sampled_from("我爱北京天安门，。！？ 😀👨‍👩‍👧🇨🇳 é ß Ω ﷽ \u200b\u0301\r\n\t"),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(text=mixed, lang=st.sampled_from([None, "en", "zh"]))
def test_any_text_gives_strings_and_keeps_words(text, lang):
    pytest.importorskip("jieba")
    out = AUGMENTERS[lang](text)
    assert out[0] == text and all(isinstance(o, str) for o in out)
    if re.search(r"\w", text):
        assert len(out) == 5
        assert all(re.search(r"\w", o) for o in out)  # deletion never empties a sentence
    else:
        assert out == [text]


def test_lone_surrogates_and_very_long_text():
    pytest.importorskip("jieba")
    for lang in ("en", "zh"):
        assert len(AUGMENTERS[lang]("好\ud800坏 bad\udfff text")) == 5
    long_text = ("这部电影非常好看，" * 2000) + ("great film! " * 2000)
    out = AUGMENTERS[None](long_text)
    assert len(out) == 5 and all(len(o) > len(long_text) // 2 for o in out)
