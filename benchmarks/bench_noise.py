"""Cost of a training step with embedding noise (Gaussian, NEFTune), VAT and a not-yet-started
``Delayed`` trick on a MiniLM-shaped BERT (batch 8 x 64, AdamW, one thread, CPU time), as
ratios to a plain step, all through ``danlu.Tricks`` and timed side by side in one run.

Floors: the noise tricks add one random draw of the embedding output per forward (about
1.0x); VAT with one power iteration adds a no-grad clean forward, a forward + backward to the
embedding output only, and a forward + backward (the term) to the plain step (timed as a
hand-written floor); a ``Delayed`` trick before its start must cost nothing.

Run: ``.venv/bin/python benchmarks/bench_noise.py`` (about 2 minutes).
"""

from __future__ import annotations

import torch
from _common import compare, hf_loss_fn, minilm_shaped_classifier, report, set_threads, text_batch

import danlu
from danlu._embeddings import output_hook
from danlu.adversarial import VAT, GaussianNoise, NEFTune


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def main() -> None:
    set_threads(1)  # with clock="cpu": steady figures on a shared, loaded machine
    model = minilm_shaped_classifier()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    batch = text_batch(seq=64)
    emb = model.get_input_embeddings()

    def vat():
        return VAT(model, eps=1.0, logits_fn=_logits)

    tricks = {
        "plain step": danlu.Tricks([]),
        "Gaussian noise (std 0.01)": danlu.Tricks([GaussianNoise(model, std=0.01)]),
        "NEFTune (alpha 5)": danlu.Tricks([NEFTune(model, alpha=5.0)]),
        "VAT (1 power iteration)": danlu.Tricks([vat()]),
        "Delayed(VAT), before its start": danlu.Tricks([danlu.Delayed(vat(), start_step=10**9)]),
    }

    def floor():  # VAT's floor: the plain step plus the passes VAT adds, written by hand
        hf_loss_fn(model, batch)[0].backward()
        with torch.no_grad():  # the clean prediction
            _logits(model, batch)
        seen = []  # one power iteration: a forward and a backward to the embedding output
        with output_hook(emb, lambda out, args: seen.append(out)):
            out = _logits(model, batch).sum()
        torch.autograd.grad(out, seen[0])
        hf_loss_fn(model, batch)[0].backward()  # the term's forward + backward
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = {
        name: (lambda t=t: t.step(model, opt, batch, hf_loss_fn)) for name, t in tricks.items()
    }
    variants["VAT's floor: plain + its passes by hand"] = floor
    medians = compare(variants, repeat=4, warmup=1, clock="cpu")
    report("One training step, MiniLM-shaped BERT, 8 x 64 tokens, AdamW, 1 thread (CPU time)",
           medians, label="median CPU ms")


if __name__ == "__main__":
    main()
