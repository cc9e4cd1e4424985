"""Mixup-family overhead vs a plain training step on the MiniLM-shaped encoder (8 x 128
tokens, AdamW), timed round-robin in one run (wall clock and process CPU time of the same
calls). Target: embedding mixup <= 1.03x.

Run: .venv/bin/python benchmarks/bench_mixup.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import compare, minilm_shaped_classifier, report, set_threads, text_batch
from _common import hf_loss_fn as loss_fn  # noqa: E402

from danlu import Tricks  # noqa: E402
from danlu.data.cutmix import TokenCutMix  # noqa: E402
from danlu.data.mixup import EmbeddingMixup, ManifoldMixup, SentenceMixup  # noqa: E402


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
    cpu: dict[str, list[float]] = {name: [] for name in variants}

    def cpu_timed(name, fn):
        def run():
            t0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - t0)

        return run

    warmup = 1
    medians = compare({n: cpu_timed(n, f) for n, f in variants.items()}, repeat=5, warmup=warmup)
    report("Mixup family, MiniLM-shaped encoder, 8 x 128, AdamW, 2 threads (wall clock)", medians)
    # CPU time of this process, from the same calls: far less sensitive than wall clock to
    # other jobs sharing the 2 cores
    report(
        "Same calls, process CPU time",
        {n: statistics.median(ts[warmup:]) for n, ts in cpu.items()},
    )

    # The extra work of embedding mixup in isolation (low-noise cross-check of the ratio):
    # lambda + permutation draw, the mix of the (8, 128, 384) embedding output and its
    # backward, the union mask and the second cross-entropy.
    mixer = EmbeddingMixup(alpha=0.4)
    emb = torch.randn(8, 128, 384, requires_grad=True)
    logits = torch.randn(8, 2, requires_grad=True)

    def extra_work():
        mixer.on_batch(batch, None)
        lam, index = mixer.lam, mixer.index
        mixed = lam * emb + (1 - lam) * emb[index]
        loss = F.cross_entropy(logits, batch["labels"][index]) + mixed.sum()
        loss.backward()

    extra = compare({"embedding mixup extra work": extra_work}, repeat=50, warmup=5)
    first = next(iter(medians))
    report(
        "Embedding mixup's extra work alone, relative to the plain step above",
        {first: medians[first], **extra},
    )


if __name__ == "__main__":
    main()
