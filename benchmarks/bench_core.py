"""Orchestrator overhead: a plain hand-written step vs the same step through ``Tricks``,
with and without clipping / monitoring / warmup, on a MiniLM-shaped BERT (8x128, AdamW).

    .venv/bin/python benchmarks/bench_core.py
"""

from __future__ import annotations

import torch
from _common import compare, minilm_shaped_classifier, report, set_threads, text_batch
from _common import hf_loss_fn as loss_fn

from danlu import Tricks
from danlu.optim import GradNormMonitor, Schedule, linear_warmup


def main() -> None:
    set_threads(2)
    model = minilm_shaped_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = text_batch()

    def plain():
        loss_fn(model, batch)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def plain_clip():
        loss_fn(model, batch)[0].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    bare = Tricks()
    full = Tricks(
        [GradNormMonitor(), Schedule(linear_warmup(opt, 10, 10_000))], max_grad_norm=1.0
    )
    variants = {
        "plain step": plain,
        "Tricks([])": lambda: bare.step(model, opt, batch, loss_fn),
        "plain + clip_grad_norm_": plain_clip,
        "Tricks(monitor, clip, warmup)": lambda: full.step(model, opt, batch, loss_fn),
    }
    title = "Orchestrator overhead (MiniLM-shaped BERT, 8x128, AdamW)"
    report(f"{title}, wall, 2 threads", compare(variants, repeat=7))
    set_threads(1)
    report(f"{title}, CPU time, 1 thread", compare(variants, repeat=5, clock="cpu"), label="CPU ms")


if __name__ == "__main__":
    main()
