"""Small models and textbook references shared by the adversarial tests."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 100


def tiny_bert(n_classes: int = 3, attn: str = "eager", dropout: float = 0.0):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=n_classes,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg)


class GRUClassifier(nn.Module):
    """Embedding -> GRU -> last hidden state -> linear (no get_input_embeddings)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, n_classes: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, input_ids, attention_mask=None):
        out, _ = self.gru(self.emb(input_ids))
        return self.head(out[:, -1])


def batch(n: int = 8, seq: int = 7, seed: int = 0, n_classes: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, seq), generator=g)  # rows 40.. never used
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, n_classes, (n,), generator=g)}


def loss_fn(model, b):
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    logits = out.logits if hasattr(out, "logits") else out
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide, b["labels"]), logits


def make(kind: str):
    if kind == "bert":
        return tiny_bert().double(), "word_embeddings"
    torch.manual_seed(0)
    return GRUClassifier().double(), "emb"


class TextbookFGM:
    """The widely copied FGM class: full-table clone / add / restore."""

    def __init__(self, model, emb_name, eps):
        self.model, self.emb_name, self.eps, self.backup = model, emb_name, eps, {}

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
    """The widely copied PGD class (backup_grad / attack / restore_grad / restore)."""

    def __init__(self, model, emb_name, eps, alpha):
        self.model, self.emb_name, self.eps, self.alpha = model, emb_name, eps, alpha
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

    def run(self, closure, steps):
        self.backup_grad()
        for t in range(steps):
            self.attack(is_first_attack=t == 0)
            if t != steps - 1:
                self.model.zero_grad()
            else:
                self.restore_grad()
            closure()
        self.restore()


@contextlib.contextmanager
def window_set_aside(model):
    """The reference for adversarial tricks under accumulation: run one micro-batch as if
    it were alone (earlier gradients of the window put aside), then add them back."""
    params = [p for p in model.parameters() if p.requires_grad]
    stash = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, g in zip(params, stash):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
