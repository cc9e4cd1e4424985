"""Tiny models, data and loss functions shared by the tests (importable as ``helpers``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyTextClassifier(nn.Module):
    """Embedding -> (dropout) -> mean pool -> linear. Small and deterministic when
    ``dropout=0``."""

    def __init__(self, vocab: int = 50, dim: int = 16, n_classes: int = 3, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        h = self.drop(self.embed(input_ids))
        if attention_mask is None:
            attention_mask = (input_ids != 0).to(h.dtype)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(torch.tanh(self.hidden(pooled)))


def make_batch(n: int = 8, seq: int = 6, vocab: int = 50, n_classes: int = 3, seed: int = 0):
    """A dict batch of random token ids (no padding), attention mask and labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(n, seq, dtype=torch.long),
        "labels": torch.randint(0, n_classes, (n,), generator=g),
    }


def loss_fn(model: nn.Module, batch: dict):
    """Mean cross-entropy; returns (loss, logits)."""
    logits = model(batch["input_ids"], batch.get("attention_mask"))
    return F.cross_entropy(logits.float(), batch["labels"]), logits


def split_batch(batch: dict, k: int) -> list[dict]:
    """Split a dict batch into k equal micro-batches along dim 0."""
    n = batch["labels"].shape[0]
    size = n // k
    return [{key: v[i * size : (i + 1) * size] for key, v in batch.items()} for i in range(k)]


def clone_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_params_close(a: nn.Module, b: nn.Module, atol: float = 1e-6, rtol: float = 0.0):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=rtol, msg=f"mismatch in {k}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_entry(rank: int, world: int, port: int, fn, args: tuple) -> None:
    import os
    import sys

    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()
    # torch 2.13's gloo leaves a joinable std::thread behind: at interpreter exit its
    # destructor calls std::terminate ("terminate called without an active exception",
    # SIGABRT) in some runs. The work is done and saved by now: leave without the C++
    # static destructors. (An exception above still exits through mp.spawn's handler.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ddp(fn, *args, world_size: int = 2) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` CPU processes joined by a
    ``gloo`` process group. ``fn`` must be a module-level function; pass a tmp dir in
    ``args`` and save results there (e.g. ``torch.save(model.state_dict(), ...)``)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_entry, args=(world_size, _free_port(), fn, args), nprocs=world_size, join=True)


def tiny_bert(seed: int = 0, **overrides):
    """A tiny randomly initialised ``BertForSequenceClassification`` (2 layers, hidden 16,
    vocab 50, 3 labels, no dropout unless overridden). Needs transformers: call it after
    ``pytest.importorskip("transformers")``."""
    import transformers

    cfg = dict(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    cfg.update(overrides)
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**cfg))


def tiny_gpt2(seed: int = 0, lm: bool = False, **overrides):
    """A tiny randomly initialised GPT-2 (2 layers, hidden 16, vocab 50, no dropout):
    ``GPT2ForSequenceClassification`` (3 labels, pad id 0) or, with ``lm=True``,
    ``GPT2LMHeadModel`` (output layer tied to the input embedding). Needs transformers."""
    import transformers

    cfg = dict(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, num_labels=3,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # fmt: skip
    cfg.update(overrides)
    torch.manual_seed(seed)
    cls = transformers.GPT2LMHeadModel if lm else transformers.GPT2ForSequenceClassification
    return cls(transformers.GPT2Config(**cfg))


def embeds_loss(model, batch: dict, delta=None):
    """Cross-entropy of an HF classifier run on its word-embedding output given directly
    (``inputs_embeds``) plus ``delta``: the reference for tricks that perturb that output.
    Returns (loss, the embedding output, which keeps its gradient; with a trainable
    embedding the weight gets its gradient through it)."""
    emb = model.get_input_embeddings()(batch["input_ids"])
    if emb.requires_grad:
        emb.retain_grad()
    else:
        emb = emb.detach().requires_grad_()
    x = emb if delta is None else emb + delta
    out = model(inputs_embeds=x, attention_mask=batch["attention_mask"])
    return F.cross_entropy(out.logits, batch["labels"]), emb


def _toy_lab_data(n_pool: int = 160, n_test: int = 60, seed: int = 0):
    import random

    from danlu.datasets import TextDataset

    rng = random.Random(seed)
    filler = ["电影", "剧情", "演员", "音乐", "故事", "画面", "今天", "我们", "觉得", "这部"]

    def example(i: int) -> tuple[str, int]:
        label = i % 2
        cue = rng.choice(["好看 精彩 喜欢", "难看 无聊 失望"][label].split())
        words = [rng.choice(filler) for _ in range(rng.randint(3, 7))] + [cue]
        rng.shuffle(words)
        return "".join(words), 1 - label

    rows = [example(i) for i in range(n_pool + n_test)]
    names = ("neg", "pos")
    pool = TextDataset([t for t, _ in rows[:n_pool]], [y for _, y in rows[:n_pool]], names)
    test = TextDataset([t for t, _ in rows[n_pool:]], [y for _, y in rows[n_pool:]], names)
    return pool, test


def _toy_lab_build(train_texts, n_classes):
    from danlu.lab.models import TextCNN, TokenEncoder

    enc = TokenEncoder.fit(train_texts, unit="char", max_len=24, min_freq=1)
    return TextCNN(enc.vocab_size, dim=8, filters=8, n_classes=n_classes), enc


def toy_lab_task(name: str = "toy", **overrides):
    """A tiny synthetic Chinese sentiment task for the lab (160 pool / 60 test examples, a
    TextCNN of a few hundred parameters): picklable, so it also runs in worker processes."""
    from danlu.lab.models import TextCNN
    from danlu.lab.task import Task

    kwargs = dict(data=_toy_lab_data, build=_toy_lab_build, lang="zh", epochs=3,
                  batch_size=16, lr=1e-2, depth_fn=TextCNN.depth)  # fmt: skip
    kwargs.update(overrides)
    return Task(name, **kwargs)
