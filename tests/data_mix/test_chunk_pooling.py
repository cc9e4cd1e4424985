"""danlu.data.pooling: against per-document loops, single chunk = identity, padding
invariance, flat -> padded."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from danlu.data.pooling import (
    AttentionPooling,
    ChunkPooling,
    LSTMPooling,
    padded_chunks,
    pool_chunks,
)

DOC_INDEX = torch.tensor([2, 0, 0, 1, 2, 0, 2, 2])  # 3 documents, interleaved, 3/1/4 chunks


def _flat(h=5, seed=0):
    return torch.randn(len(DOC_INDEX), h, generator=torch.Generator().manual_seed(seed))


def _per_doc(x):
    return [x[DOC_INDEX.eq(d)] for d in range(3)]


def test_padded_chunks_keeps_order_and_masks_padding():
    x = _flat()
    padded, mask = padded_chunks(x, DOC_INDEX)
    assert padded.shape == (3, 4, 5) and mask.sum(1).tolist() == [3, 1, 4]
    for d, chunks in enumerate(_per_doc(x)):
        assert torch.equal(padded[d, : len(chunks)], chunks)
        assert not padded[d, len(chunks) :].any() and not mask[d, len(chunks) :].any()
    padded, mask = padded_chunks(x, DOC_INDEX, num_docs=5)  # trailing empty documents
    assert padded.shape == (5, 4, 5) and not mask[3:].any()


@pytest.mark.parametrize(
    "mode, ref",
    [
        ("mean", lambda c: c.mean(0)),
        ("max", lambda c: c.max(0).values),
        ("sqrt_mean", lambda c: c.sum(0) / math.sqrt(len(c))),
    ],
)
def test_pooling_matches_a_per_document_loop(mode, ref):
    x = _flat()
    expected = torch.stack([ref(c) for c in _per_doc(x)])
    torch.testing.assert_close(pool_chunks(x, mode=mode, doc_index=DOC_INDEX), expected)
    padded, mask = padded_chunks(x, DOC_INDEX)
    torch.testing.assert_close(ChunkPooling(mode)(padded, mask), expected)


def test_attention_pooling_matches_a_per_document_softmax():
    torch.manual_seed(0)
    pool = AttentionPooling(5, hidden=7)
    x = _flat()
    out = pool(x, doc_index=DOC_INDEX)
    for d, chunks in enumerate(_per_doc(x)):
        w = torch.softmax(pool.score(chunks).squeeze(-1), 0)
        torch.testing.assert_close(out[d], (w[:, None] * chunks).sum(0))
        torch.testing.assert_close(pool.weights[d, : len(chunks)], w)


def test_lstm_pooling_matches_running_each_document_alone():
    torch.manual_seed(0)
    pool = LSTMPooling(5, 6, bidirectional=True)
    x = _flat()
    out = pool(x, doc_index=DOC_INDEX)
    assert out.shape == (3, 12)
    for d, chunks in enumerate(_per_doc(x)):
        _, (h, _) = pool.lstm(chunks[None])
        torch.testing.assert_close(out[d], torch.cat([h[0, 0], h[1, 0]]), atol=1e-6, rtol=0)


def _modules():
    torch.manual_seed(0)
    return [
        ChunkPooling("mean"),
        ChunkPooling("max"),
        ChunkPooling("sqrt_mean"),
        AttentionPooling(5),
        AttentionPooling(5, hidden=3),
    ]


@pytest.mark.parametrize("pool", _modules(), ids=repr)
def test_a_single_chunk_is_the_identity(pool):
    x = torch.randn(4, 1, 5)
    assert torch.equal(pool(x), x[:, 0])
    assert torch.equal(pool(x[:, 0], doc_index=torch.arange(4)), x[:, 0])


@pytest.mark.parametrize("pool", [*_modules(), LSTMPooling(5, 4)], ids=repr)
def test_padding_chunks_do_not_change_the_result(pool):
    torch.manual_seed(1)
    padded, mask = padded_chunks(_flat(), DOC_INDEX)
    ref = pool(padded, mask)
    garbage = torch.full((3, 3, 5), 1e4)
    garbage[0, 0, 0] = float("nan")
    bigger = torch.cat([padded, garbage], 1)
    bigger_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(pool(bigger, bigger_mask), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(pool(_flat(), doc_index=DOC_INDEX), ref, atol=1e-6, rtol=0)


def test_logit_level_pooling_and_gradients_flow():
    logits = torch.randn(8, 3, requires_grad=True)
    doc_logits = ChunkPooling("mean")(logits, doc_index=DOC_INDEX)
    nn.functional.cross_entropy(doc_logits, torch.tensor([0, 1, 2])).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_bad_input():
    x = _flat()
    with pytest.raises(ValueError, match="one entry per chunk"):
        padded_chunks(x, DOC_INDEX[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        padded_chunks(x, DOC_INDEX - 1)
    with pytest.raises(ValueError, match="num_docs is 2"):
        padded_chunks(x, DOC_INDEX, num_docs=2)
    with pytest.raises(ValueError, match="no chunks"):
        pool_chunks(torch.randn(2, 3, 4), torch.tensor([[True, False, False], [False] * 3]))
    with pytest.raises(ValueError, match=r"mask must have shape \(D, C\) = \(2, 3\)"):
        pool_chunks(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not both"):
        pool_chunks(x, torch.ones(3, 4, dtype=torch.bool), doc_index=DOC_INDEX)
    with pytest.raises(ValueError, match="mode"):
        ChunkPooling("median")
    with pytest.raises(ValueError, match="real chunks first"):
        LSTMPooling(4)(torch.randn(1, 2, 4), torch.tensor([[False, True]]))
    with pytest.raises(ValueError, match=r"\(D, C, H\)"):
        AttentionPooling(4)(torch.randn(2, 3))
