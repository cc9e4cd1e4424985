"""danlu.predict.inference: length-sorted batches, original order restored, bf16 vs fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyTextClassifier

from danlu.predict import pad_collate, predict, sorted_batches


def _examples(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50, size=int(rng.integers(1, 20))).tolist() for _ in range(n)]


def _one_by_one(model, examples):
    """Reference: every example alone, unpadded, in input order."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.tensor([ex])).softmax(-1) for ex in examples])


def test_sorted_batches_cover_every_index_once_longest_first():
    lengths = [3, 9, 5, 8, 1, 9, 2]
    batches = sorted_batches(lengths, batch_size=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert flat[:2].tolist() == [1, 5]  # equal lengths keep input order (stable)


def test_sorted_batches_respect_the_token_budget():
    lengths = np.random.default_rng(0).integers(1, 40, 200)
    for b in sorted_batches(lengths, batch_size=None, max_tokens=100):
        assert len(b) * lengths[b].max() <= 100 or len(b) == 1
    # one example longer than the budget still gets a batch of its own
    assert [b.tolist() for b in sorted_batches([50, 2], batch_size=None, max_tokens=10)] == [
        [0],
        [1],
    ]


@pytest.mark.parametrize("kw", [{"batch_size": 4}, {"batch_size": None, "max_tokens": 40}])
def test_predict_returns_the_original_order(kw):
    torch.manual_seed(0)
    model = TinyTextClassifier().train()
    examples = _examples()
    probs = predict(model, examples, **kw)
    assert model.training  # the mode is restored
    torch.testing.assert_close(probs, _one_by_one(model, examples), atol=1e-6, rtol=0)


def test_predict_accepts_tokenizer_mappings_and_sigmoid():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    examples = _examples(7)
    rows = [{"input_ids": ex} for ex in examples]
    fwd = lambda m, b: m(b["input_ids"], b["attention_mask"])  # noqa: E731
    got = predict(model, rows, batch_size=3, activation="sigmoid", forward=fwd)
    torch.testing.assert_close(got.logit(), predict(model, examples, activation="none"))


def test_bf16_is_within_tolerance_of_fp32():
    torch.manual_seed(0)
    model = TinyTextClassifier(dim=32)
    examples = _examples(16)
    fp32 = predict(model, examples, batch_size=8)
    bf16 = predict(model, examples, batch_size=8, amp="bf16")
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=2e-2, rtol=0)
    assert not torch.equal(bf16, fp32)  # autocast did run in bf16


def test_pad_collate_pads_every_key():
    got = pad_collate([{"input_ids": [5, 6], "token_type_ids": [0, 1]}, {"input_ids": [7],
                       "token_type_ids": [1]}], pad_id=9)  # fmt: skip
    assert got["input_ids"].tolist() == [[5, 6], [7, 9]]
    assert got["token_type_ids"].tolist() == [[0, 1], [1, 0]]
    assert got["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_errors_name_the_argument():
    model = TinyTextClassifier()
    with pytest.raises(ValueError, match="batch_size"):
        sorted_batches([1, 2], batch_size=0)
    with pytest.raises(ValueError, match="neither"):
        sorted_batches([1, 2], batch_size=None)
    with pytest.raises(ValueError, match="amp"):
        predict(model, [[1]], amp="fp8")
    with pytest.raises(ValueError, match="activation"):
        predict(model, [[1]], activation="relu")
    with pytest.raises(ValueError, match="empty"):
        predict(model, [])
    with pytest.raises(ValueError, match="lengths"):
        predict(model, [[1]], lengths=[1, 2])
