"""PEFT / hook-mode costs on a MiniLM-shaped BERT (batch 8 x 128, AdamW):

1. FGM in hook mode (perturb the embedding output) vs weight mode (perturb the embedding
   rows), full fine-tuning, as ratios to a plain step;
2. a LoRA (r=8 on query/value, peft) step: plain vs FGM in hook mode (weight mode cannot
   attack the frozen embedding);
3. one EMA update over the adapters only (the default) vs the whole model.

Steps are timed as this thread's CPU time with 1 torch thread (``compare(clock="cpu")``):
on the shared machine wall time swung by 2x between runs.

Run: ``.venv/bin/python benchmarks/bench_peft.py`` (about a minute and a half).
"""

from __future__ import annotations

import torch
from _common import compare, hf_loss_fn, minilm_shaped_classifier, report, set_threads, text_batch

from danlu.adversarial import FGM
from danlu.optim import EMA


def main() -> None:
    import peft

    set_threads(1)
    batch = text_batch()
    model = minilm_shaped_classifier()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    weight_fgm = FGM(model, eps=1.0)
    lora = peft.get_peft_model(
        minilm_shaped_classifier(),
        peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS"),
    )
    lora.train()
    lora_opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def fwd_bwd(m):
        hf_loss_fn(m, batch)[0].backward()

    def finish(o):
        o.step()
        o.zero_grad(set_to_none=True)

    def plain():
        fwd_bwd(model)
        finish(opt)

    def fgm_weight():
        fwd_bwd(model)
        with weight_fgm.perturbed():
            fwd_bwd(model)
        finish(opt)

    def fgm_hook():
        fgm = FGM(model, eps=1.0, mode="hook")  # installing the hook is part of the cost
        try:
            fwd_bwd(model)
            with fgm.perturbed():
                fwd_bwd(model)
            finish(opt)
        finally:
            fgm.remove()

    def lora_plain():
        fwd_bwd(lora)
        finish(lora_opt)

    def lora_fgm_hook():
        fgm = FGM(lora, eps=1.0, mode="hook")
        try:
            fwd_bwd(lora)
            with fgm.perturbed():
                fwd_bwd(lora)
            finish(lora_opt)
        finally:
            fgm.remove()

    full = compare({"plain step": plain, "FGM weight mode": fgm_weight,
                    "FGM hook mode": fgm_hook}, repeat=4, warmup=1, clock="cpu")  # fmt: skip
    report("Full fine-tuning step, MiniLM-shaped BERT, 8 x 128, AdamW", full, label="CPU ms")
    peft_steps = compare({"LoRA plain step": lora_plain, "LoRA + FGM hook mode": lora_fgm_hook},
                         repeat=4, warmup=1, clock="cpu")  # fmt: skip
    report("LoRA (r=8, query/value) step, MiniLM-shaped BERT, 8 x 128", peft_steps, label="CPU ms")

    adapters, whole = EMA(lora, decay=0.999), EMA(lora, decay=0.999, trainable_only=False)
    n_adapt = sum(s.numel() for s in adapters.shadow.values())
    n_all = sum(s.numel() for s in whole.shadow.values())
    ema = compare({f"EMA whole model ({n_all / 1e6:.1f}M params)": whole.update,
                   f"EMA adapters only ({n_adapt / 1e3:.0f}k params, default)": adapters.update},
                  repeat=30, warmup=3, clock="cpu")  # fmt: skip
    report("One EMA update of the LoRA model", ema, label="CPU ms")


if __name__ == "__main__":
    main()
