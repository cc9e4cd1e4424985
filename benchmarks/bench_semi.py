"""Cost of a training step with the semi-supervised and noise tricks on a MiniLM-shaped BERT
(labelled and unlabelled batches 8 x 48, AdamW, one thread, CPU time), as ratios to a plain
step, all through ``danlu.Tricks`` and timed side by side in one run.

Floors (what each trick must add at least, written by hand and timed too):
- UDA / FixMatch: a no-grad forward of the clean/weak view + a forward/backward of the
  augmented/strong view;
- VAT (1 power iteration): a no-grad clean forward + a forward/backward to the embedding
  output only + a forward/backward of the term;
- noise: one random draw of the embedding output (≈ 1.0x); ``Delayed`` before its start: 0.

Run: ``.venv/bin/python benchmarks/bench_semi.py`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import torch
from _common import compare, hf_loss_fn, minilm_shaped_classifier, report, set_threads, text_batch

import danlu
from danlu.adversarial import VAT, GaussianNoise, NEFTune, vat_direction
from danlu.semi import UDA, FixMatch, uda_loss

SEQ = 48


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def main() -> None:
    set_threads(1)  # with clock="cpu": steady figures on a shared, loaded machine
    model = minilm_shaped_classifier()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    batch = text_batch(seq=SEQ)
    u = {k: v for k, v in text_batch(seq=SEQ, seed=1).items() if k != "labels"}
    u_aug = {**u, "input_ids": u["input_ids"].roll(1, dims=1)}
    pairs = [(u, u_aug)]
    emb = model.get_input_embeddings()

    def uda():
        return UDA(pairs, logits_fn=_logits)

    tricks = {
        "plain step": danlu.Tricks([]),
        "UDA": danlu.Tricks([uda()]),
        "FixMatch": danlu.Tricks([FixMatch(pairs, logits_fn=_logits)]),
        "VAT on unlabelled (1 power iteration)": danlu.Tricks(
            [VAT(model, [u], eps=1.0, logits_fn=_logits)]
        ),
        "Gaussian noise": danlu.Tricks([GaussianNoise(model, std=0.005)]),
        "NEFTune (alpha 5)": danlu.Tricks([NEFTune(model, alpha=5.0)]),
        "Delayed(UDA), before its start": danlu.Tricks(
            [danlu.Delayed(uda(), start_step=10**9)]
        ),
    }

    def step_of(t):
        return lambda: t.step(model, opt, batch, hf_loss_fn)

    def uda_floor():  # the plain step + a no-grad forward + a forward/backward, by hand
        loss = hf_loss_fn(model, batch)[0]
        with torch.no_grad():
            clean = _logits(model, u)
        (loss + uda_loss(clean, _logits(model, u_aug))).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def vat_floor():  # + clean forward, one input-only forward/backward, the term
        loss = hf_loss_fn(model, batch)[0]
        with torch.no_grad():
            clean = _logits(model, u)
        e = emb(u["input_ids"]).detach()

        def logits_of(delta):
            out = model(inputs_embeds=e + delta, attention_mask=u["attention_mask"])
            return out.logits

        d = vat_direction(logits_of, clean, torch.randn_like(e))
        emb_out = emb(u["input_ids"])
        adv = model(inputs_embeds=emb_out + d, attention_mask=u["attention_mask"]).logits
        (loss + uda_loss(clean, adv, 1.0, None)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = {name: step_of(t) for name, t in tricks.items()}
    variants["floor: UDA/FixMatch by hand"] = uda_floor
    variants["floor: VAT by hand"] = vat_floor
    medians = compare(variants, repeat=3, clock="cpu")
    report(f"Semi-supervised and noise tricks, MiniLM-shaped BERT, 8 x {SEQ}, 1 thread (CPU time)",
           medians)  # fmt: skip


if __name__ == "__main__":
    main()
