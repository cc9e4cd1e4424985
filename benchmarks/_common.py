"""Shared benchmark helpers: a MiniLM-shaped encoder and interleaved side-by-side timing.

Machines here are noisy: every benchmark times its variants interleaved in one run
(round-robin, median of repeats) and reports ratios against the first variant.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def set_threads(n: int = 2) -> None:
    torch.set_num_threads(n)


def minilm_shaped_classifier(num_labels: int = 2, attn_implementation: str = "sdpa"):
    """A randomly initialised BERT with all-MiniLM-L6-v2's shape (6 layers, 384 hidden,
    12 heads, 1536 FFN, 30,522 vocab; 22.7M params) and a classification head."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=num_labels,
    )
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg)


def text_batch(n: int = 8, seq: int = 128, vocab: int = 30522, num_labels: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, vocab, (n, seq), generator=g),
        "attention_mask": torch.ones(n, seq, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (n,), generator=g),
    }


def hf_loss_fn(model, batch):
    """Mean cross-entropy of an HF sequence classifier; returns (loss, logits)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits, batch["labels"]), logits


def compare(
    variants: dict[str, Callable[[], object]],
    repeat: int = 5,
    warmup: int = 1,
    clock: str = "wall",
) -> dict[str, float]:
    """Median seconds per call of each variant, timed round-robin in one run (the order is
    shuffled every round, so no variant is always timed right after the same one).

    ``clock="wall"`` uses ``time.perf_counter``; ``clock="cpu"`` uses this thread's CPU time
    (``time.thread_time``; run with 1 torch thread): time spent descheduled by other
    processes does not count, the steadiest figure on a shared, loaded machine.
    """
    timer = {"wall": time.perf_counter, "cpu": time.thread_time}[clock]
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    order = random.Random(0)  # a fresh order every round: no variant always follows another
    for _ in range(repeat):
        for n in order.sample(names, len(names)):
            t0 = timer()
            variants[n]()
            times[n].append(timer() - t0)
    return {n: statistics.median(ts) for n, ts in times.items()}


def report(
    title: str, medians: dict[str, float], baseline: str | None = None, label: str = "median ms"
) -> str:
    """A markdown table of times (seconds in, shown in ms under ``label``) and ratios against
    ``baseline`` (default: the first variant)."""
    baseline = baseline or next(iter(medians))
    base = medians[baseline]
    lines = [f"### {title}", "", f"| variant | {label} | ratio |", "|---|---:|---:|"]
    for n, t in medians.items():
        lines.append(f"| {n} | {t * 1e3:.2f} | {t / base:.3f} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text
