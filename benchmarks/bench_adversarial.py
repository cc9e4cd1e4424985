"""Adversarial training cost on a MiniLM-shaped BERT (batch 8 x 128, AdamW), as ratios to a
plain training step, plus the attack + restore bookkeeping of FGM alone.

Run: ``.venv/bin/python benchmarks/bench_adversarial.py`` (about 3-4 minutes on 2 cores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import compare, minilm_shaped_classifier, report, set_threads, text_batch

from danlu.adversarial import AWP, FGM, PGD, AttentionNoise, FreeLB


class TextbookFGM:
    """The widely copied FGM: full-table clone, add and restore."""

    def __init__(self, model, eps=1.0, emb_name="word_embeddings"):
        self.model, self.eps, self.emb_name, self.backup = model, eps, emb_name, {}

    def attack(self):
        for name, param in self.model.named_parameters():
            if param.requires_grad and self.emb_name in name:
                self.backup[name] = param.data.clone()
                norm = torch.norm(param.grad)
                if norm != 0 and not torch.isnan(norm):
                    param.data.add_(self.eps * param.grad / norm)

    def restore(self):
        for name, param in self.model.named_parameters():
            if name in self.backup:
                param.data = self.backup[name]
        self.backup = {}


class TextbookPGD:
    """The widely copied PGD: full-table backup/projection, all gradients cloned."""

    def __init__(self, model, eps=1.0, alpha=0.3, emb_name="word_embeddings"):
        self.model, self.eps, self.alpha, self.emb_name = model, eps, alpha, emb_name
        self.emb_backup, self.grad_backup = {}, {}

    def attack(self, is_first_attack=False):
        for name, param in self.model.named_parameters():
            if param.requires_grad and self.emb_name in name:
                if is_first_attack:
                    self.emb_backup[name] = param.data.clone()
                norm = torch.norm(param.grad)
                if norm != 0 and not torch.isnan(norm):
                    param.data.add_(self.alpha * param.grad / norm)
                    r = param.data - self.emb_backup[name]
                    if torch.norm(r) > self.eps:
                        r = self.eps * r / torch.norm(r)
                    param.data = self.emb_backup[name] + r

    def restore(self):
        for name, param in self.model.named_parameters():
            if name in self.emb_backup:
                param.data = self.emb_backup[name]
        self.emb_backup = {}

    def backup_grad(self):
        for name, param in self.model.named_parameters():
            if param.requires_grad and param.grad is not None:
                self.grad_backup[name] = param.grad.clone()

    def restore_grad(self):
        for name, param in self.model.named_parameters():
            if name in self.grad_backup:
                param.grad = self.grad_backup[name]


def main() -> None:
    set_threads(2)
    model = minilm_shaped_classifier()
    eager = minilm_shaped_classifier(attn_implementation="eager")
    model.train()
    eager.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    eager_opt = torch.optim.AdamW(eager.parameters(), lr=2e-5)
    batch = text_batch()

    def loss_of(m):
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.cross_entropy(out.logits, batch["labels"])

    def fwd_bwd(m=model):
        loss_of(m).backward()

    def finish(o=opt):
        o.step()
        o.zero_grad(set_to_none=True)

    tb_fgm, tb_pgd = TextbookFGM(model), TextbookPGD(model)
    fgm, pgd = FGM(model, eps=1.0), PGD(model, eps=1.0, alpha=0.3, steps=3)
    freelb, awp = FreeLB(model, steps=3, alpha=0.1), AWP(model, adv_lr=1e-3, adv_eps=1e-3)
    noise = AttentionNoise(eager, eps=1.0)

    def plain():
        fwd_bwd()
        finish()

    def two_passes():  # FGM's floor: a second forward+backward, no attack at all
        fwd_bwd()
        fwd_bwd()
        finish()

    def textbook_fgm():
        fwd_bwd()
        tb_fgm.attack()
        fwd_bwd()
        tb_fgm.restore()
        finish()

    def danlu_fgm():
        fwd_bwd()
        with fgm.perturbed():
            fwd_bwd()
        finish()

    def textbook_pgd():
        fwd_bwd()
        tb_pgd.backup_grad()
        for t in range(3):
            tb_pgd.attack(is_first_attack=t == 0)
            if t != 2:
                model.zero_grad()
            else:
                tb_pgd.restore_grad()
            fwd_bwd()
        tb_pgd.restore()
        finish()

    def danlu_pgd():
        fwd_bwd()
        pgd.run(fwd_bwd)
        finish()

    def danlu_freelb():
        freelb.run(lambda: loss_of(model))
        finish()

    def danlu_awp():
        fwd_bwd()
        awp.run(fwd_bwd)
        finish()

    def plain_eager():
        fwd_bwd(eager)
        finish(eager_opt)

    def attention_noise():
        with noise.recording():
            loss = loss_of(eager)
        loss.backward()
        with noise.perturbed():
            fwd_bwd(eager)
        finish(eager_opt)

    steps = {
        "plain step": plain,
        "two passes, no attack (FGM's floor)": two_passes,
        "textbook FGM": textbook_fgm,
        "danlu FGM": danlu_fgm,
        "textbook PGD-3": textbook_pgd,
        "danlu PGD-3": danlu_pgd,
        "danlu FreeLB-3": danlu_freelb,
        "danlu AWP": danlu_awp,
        "plain step (eager attention)": plain_eager,
        "attention noise (eager attention)": attention_noise,
    }
    medians = compare(steps, repeat=4, warmup=1)
    report("One training step, MiniLM-shaped BERT, 8 x 128 tokens, AdamW", medians)

    # bookkeeping alone: attack + restore after a backward, as a fraction of a plain step
    fwd_bwd()

    def tb_book():
        tb_fgm.attack()
        tb_fgm.restore()

    def danlu_book():
        fgm.attack()
        fgm.restore()

    book = compare({"textbook FGM attack+restore": tb_book,
                    "danlu FGM attack+restore": danlu_book}, repeat=15, warmup=2)
    model.zero_grad(set_to_none=True)
    base = medians["plain step"]
    lines = ["### FGM bookkeeping as a fraction of a plain step", "",
             "| variant | median ms | fraction of plain step |", "|---|---:|---:|"]
    for name, t in book.items():
        lines.append(f"| {name} | {t * 1e3:.2f} | {t / base:.2%} |")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
