"""Prediction-time costs on the MiniLM-shaped model (random init, no download), timed as
this thread's CPU time with 1 torch thread (steady on a shared machine).

1. Throughput (examples/s) of ``danlu.predict.predict`` (length-sorted batches of 32, or a
   padded-token budget) against a plain loop over the examples in their given order
   (batches of 32, each padded to its longest example), all fp32 under ``no_grad``. CPU bf16
   autocast is ~20x slower here (RESOURCES.md), so it is not timed.
2. TTA cost per view: ``TTA(TokenDropout(0.1), n_views=k)`` on top of the sorted predict,
   against the plain sorted predict.

Lengths are drawn like short review snippets with a long tail (log-normal, median 32 tokens,
clipped to [8, 128]); token ids are random.
Run: .venv/bin/python benchmarks/bench_predict.py   (about 1 minute on a quiet machine)
"""

from __future__ import annotations

import numpy as np
import torch
from _common import compare, minilm_shaped_classifier, report, set_threads

from danlu.predict import TTA, TokenDropout, pad_collate, predict, sorted_batches

N, BATCH = 96, 32


def examples(n: int = N, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(32), 0.6, n), 8, 128).astype(int)
    return [[101, *rng.integers(1000, 30522, k - 2).tolist(), 102] for k in lengths]


def plain_loop(model, xs: list[list[int]]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(xs), BATCH):
            batch = pad_collate(xs[start : start + BATCH])
            out.append(model(**batch).logits.softmax(-1))
    return torch.cat(out)


def main() -> None:
    set_threads(1)  # CPU-time clock: time descheduled by other jobs does not count
    model = minilm_shaped_classifier().eval()
    xs = examples()
    lengths = [len(x) for x in xs]
    tokens = sum(lengths)
    padded = sum(
        len(xs[s : s + BATCH]) * max(map(len, xs[s : s + BATCH])) for s in range(0, N, BATCH)
    )
    print(f"{N} examples, {tokens} tokens; plain loop pads to {padded} ({padded / tokens:.2f}x)")
    for name, kw in {
        "batch 32": {},
        "max_tokens": {"batch_size": None, "max_tokens": BATCH * 64},
    }.items():
        kw = {"batch_size": BATCH, **kw}
        pad = sum(len(b) * max(len(xs[i]) for i in b) for b in sorted_batches(lengths, **kw))
        print(f"sorted, {name}: pads to {pad} ({pad / tokens:.2f}x)")

    torch.testing.assert_close(predict(model, xs, batch_size=BATCH), plain_loop(model, xs),
                               atol=1e-4, rtol=0)  # fmt: skip
    ids = lambda xs_: [torch.tensor(x) for x in xs_]  # noqa: E731
    logits = lambda batch: predict(model, batch, batch_size=BATCH, activation="none")  # noqa: E731
    view = TokenDropout(0.1, mask_id=103, keep_ids=[0, 101, 102])

    def tta_view(inputs, generator):  # token dropout of each example (a list of id tensors)
        return [view(x, generator).tolist() for x in ids(inputs)]

    med = compare(
        {
            "plain loop, input order, batch 32": lambda: plain_loop(model, xs),
            "danlu predict, sorted, batch 32": lambda: predict(model, xs, batch_size=BATCH),
            "danlu predict, sorted, max_tokens 32*64": lambda: predict(
                model, xs, batch_size=None, max_tokens=BATCH * 64
            ),
            "TTA token dropout, 3 views (+original)": lambda: TTA(tta_view, n_views=3)(logits, xs),
        },
        repeat=3,
        clock="cpu",
    )
    report(f"predict: median CPU seconds (1 thread) per pass over {N} examples", med)
    base = med["plain loop, input order, batch 32"]
    print("\n| variant | examples/s | vs plain loop |\n|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {N / t:.1f} | {base / t:.2f}x |")
    sorted_t = med["danlu predict, sorted, batch 32"]
    t = med["TTA token dropout, 3 views (+original)"]
    print(
        f"TTA 3 views: {t / sorted_t:.2f}x one sorted pass; {(t / sorted_t - 1) / 3:.2f} per view"
    )


if __name__ == "__main__":
    main()
