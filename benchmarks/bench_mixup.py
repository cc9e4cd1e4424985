"""Mixup-family overhead vs a plain training step on the MiniLM-shaped encoder (8 x 128
tokens, AdamW), timed round-robin in one run. Target: embedding mixup <= 1.03x.

Run: .venv/bin/python benchmarks/bench_mixup.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import compare, minilm_shaped_classifier, report, set_threads, text_batch  # noqa: E402

from danlu import Tricks  # noqa: E402
from danlu.data.cutmix import TokenCutMix  # noqa: E402
from danlu.data.mixup import EmbeddingMixup, ManifoldMixup, SentenceMixup  # noqa: E402


def loss_fn(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits, batch["labels"]), logits


def main() -> None:
    set_threads(2)
    model = minilm_shaped_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = text_batch(8, 128)

    def plain():
        loss, _ = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def via(tricks):
        return lambda: tricks.step(model, opt, batch, loss_fn)

    variants = {
        "plain step (hand-written loop)": plain,
        "Tricks([]) (orchestrator only)": via(Tricks([])),
        "EmbeddingMixup(0.4)": via(Tricks([EmbeddingMixup(alpha=0.4)])),
        "ManifoldMixup(bert.encoder.layer)": via(
            Tricks([ManifoldMixup("bert.encoder.layer", alpha=0.4)])
        ),
        "SentenceMixup(bert.pooler)": via(Tricks([SentenceMixup("bert.pooler", alpha=0.4)])),
        "TokenCutMix(0.4)": via(Tricks([TokenCutMix(alpha=0.4, special_ids=[101, 102])])),
    }
    medians = compare(variants, repeat=7, warmup=1)
    report("Mixup family, MiniLM-shaped encoder, 8 x 128, AdamW, 2 threads", medians)


if __name__ == "__main__":
    main()
